# Shared by the benchmark scripts (sourced): the binary to measure, the upstream Distribution
# registry, SeaweedFS. The caller defines ROOT, BENCH, WORK, PIDS, log and die first; every process
# started here is appended to PIDS for the caller's cleanup.

freeport() { python3 "$BENCH/measure.py" freeport; }
waitok() { python3 "$BENCH/measure.py" wait "$1" 60 --pid "$2"; }

# BIN and BUILD: OCIMIRROR_BIN if given, else the release build if present (not rebuilt), else a
# debug build (`cargo build`), which BUILD says.
bench_binary() {
  local target=${CARGO_TARGET_DIR:-$ROOT/target}
  if [[ -n ${OCIMIRROR_BIN:-} ]]; then
    BIN=$(realpath "$OCIMIRROR_BIN") BUILD="binary given in OCIMIRROR_BIN"
    [[ $BIN == */debug/* ]] && BUILD="DEBUG build (unoptimised), given in OCIMIRROR_BIN"
  elif [[ -x $target/release/ocimirror ]]; then
    BIN=$target/release/ocimirror BUILD="release build"
  else
    log "no release binary: cargo build (debug); figures are for an unoptimised build"
    (cd "$ROOT" && cargo build) || die "cargo build failed"
    BIN=$target/debug/ocimirror BUILD="DEBUG build (unoptimised)"
  fi
  [[ -x $BIN ]] || die "no binary at $BIN"
}

# start_upstream SECRET: a Distribution registry on a free port (UP_PORT), storage under
# $WORK/upstream, log $WORK/upstream.log.
start_upstream() {
  UP_PORT=$(freeport)
  mkdir -p "$WORK/upstream"
  cat >"$WORK/upstream/config.yml" <<YAML
version: 0.1
log: { level: warn, accesslog: { disabled: true } }
storage:
  filesystem: { rootdirectory: "$WORK/upstream/root" }
  cache: { blobdescriptor: inmemory }
http: { addr: "127.0.0.1:$UP_PORT", secret: $1 }
YAML
  docker-registry serve "$WORK/upstream/config.yml" >"$WORK/upstream.log" 2>&1 &
  PIDS+=("$!")
  waitok "http://127.0.0.1:$UP_PORT/v2/" "$!" || die "upstream did not start"
}

# start_weed BUCKET ACCESS_KEY SECRET_KEY: SeaweedFS (`weed server` with its S3 gateway) on free
# ports (WEED_PORTS; S3 at S3_ENDPOINT), data under $WORK/weed, with BUCKET made; returns once S3
# takes a signed write (a volume server must have joined first).
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
  PIDS+=("$!")
  # The bucket is a directory under /buckets on the filer.
  for ((i = 0; i < 900; i++)); do
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
  [[ $ok == 1 ]] || die "SeaweedFS did not come up: $(tail -3 "$WORK/weed/log")"
}
