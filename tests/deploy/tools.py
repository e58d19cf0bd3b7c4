"""Helpers for tests/deploy.rs, on PyPI packages that work offline.

  tools.py helm-render CHART [VALUES.yaml…]  the chart's manifests, as `helm template -f …`
                                             prints them (Helm's Go SDK, via helm-python-sdk);
                                             exit 1 with Helm's message if it refuses them
  tools.py helm-lint CHART [VALUES.yaml…]    `helm lint --strict`; exit 1 on any finding
  tools.py compose-check FILE                the Compose file against the Compose
                                             specification (compose-spec); exit 1 if invalid

Compose files are interpolated first as `docker compose` does, with every variable unset
(`${VAR:-default}` gives the default), and YAML merge keys are resolved.
"""

import json
import re
import sys

import yaml


def merge(base, over):
    """Values files in order, as Helm coalesces `-f a -f b`: maps merge key by key."""
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge(out[k], v)
        else:
            out[k] = v
    return out


def load_values(argv):
    values = None
    for path in argv[3:]:
        with open(path, encoding="utf-8") as f:
            values = merge(values or {}, yaml.safe_load(f) or {})
    return values


def helm_render(argv):
    import helm_python

    chart = helm_python.Chart.load(argv[2])
    try:
        rendered = chart.render(
            load_values(argv), name="ocimirror", namespace="ocimirror", is_install=True
        )
    except helm_python.HelmError as e:
        print(e, file=sys.stderr)
        return 1
    for path in sorted(rendered):
        text = rendered[path]
        if path.endswith("NOTES.txt") or not text.strip():
            continue
        print(f"---\n# Source: {path}\n{text.strip()}")
    return 0


def helm_lint(argv):
    import helm_python

    report = helm_python.lint(argv[2], load_values(argv), strict=True)
    findings = [m for m in report.get("messages") or [] if m.get("severity", 0) >= 2]
    findings += [{"severity": 3, "path": "", "error": e} for e in report.get("errors") or []]
    for m in findings:
        print(f"{m.get('path')}: {m.get('error')}")
    return 1 if findings else 0


VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?[-?]([^}]*))?\}")


def interpolate(v):
    if isinstance(v, dict):
        return {k: interpolate(x) for k, x in v.items()}
    if isinstance(v, list):
        return [interpolate(x) for x in v]
    if isinstance(v, str):
        return VAR.sub(lambda m: m.group(2) or "", v).replace("$$", "$")
    return v


def compose_check(argv):
    from compose_spec import PyCompose

    with open(argv[2], encoding="utf-8") as f:
        spec = interpolate(yaml.safe_load(f))
    try:
        PyCompose.from_json(json.dumps(spec)).validate()
    except ValueError as e:
        print(f"{argv[2]}: {e}")
        return 1
    return 0


COMMANDS = {"helm-render": helm_render, "helm-lint": helm_lint, "compose-check": compose_check}

if __name__ == "__main__":
    if len(sys.argv) < 3 or sys.argv[1] not in COMMANDS:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    sys.exit(COMMANDS[sys.argv[1]](sys.argv))
