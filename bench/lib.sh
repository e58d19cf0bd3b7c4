# Shared by the benchmark scripts (sourced): logging, the tools and binary to measure, the work
# directory, the upstream Distribution registry, SeaweedFS, Redis, and the configs and start-up of
# the mirrors measured. The caller sets ROOT, BENCH and BENCH_TAG (its name in log lines) first,
# and calls bench_work before starting anything: every process started here is appended to PIDS
# for the caller's cleanup.

log() { printf '[%s %s] %s\n' "$BENCH_TAG" "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "FATAL: $*"; exit 1; }

# require HINT TOOL...: die unless every TOOL is installed, naming HINT (how to get it) if given.
require() {
  local hint=$1 t
  shift
  for t in "$@"; do
    command -v "$t" >/dev/null || die "$t is required${hint:+ ($hint)}"
  done
}

# bench_work: WORK, a new temp dir named after BENCH_TAG; PIDS and WEED_PORTS, empty.
bench_work() {
  WORK=$(mktemp -d "/tmp/ocimirror-$BENCH_TAG.XXXXXX")
  PIDS=() WEED_PORTS=()
}

freeport() { python3 "$BENCH/measure.py" freeport; }
waitok() { python3 "$BENCH/measure.py" wait "$1" 60 --pid "$2"; }

# bench_binary [release]: BIN and BUILD. OCIMIRROR_BIN if given; else with `release` a fresh
# `cargo build --release`; else the release build if present (not rebuilt), else a debug build
# (`cargo build`), which BUILD says.
bench_binary() {
  local target=${CARGO_TARGET_DIR:-$ROOT/target}
  if [[ -n ${OCIMIRROR_BIN:-} ]]; then
    BIN=$(realpath "$OCIMIRROR_BIN") BUILD="binary given in OCIMIRROR_BIN"
    [[ $BIN == */debug/* ]] && BUILD="DEBUG build (unoptimised), given in OCIMIRROR_BIN"
  elif [[ ${1:-} == release ]]; then
    log "cargo build --release"
    (cd "$ROOT" && cargo build --release) || die "cargo build --release failed"
    BIN=$target/release/ocimirror BUILD="cargo build --release"
  elif [[ -x $target/release/ocimirror ]]; then
    BIN=$target/release/ocimirror BUILD="release build"
  else
    log "no release binary: cargo build (debug); figures are for an unoptimised build"
    (cd "$ROOT" && cargo build) || die "cargo build failed"
    BIN=$target/debug/ocimirror BUILD="DEBUG build (unoptimised)"
  fi
  [[ -x $BIN ]] || die "no binary at $BIN"
}

# start_upstream SECRET [LOG_LEVEL]: a Distribution registry on a free port (UP_PORT), storage
# under $WORK/upstream, log $WORK/upstream.log (UP_LOG; at `info` it has a line per request).
start_upstream() {
  UP_PORT=$(freeport) UP_LOG=$WORK/upstream.log
  mkdir -p "$WORK/upstream"
  cat >"$WORK/upstream/config.yml" <<YAML
version: 0.1
log: { level: ${2:-warn}, accesslog: { disabled: true } }
storage:
  filesystem: { rootdirectory: "$WORK/upstream/root" }
  cache: { blobdescriptor: inmemory }
http: { addr: "127.0.0.1:$UP_PORT", secret: $1 }
YAML
  docker-registry serve "$WORK/upstream/config.yml" >"$UP_LOG" 2>&1 &
  PIDS+=("$!")
  waitok "http://127.0.0.1:$UP_PORT/v2/" "$!" || die "upstream did not start: $(tail -3 "$UP_LOG")"
}

# start_weed BUCKET ACCESS_KEY SECRET_KEY: SeaweedFS (`weed server` with its S3 gateway, WEED_PID)
# on free ports (WEED_PORTS; S3 at S3_ENDPOINT), data under $WORK/weed, with BUCKET made; returns
# once S3 takes a signed write (a volume server must have joined first), status 1 when it did not.
start_weed() {
  local bucket_name=$1 ak=$2 sk=$3 i ok=0 bucket=0
  mkdir -p "$WORK/weed/data"
  printf '{"identities": [{"name": "bench", "credentials": [{"accessKey": "%s", "secretKey": "%s"}], "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}\n' \
    "$ak" "$sk" >"$WORK/weed/s3.json"
  WEED_PORTS=()
  for ((i = 0; i < 8; i++)); do WEED_PORTS+=("$(freeport)"); done
  local p=("${WEED_PORTS[@]}")
  S3_ENDPOINT=http://127.0.0.1:${p[6]}
  weed server -ip=127.0.0.1 -ip.bind=127.0.0.1 -dir="$WORK/weed/data" \
    -master.port="${p[0]}" -master.port.grpc="${p[1]}" -master.telemetry=false -master.volumeSizeLimitMB=64 \
    -volume.port="${p[2]}" -volume.port.grpc="${p[3]}" \
    -filer -filer.port="${p[4]}" -filer.port.grpc="${p[5]}" \
    -s3 -s3.port="${p[6]}" -s3.port.grpc="${p[7]}" -s3.port.iceberg=0 -s3.port.lance=0 \
    -s3.config="$WORK/weed/s3.json" </dev/null >"$WORK/weed/log" 2>&1 &
  WEED_PID=$!
  PIDS+=("$WEED_PID")
  # The bucket is a directory under /buckets on the filer.
  for ((i = 0; i < 900; i++)); do
    kill -0 "$WEED_PID" 2>/dev/null || break
    if [[ $bucket == 0 && $(curl -s -o /dev/null -w '%{http_code}' --max-time 5 -X POST "http://127.0.0.1:${p[4]}/buckets/$bucket_name/" || true) == 2* ]]; then
      bucket=1
    fi
    if [[ $bucket == 1 && $(curl -s -o /dev/null -w '%{http_code}' --max-time 5 --aws-sigv4 "aws:amz:us-east-1:s3" --user "$ak:$sk" \
      -H "x-amz-content-sha256: UNSIGNED-PAYLOAD" -X PUT --data-binary probe "$S3_ENDPOINT/$bucket_name/probe" || true) == 200 ]]; then
      ok=1
      break
    fi
    sleep 0.1
  done
  [[ $ok == 1 ]] || { log "SeaweedFS did not come up: $(tail -3 "$WORK/weed/log")"; return 1; }
}

# remove_weed_sockets: the unix sockets `weed` (started by start_weed) keeps beside its ports, in
# /tmp whatever -dir says; once it has stopped.
remove_weed_sockets() {
  local port kind
  for port in "${WEED_PORTS[@]}"; do
    for kind in master-grpc volume-grpc filer filer-grpc s3 s3-grpc; do rm -f "/tmp/seaweedfs-$kind-$port.sock"; done
  done
}

# start_redis: redis-server on a free port (REDIS_PORT, REDIS_PID), no persistence, files under
# $WORK/redis; status 1 when it does not answer.
start_redis() {
  local i
  REDIS_PORT=$(freeport)
  mkdir -p "$WORK/redis"
  redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no --dir "$WORK/redis" \
    >"$WORK/redis/log" 2>&1 &
  REDIS_PID=$!
  PIDS+=("$REDIS_PID")
  for ((i = 0; i < 100; i++)); do
    [[ $(redis-cli -p "$REDIS_PORT" ping 2>/dev/null) == PONG ]] && return 0
    kill -0 "$REDIS_PID" 2>/dev/null || break
    sleep 0.1
  done
  log "redis-server did not start: $(tail -3 "$WORK/redis/log")"
  return 1
}

# mirror_config DIR PORT UPSTREAM_URL TAG_TTL [LOG_LEVEL]: DIR/config.yml of a mirror listening on
# PORT, its data under DIR; callers append their sections (storage, cache, cluster).
mirror_config() {
  mkdir -p "$1"
  cat >"$1/config.yml" <<YAML
listen: "127.0.0.1:$2"
data_dir: "$1/data"
log: { level: ${5:-warn}, format: text }
upstream: { url: "$3", tag_ttl: $4 }
YAML
}

# s3_storage ROOT: a mirror's storage section for S3_BUCKET on S3_ENDPOINT (keys S3_AK and
# S3_SK) under ROOT, to append to its config.
s3_storage() {
  cat <<YAML
storage:
  backend: s3
  s3: { endpoint: "$S3_ENDPOINT", region: us-east-1, bucket: "$S3_BUCKET", root: "$1", path_style: true,
        access_key_id: "$S3_AK", secret_access_key: "$S3_SK" }
YAML
}

# serve_mirror DIR PORT: $BIN serve with DIR/config.yml (log DIR/log) until /healthz answers;
# MIRROR_PID is its pid. Status 1 when it did not come up.
serve_mirror() {
  "$BIN" serve --config "$1/config.yml" >"$1/log" 2>&1 &
  MIRROR_PID=$!
  PIDS+=("$MIRROR_PID")
  waitok "http://127.0.0.1:$2/healthz" "$MIRROR_PID"
}

# proxy_s3_config DIR PORT REMOTE ROOT SECRET [LOG_LEVEL]: DIR/config.yml of a Distribution proxy
# of REMOTE on PORT, storing under ROOT of S3_BUCKET with its blob descriptors in Redis db 1.
# Redirects are off: the S3 driver would otherwise answer blob GETs with a presigned URL, and
# the client would read from SeaweedFS, not through the proxy.
proxy_s3_config() {
  mkdir -p "$1"
  cat >"$1/config.yml" <<YAML
version: 0.1
log: { level: ${6:-warn}, accesslog: { disabled: true } }
storage:
  s3: { region: us-east-1, regionendpoint: "$S3_ENDPOINT", bucket: "$S3_BUCKET", rootdirectory: "$4",
        accesskey: "$S3_AK", secretkey: "$S3_SK", secure: false, v4auth: true }
  cache: { blobdescriptor: redis }
  redirect: { disable: true }
redis: { addr: "127.0.0.1:$REDIS_PORT", db: 1 }
http: { addr: "127.0.0.1:$2", secret: $5 }
proxy: { remoteurl: "$3" }
YAML
}

# serve_distribution DIR PORT: `docker-registry serve` with DIR/config.yml (log DIR/log) until /v2/
# answers; DIST_PID is its pid. Status 1 when it did not come up.
serve_distribution() {
  # AWS_CA_BUNDLE (set on some machines for a TLS proxy) makes 2.8's AWS SDK panic on start-up
  # ("LoadCustomCABundleError ... unsupported transport"); the endpoints here are plain HTTP.
  env -u AWS_CA_BUNDLE docker-registry serve "$1/config.yml" >"$1/log" 2>&1 &
  DIST_PID=$!
  PIDS+=("$DIST_PID")
  waitok "http://127.0.0.1:$2/v2/" "$DIST_PID"
}
