#!/usr/bin/env bash
# End-to-end serving benchmark through gRPC: a random SCAN model at the released sizes
# (tools/make_random_scan_model.py), scanserve holding IMAGES synthetic images (36 x 1024 each,
# --synthetic-images: in memory only, never stored), then `scanctl bench` over random captions at
# several concurrency levels: concurrency 1 is a lone query's latency, higher levels the throughput
# with the dynamic batcher merging concurrent searches. Prints the bench table, the server's batch
# sizes (from /metrics) and its stats. From the project root, after a build with the server:
#
#   bash scripts/serve-bench.sh                                    # CPU, 10k images
#   BUILD_DIR=build-gpu BACKEND=cuda IMAGES=1000000 bash scripts/serve-bench.sh   # what gpu-check runs
#
# Environment: BUILD_DIR [build], BACKEND [cpu], STORAGE [the server's default for the backend],
# IMAGES [10000], LEVELS [1,4,16,64], DURATION [5] and WARMUP [2] seconds per level, THREADS [0 = all],
# MAX_BATCH [64], START_TIMEOUT [600] seconds, PYTHON [python3], WORK_DIR [/tmp/scanserve-serve-bench],
# EXTRA_SERVER_ARGS, SCANSERVE and SCANCTL [the binaries under BUILD_DIR; ctest points SCANSERVE at
# the emulated CUDA build's server].
set -euo pipefail
cd "$(dirname "$0")/.."

BUILD_DIR="${BUILD_DIR:-build}"
BACKEND="${BACKEND:-cpu}"
IMAGES="${IMAGES:-10000}"
LEVELS="${LEVELS:-1,4,16,64}"
DURATION="${DURATION:-5}"
WARMUP="${WARMUP:-2}"
THREADS="${THREADS:-0}"
MAX_BATCH="${MAX_BATCH:-64}"
START_TIMEOUT="${START_TIMEOUT:-600}"
PYTHON="${PYTHON:-python3}"
WORK_DIR="${WORK_DIR:-/tmp/scanserve-serve-bench}"
SCANSERVE="${SCANSERVE:-$BUILD_DIR/server/scanserve}"
SCANCTL="${SCANCTL:-$BUILD_DIR/client/scanctl}"
for binary in "$SCANSERVE" "$SCANCTL"; do
  [ -x "$binary" ] || { echo "serve-bench: $binary not built (build the server targets first)" >&2; exit 2; }
done

mkdir -p "$WORK_DIR"
if [ ! -f "$WORK_DIR/model/config.json" ]; then
  "$PYTHON" tools/make_random_scan_model.py "$WORK_DIR/model" --captions-out "$WORK_DIR/captions.txt" \
    --captions 2000 >/dev/null
fi
rm -rf "$WORK_DIR/data"
# Both bound at once: two separate bind(0) calls may be given the same, just released, port.
read -r port metrics_port < <("$PYTHON" -c '
import socket
a, b = socket.socket(), socket.socket()
a.bind(("127.0.0.1", 0)); b.bind(("127.0.0.1", 0))
print(a.getsockname()[1], b.getsockname()[1])')
max_images=$(( IMAGES > 1000000 ? IMAGES : 1000000 ))
storage_args=()
[ -n "${STORAGE:-}" ] && storage_args=(--storage "$STORAGE")

echo "serve-bench: $BACKEND backend, $IMAGES synthetic images, levels $LEVELS, ${DURATION}s per level"
t0=$(date +%s)
# shellcheck disable=SC2086
"$SCANSERVE" --model "$WORK_DIR/model" --data-dir "$WORK_DIR/data" --listen "127.0.0.1:$port" \
  --metrics-listen "127.0.0.1:$metrics_port" --backend "$BACKEND" "${storage_args[@]}" --threads "$THREADS" \
  --synthetic-images "$IMAGES" --max-images "$max_images" --max-feature-bytes 1024G \
  --max-batch-queries "$MAX_BATCH" --max-queue-size 4096 ${EXTRA_SERVER_ARGS:-} > "$WORK_DIR/server.log" 2>&1 &
server_pid=$!
stop_server() { kill -TERM "$server_pid" 2>/dev/null && wait "$server_pid" 2>/dev/null || true; }
trap stop_server EXIT
until "$SCANCTL" --server "127.0.0.1:$port" --timeout 2 health >/dev/null 2>&1; do
  if ! kill -0 "$server_pid" 2>/dev/null; then
    echo "serve-bench: scanserve exited during start-up:" >&2
    tail -20 "$WORK_DIR/server.log" >&2
    exit 1
  fi
  if [ $(( $(date +%s) - t0 )) -gt "$START_TIMEOUT" ]; then
    echo "serve-bench: scanserve not serving after ${START_TIMEOUT}s" >&2
    tail -20 "$WORK_DIR/server.log" >&2
    exit 1
  fi
  sleep 1
done
echo "serve-bench: serving after $(( $(date +%s) - t0 ))s (model, $IMAGES synthetic images loaded)"

status=0
"$SCANCTL" --server "127.0.0.1:$port" --timeout 60 bench --captions "$WORK_DIR/captions.txt" \
  --concurrency "$LEVELS" --duration "$DURATION" --warmup "$WARMUP" || status=$?

# Batch sizes the dynamic batcher formed over the whole run (warm-ups included).
"$PYTHON" - "127.0.0.1:$metrics_port" <<'PY' || true
import re, sys, urllib.request
text = urllib.request.urlopen("http://%s/metrics" % sys.argv[1], timeout=10).read().decode()
def total(name):
    return sum(float(m.group(2)) for m in re.finditer(r'^%s(\{[^}]*direction="text_to_image"[^}]*\})? (\S+)$' % name, text, re.M))
count, queries = total("scanserve_batch_size_count"), total("scanserve_batch_size_sum")
encode, score = total("scanserve_engine_encode_seconds_total"), total("scanserve_engine_score_seconds_total")
if count:
    print("server: %d engine calls, %.1f queries per call on average; engine time %.1f s encoding, %.1f s scoring"
          % (count, queries / count, encode, score))
PY
"$SCANCTL" --server "127.0.0.1:$port" stats | sed -n '1,10p'
exit "$status"
