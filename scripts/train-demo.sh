#!/usr/bin/env bash
# The demo model: generates the synthetic benchmark (tools/make_synthetic_dataset.py), trains a SCAN
# model on it with scan_train and evaluates it with scan_eval on the 1,000 test images. Every stage is
# cached: the data set and the model are reused when they were made with the same settings, and an
# interrupted training run is resumed from its checkpoint.
#
# Usage: scripts/train-demo.sh [--force]
# Environment (defaults in brackets):
#   BUILD_DIR  the CMake build directory holding engine/scan_train and engine/scan_eval [build]
#   DATA_DIR   the synthetic data set [data/synthetic]
#   MODEL_DIR  the trained model (scanserve model directory) [data/models/scan-synthetic]
#   THREADS    CPU threads [2]
#   PYTHON     an interpreter with numpy [/usr/bin/python3]
# --force retrains even when a cached model exists.
#
# Settings and why: the released SCAN settings (t2i, LogSumExp, lambda 9/6, clipped_l2norm, bi-GRU,
# margin 0.2, grad clip 2) with a smaller embedding (128 instead of 1024: the synthetic world has 130
# concepts, and 2 cores train it in minutes), batch 64, a higher learning rate (2e-3) and 2 epochs:
# the first sums over all negatives (hardest negatives from random weights stall at the collapsed
# solution on a data set this small), the second uses the hardest negatives (SCAN's max_violation).
set -euo pipefail
cd "$(dirname "$0")/.."

BUILD_DIR=${BUILD_DIR:-build}
DATA_DIR=${DATA_DIR:-data/synthetic}
MODEL_DIR=${MODEL_DIR:-data/models/scan-synthetic}
THREADS=${THREADS:-2}
PYTHON=${PYTHON:-/usr/bin/python3}
FORCE=0
for arg in "$@"; do
  case "$arg" in
    --force) FORCE=1 ;;
    -h|--help) sed -n '2,21p' "$0"; exit 0 ;;
    *) echo "train-demo.sh: unknown argument '$arg'" >&2; exit 2 ;;
  esac
done

SCAN_TRAIN="$BUILD_DIR/engine/scan_train"
SCAN_EVAL="$BUILD_DIR/engine/scan_eval"
for tool in "$SCAN_TRAIN" "$SCAN_EVAL"; do
  [ -x "$tool" ] || { echo "train-demo.sh: $tool is missing: build it first (cmake --build $BUILD_DIR)" >&2; exit 2; }
done

seconds() { date +%s; }
start=$(seconds)

# 1. The data set (dataset.json is written last: its presence means the set is complete).
data_args=(--seed 1234 --train-images 3000 --dev-images 500 --test-images 1000)
data_stamp="make_synthetic_dataset.py ${data_args[*]} $(sha256sum tools/make_synthetic_dataset.py | cut -c1-16)"
if [ -f "$DATA_DIR/dataset.json" ] && [ "$(cat "$DATA_DIR/.stamp" 2>/dev/null)" = "$data_stamp" ]; then
  echo "== data: reusing $DATA_DIR"
else
  echo "== data: generating $DATA_DIR"
  rm -f "$DATA_DIR/dataset.json"
  "$PYTHON" tools/make_synthetic_dataset.py --out "$DATA_DIR" "${data_args[@]}"
  echo "$data_stamp" > "$DATA_DIR/.stamp"
fi

# 2. The model.
train_args=(
  --data-dir "$DATA_DIR" --out "$MODEL_DIR"
  --cross-attn t2i --agg-func LogSumExp --lambda-softmax 9 --lambda-lse 6 --raw-feature-norm clipped_l2norm
  --embed-size 128 --word-dim 300 --num-layers 1
  --margin 0.2 --max-violation --warmup-sum-epochs 1
  --lr 2e-3 --lr-update 15 --epochs 2 --batch-size 64 --grad-clip 2 --seed 0
  --threads "$THREADS"
)
checkpoint_dir="$MODEL_DIR-checkpoint"
model_stamp="scan_train ${train_args[*]} | data: $data_stamp"
if [ "$FORCE" = 0 ] && [ -f "$MODEL_DIR/weights.safetensors" ] && \
   [ "$(cat "$MODEL_DIR/train-demo.stamp" 2>/dev/null)" = "$model_stamp" ]; then
  echo "== model: reusing $MODEL_DIR"
else
  resume=()
  if [ "$FORCE" = 0 ] && [ -f "$checkpoint_dir/checkpoint.json" ] && \
     [ "$(cat "$checkpoint_dir/train-demo.stamp" 2>/dev/null)" = "$model_stamp" ]; then
    echo "== model: resuming the interrupted run in $checkpoint_dir"
    resume=(--resume)
  else
    echo "== model: training $MODEL_DIR"
    rm -rf "$MODEL_DIR" "$checkpoint_dir"
    mkdir -p "$checkpoint_dir"
    echo "$model_stamp" > "$checkpoint_dir/train-demo.stamp"
  fi
  echo "+ $SCAN_TRAIN ${train_args[*]} ${resume[*]}"
  "$SCAN_TRAIN" "${train_args[@]}" "${resume[@]}"
  echo "$model_stamp" > "$MODEL_DIR/train-demo.stamp"
fi
trained=$(seconds)

# 3. The test split: 1,000 images, 5,000 captions.
echo "== evaluation: $SCAN_EVAL --model $MODEL_DIR --data-dir $DATA_DIR --split test --threads $THREADS"
"$SCAN_EVAL" --model "$MODEL_DIR" --data-dir "$DATA_DIR" --split test --threads "$THREADS" 2> >(grep -v '^encoding\|^scoring' >&2)
echo "== done in $(( $(seconds) - start )) s (data + training $(( trained - start )) s)"
