#!/usr/bin/env bash
# The main job on a fresh Debian 12 machine (as root or with sudo): install, build, train (or reuse)
# the demo model on the synthetic benchmark, start scanserve on a local data directory (scoring on
# the GPU where the build has the CUDA backend and the machine a GPU, else on the CPU), import
# the 1,000-image test split through scanctl, and run example searches both ways, marking each
# query's ground truth with '*'.
#
# Usage: scripts/run.sh [--keep-serving]
#   --keep-serving  leave scanserve running in the foreground after the examples (Ctrl-C stops it)
# Environment: BUILD_DIR [build], DATA_DIR [data/synthetic], MODEL_DIR [data/models/scan-synthetic],
#   SERVE_DIR [data/scanserve-demo], LISTEN [127.0.0.1:50051], METRICS_LISTEN [127.0.0.1:9464], THREADS [2],
#   BACKEND [auto: cuda with a CUDA build and a GPU, else cpu; or cpu, cuda]
set -euo pipefail
cd "$(dirname "$0")/.."

KEEP_SERVING=0
for arg in "$@"; do
  case "$arg" in
    --keep-serving) KEEP_SERVING=1 ;;
    -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
    *) echo "run.sh: unknown argument '$arg'" >&2; exit 2 ;;
  esac
done

export BUILD_DIR=${BUILD_DIR:-build}
export DATA_DIR=${DATA_DIR:-data/synthetic}
export MODEL_DIR=${MODEL_DIR:-data/models/scan-synthetic}
export THREADS=${THREADS:-2}
SERVE_DIR=${SERVE_DIR:-data/scanserve-demo}
LISTEN=${LISTEN:-127.0.0.1:50051}
METRICS_LISTEN=${METRICS_LISTEN:-127.0.0.1:9464}

echo "== install and build"
bash scripts/install-deps.sh
cmake -S . -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build "$BUILD_DIR" -j2

echo "== demo model"
bash scripts/train-demo.sh

SCANSERVE="$BUILD_DIR/server/scanserve"
SCANCTL=("$BUILD_DIR/client/scanctl" --server "$LISTEN")

# The scorer's backend: the GPU where this build has the CUDA backend and the machine a GPU.
BACKEND=${BACKEND:-auto}
CHOSEN=0
if [ "$BACKEND" = auto ]; then
  CHOSEN=1
  BACKEND=cpu
  if grep -q '^SCANSERVE_WITH_CUDA:BOOL=ON' "$BUILD_DIR/CMakeCache.txt" 2>/dev/null &&
     command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L 2>/dev/null | grep -q '^GPU '; then
    BACKEND=cuda
  fi
fi

server_pid=""
stop_server() {
  [ -n "$server_pid" ] || return 0
  kill -TERM "$server_pid" 2>/dev/null && wait "$server_pid" 2>/dev/null || true
  server_pid=""
}
trap stop_server EXIT
# start_server BACKEND: returns non-zero if scanserve exits during start-up.
start_server() {
  echo "== serving: $SCANSERVE --model $MODEL_DIR --data-dir $SERVE_DIR --listen $LISTEN --metrics-listen $METRICS_LISTEN --backend $1"
  "$SCANSERVE" --model "$MODEL_DIR" --data-dir "$SERVE_DIR" --listen "$LISTEN" \
    --metrics-listen "$METRICS_LISTEN" --threads "$THREADS" --backend "$1" &
  server_pid=$!
  for _ in $(seq 1 120); do
    "${SCANCTL[@]}" health >/dev/null 2>&1 && return 0
    if ! kill -0 "$server_pid" 2>/dev/null; then
      wait "$server_pid" 2>/dev/null || true
      server_pid=""
      echo "run.sh: scanserve --backend $1 exited during start-up" >&2
      return 1
    fi
    sleep 1
  done
  return 0
}
if ! start_server "$BACKEND"; then
  # A GPU this build cannot use (driver, device busy): the CPU serves the demo all the same.
  [ "$CHOSEN" = 1 ] && [ "$BACKEND" = cuda ] || exit 1
  echo "run.sh: falling back to the CPU backend" >&2
  start_server cpu || exit 1
fi
"${SCANCTL[@]}" health

echo "== import the test split (resumable; items already stored are skipped)"
"${SCANCTL[@]}" import precomp --data-dir "$DATA_DIR" --split test
"${SCANCTL[@]}" stats

# Example queries: test captions 0, 5*7+2 and 5*42+4 belong to images test/img/0, /7 and /42.
mark_ground_truth() {  # stdin: scanctl --json output; $1: the ground-truth id
  /usr/bin/python3 -c '
import json, sys
truth = sys.argv[1]
doc = json.load(sys.stdin)
results = doc.get("results", doc)
hits = results[0]["hits"] if isinstance(results, list) else results["hits"]
for rank, hit in enumerate(hits, 1):
    text = hit.get("text", "")
    mark = "*" if hit["id"] == truth or hit.get("metadata", {}).get("image") == truth else " "
    print("  %s %2d. %-16s %.4f  %s" % (mark, rank, hit["id"], hit["score"], text))
' "$1"
}
for caption_index in 0 37 214; do
  caption=$(sed -n "$((caption_index + 1))p" "$DATA_DIR/test_caps.txt")
  truth="test/img/$((caption_index / 5))"
  echo "== text -> image: \"$caption\"   (ground truth: $truth)"
  "${SCANCTL[@]}" --json search-images "$caption" --top-k 5 | mark_ground_truth "$truth"
done
for image_index in 0 7; do
  echo "== image -> text: test/img/$image_index   (its captions are marked *)"
  "${SCANCTL[@]}" --json search-captions --image-id "test/img/$image_index" --top-k 5 | \
    mark_ground_truth "test/img/$image_index"
done
echo "== explain: which region each word of caption 0 attends to in its best image"
"${SCANCTL[@]}" search-images "$(sed -n 1p "$DATA_DIR/test_caps.txt")" --top-k 1 --explain

if [ "$KEEP_SERVING" = 1 ]; then
  echo "== scanserve keeps serving on $LISTEN (metrics: http://$METRICS_LISTEN/metrics); Ctrl-C stops it"
  wait "$server_pid"
fi
