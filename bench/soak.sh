#!/usr/bin/env bash
# Soak run: mixed pulls from many concurrent clients through ocimirror for a bounded time, first
# against a warm cache, then a cold one, sampling the mirror's RSS, open file descriptors and
# threads every second (bench/soak.py). Not a test: it reports, and exits non-zero only when a
# client saw an error.
#
# Usage: bench/soak.sh
#
# Warm: a mirror whose storage already holds every image (pulled once before the load).
# Cold: a new mirror process on empty storage with tag_ttl 0s: the first requests fill under
# concurrency, and every manifest-by-tag request revalidates upstream (a HEAD) for the whole phase.
# The upstream is a Distribution registry on loopback seeded with bench/seed.py's bench/small
# and bench/multi (2 MiB; 24+16+10+6+4 MiB).
#
# Environment:
#   SOAK_SECONDS=60     duration of each phase
#   SOAK_CLIENTS=32     concurrent clients (threads, one keep-alive connection each)
#   OCIMIRROR_BIN=PATH  the binary; else target/release/ocimirror if present (no build), else the
#                       debug build (`cargo build`), which the output says
#   SOAK_OUT=PATH       also write the JSON summaries here
#   SOAK_KEEP=1         keep the temp dir (logs, samples)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BENCH=$ROOT/bench
SECONDS_PER=${SOAK_SECONDS:-60}
CLIENTS=${SOAK_CLIENTS:-32}
BENCH_TAG=soak

# shellcheck source=bench/lib.sh
source "$BENCH/lib.sh"
require "" docker-registry curl python3
bench_binary
log "binary: $BIN ($BUILD, modified $(date -u -r "$BIN" '+%Y-%m-%d %H:%M UTC'))"
bench_work
cleanup() {
  local rc=$? p
  for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  if [[ $rc -eq 0 && ${SOAK_KEEP:-0} != 1 ]]; then rm -rf "$WORK"; else log "work dir kept: $WORK"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ------------------------------------------------------------------ upstream
start_upstream soak-upstream
python3 "$BENCH/seed.py" "http://127.0.0.1:$UP_PORT" --only bench/small --only bench/multi \
  --out "$WORK/images.json" 2>"$WORK/seed.log" || die "seeding failed: $(tail -3 "$WORK/seed.log")"
log "upstream on 127.0.0.1:$UP_PORT, seeded"

# start_mirror NAME TAG_TTL : a mirror on empty storage; sets OM_PID OM_PORT
start_mirror() {
  OM_PORT=$(freeport)
  mirror_config "$WORK/$1" "$OM_PORT" "http://127.0.0.1:$UP_PORT" "$2"
  serve_mirror "$WORK/$1" "$OM_PORT" || die "ocimirror did not start: $(tail -3 "$WORK/$1/log")"
  OM_PID=$MIRROR_PID
}

# prepull : every manifest and blob once, through the mirror
prepull() {
  python3 - "$WORK/images.json" "$OM_PORT" <<'EOF'
import json, sys, urllib.request
imgs = json.load(open(sys.argv[1])); port = sys.argv[2]
acc = "application/vnd.oci.image.manifest.v1+json"
for name, img in imgs.items():
    urls = [(f"/v2/{name}/manifests/{img['tag']}", {"Accept": acc}),
            (f"/v2/{name}/blobs/{img['config']}", {})]
    urls += [(f"/v2/{name}/blobs/{l['digest']}", {}) for l in img["layers"]]
    for path, h in urls:
        with urllib.request.urlopen(urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers=h)) as r:
            while r.read(1 << 20):
                pass
EOF
}

RESULTS=()
phase() { # phase LABEL
  local out=$WORK/$1.json
  log "$1: $CLIENTS clients for ${SECONDS_PER}s against pid $OM_PID"
  python3 "$BENCH/soak.py" "http://127.0.0.1:$OM_PORT" "$WORK/images.json" "$OM_PID" \
    "$SECONDS_PER" "$CLIENTS" "$out" --label "$1" >"$WORK/$1.summary" || die "$1: load generator failed"
  RESULTS+=("$WORK/$1.summary")
}

start_mirror warm 5m
prepull
sleep 1
phase warm
kill -TERM "$OM_PID"; wait "$OM_PID" 2>/dev/null || true

start_mirror cold 0s
phase cold
kill -TERM "$OM_PID"; wait "$OM_PID" 2>/dev/null || true

if [[ -n ${SOAK_OUT:-} ]]; then cat "${RESULTS[@]}" >"$SOAK_OUT"; fi
python3 - "$BUILD" "$BIN" "${RESULTS[@]}" <<'EOF'
import json, sys
build, binary, files = sys.argv[1], sys.argv[2], sys.argv[3:]
rows = [json.load(open(f)) for f in files]
print(f"binary: {binary} ({build})")
hdr = ("| phase | s | clients | requests | errors | p50 ms | p99 ms | max ms | RSS MiB start / max / end "
       "| RSS max first 5 s / last 5 s | fds start / max / end | threads start / max / end |")
print(hdr)
print("|" + "---|" * 12)
for r in rows:
    print(f"| {r['label']} | {r['seconds']:.0f} | {r['clients']} | {r['requests']} | {r['errors']} "
          f"| {r['p50_ms']} | {r['p99_ms']} | {r['max_ms']} "
          f"| {r['rss_mib_start']} / {r['rss_mib_max']} / {r['rss_mib_end']} "
          f"| {r['rss_mib_first5']} / {r['rss_mib_last5']} "
          f"| {r['fds_start']} / {r['fds_max']} / {r['fds_end']} "
          f"| {r['threads_start']} / {r['threads_max']} / {r['threads_end']} |")
for r in rows:
    print(f"{r['label']}: requests by kind {r['by_op']}")
    for e in r["error_samples"]:
        print(f"{r['label']} error: {e}")
sys.exit(1 if any(r["errors"] for r in rows) else 0)
EOF
