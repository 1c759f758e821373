#!/usr/bin/env bash
# The one prepared check for the GPU machine (H200; Ubuntu 24.04, gcc 13, CMake 4, nvcc 13,
# PyTorch 2.11 CUDA; no gRPC/Abseil/RocksDB packages: see ../shared/gpu/README.md). From the project
# root, with `.debs/` carried (`bash scripts/fetch-gpu-debs.sh` on the CPU machine first):
#
#   bash scripts/gpu-check.sh            # ~6-8 minutes (after scripts/fetch-gpu-debs.sh here)
#
# Steps, each timed and under `timeout`: environment, configure (CUDA on, sm_90; the server too when
# .debs has gRPC, without OpenCV; engine-only if that configure fails), build scoring_tests +
# detector_tests + model_tests + scan_bench + scan_bench_encoder + scan_extract, run the CUDA
# tests, the BiGRU text encoder's time per call on the GPU (scan_bench_encoder), the detector
# timing, the same-run reference-style PyTorch baseline (tools/reference_scan_baseline.py, 100k
# fp32 and bf16: the tables' "vs ref"), the scan_bench CUDA table (100k fp32+bf16+fp8 with the
# cuBLAS and the fused kernels and the fused one with queries rounded to bf16, 1M bf16 with both
# and --cuda-kernels auto, split and rounded queries; the cuBLAS path with
# 256 MB and with L2-sized 32 MB product chunks), 1M fp8 on the fused pass (when time is left,
# FP8_1M_BEFORE_S, 330), the engine's CUDA test
# (retrieval_tests), and last, when the server built and
# time is left, scanserve + scanctl and the end-to-end serving benchmark through gRPC
# (scripts/serve-bench.sh: 1M synthetic images, lone query and concurrent clients). A failing test step does not stop the later steps; the
# exit status is non-zero when any step failed.
# Environment overrides: BUILD_DIR (build-gpu), JOBS (nproc), BENCH_1M=0 to skip the 1M table,
# BASELINE=0 to skip the PyTorch baseline, DETECTOR_BENCH=0 to skip the detector timing,
# SERVE_BENCH=0 to skip the serving benchmark, SERVE_BENCH_ONLY=1 to run only the build and the
# serving benchmark (e.g. a second call on a still-warm machine), SERVE_BENCH_BEFORE_S (420: skipped
# when the script has run longer), SERVE_IMAGES (1000000), SERVE_CUDA_KERNELS (scanserve
# --cuda-kernels: auto, the faster of the two per batch shape; gemm or fused to pin one),
# SERVE_QUERY_PRECISIONS (scanserve --cuda-query-precision, one run each: bf16x2, or with
# SERVE_BENCH_ONLY=1 bf16x2,bf16),
# EXTRA_CMAKE_ARGS.
set -euo pipefail
cd "$(dirname "$0")/.."

BUILD_DIR="${BUILD_DIR:-build-gpu}"
JOBS="${JOBS:-$(nproc)}"
BENCH_1M="${BENCH_1M:-1}"
BASELINE="${BASELINE:-1}"
T_START=$(date +%s)
declare -a SUMMARY=()
FAILED=0

section() { printf '\n==================== %s ====================\n' "$*"; }
elapsed() { echo $(( $(date +%s) - T_START )); }
# run_step NAME TIMEOUT_S CMD...: runs, times, records; returns the command's status.
run_step() {
  local name="$1" limit="$2"
  shift 2
  section "$name (limit ${limit}s, t=$(elapsed)s)"
  local t0 rc
  t0=$(date +%s)
  set +e
  timeout --kill-after=10 "$limit" "$@"
  rc=$?
  set -e
  local dt=$(( $(date +%s) - t0 ))
  if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
    SUMMARY+=("$(printf '%-34s TIMEOUT after %ss' "$name" "$dt")")
  else
    SUMMARY+=("$(printf '%-34s rc=%s  %ss' "$name" "$rc" "$dt")")
  fi
  [ "$rc" -eq 0 ] || FAILED=1
  return "$rc"
}
finish() {
  section "SUMMARY (total $(elapsed)s)"
  printf '%s\n' "${SUMMARY[@]}"
  if [ "$FAILED" -ne 0 ]; then echo "gpu-check: SOME STEPS FAILED"; else echo "gpu-check: all steps passed"; fi
}
trap finish EXIT

# ---------------------------------------------------------------------------------------------
section "MACHINE"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv || true
nvcc --version | tail -2 || true
cmake --version | head -1 || true
g++ --version | head -1 || true
python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, "device", torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)' || true

section "ENVIRONMENT (.debs: Abseil, RocksDB, GTest, ...)"
if [ -f .debs/unpack-debs.sh ]; then
  bash .debs/unpack-debs.sh > /tmp/scanserve-gpu-env.sh
  # shellcheck disable=SC1091
  source /tmp/scanserve-gpu-env.sh
elif ls .debs/*.deb >/dev/null 2>&1 && [ -f ../shared/gpu/unpack-debs.sh ]; then
  cp ../shared/gpu/unpack-debs.sh .debs/
  bash .debs/unpack-debs.sh > /tmp/scanserve-gpu-env.sh
  # shellcheck disable=SC1091
  source /tmp/scanserve-gpu-env.sh
else
  echo "WARNING: no .debs/ (run 'bash scripts/fetch-gpu-debs.sh'"
  echo "         on the CPU machine and carry .debs); configuring with the system packages only."
  CMAKE_PREFIX_PATH="$(python3 -c 'import torch; print(torch.utils.cmake_prefix_path)')" ||
    echo "WARNING: python3 cannot import torch: no LibTorch to build against"
  export CMAKE_PREFIX_PATH
fi
echo "CMAKE_PREFIX_PATH=$CMAKE_PREFIX_PATH"
# What the configure step needs beyond the .debs (present natively on the GPU machine, or not).
for what in "nlohmann_json:nlohmann_json" "OpenCV:opencv4"; do
  name="${what%%:*}"; pc="${what##*:}"
  if pkg-config --exists "$pc" 2>/dev/null || ls /usr/lib/x86_64-linux-gnu/cmake/"$name"* /usr/share/cmake/"$name"* \
       /opt/deb/usr/lib/x86_64-linux-gnu/cmake/"$name"* /opt/deb/usr/share/cmake/"$name"* >/dev/null 2>&1; then
    echo "found $name"
  else
    echo "WARNING: $name not found (nlohmann_json: run scripts/fetch-gpu-debs.sh and carry .debs;"
    echo "         OpenCV is optional here: without it the detector refuses image bytes)"
  fi
done
GEN="Ninja"
command -v ninja >/dev/null 2>&1 || GEN="Unix Makefiles"
echo "generator: $GEN, jobs: $JOBS"

# ---------------------------------------------------------------------------------------------
# The server too when the .debs have gRPC (it serves without OpenCV there: image bytes refused);
# if that configure fails, the engine alone, so that the CUDA checks still run.
SERVER=OFF
if ls .debs/libgrpc++-dev_*.deb >/dev/null 2>&1; then SERVER=ON; fi
# (run_step runs a program under `timeout`, so the command is an array, not a shell function.)
# shellcheck disable=SC2206
configure=(cmake -S . -B "$BUILD_DIR" -G "$GEN" -DCMAKE_BUILD_TYPE=Release -DSCANSERVE_SERVER_WITHOUT_OPENCV=ON
           -DSCANSERVE_WITH_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 ${EXTRA_CMAKE_ARGS:-})
if ! run_step "CONFIGURE (server $SERVER)" 240 "${configure[@]}" -DSCANSERVE_BUILD_SERVER="$SERVER"; then
  [ "$SERVER" = "ON" ] || exit 1
  SERVER=OFF
  rm -rf "$BUILD_DIR"
  run_step "CONFIGURE (engine only)" 240 "${configure[@]}" -DSCANSERVE_BUILD_SERVER=OFF || exit 1
fi

run_step "BUILD scoring_tests detector_tests model_tests scan_bench scan_bench_encoder scan_extract" 360 \
  cmake --build "$BUILD_DIR" -j "$JOBS" --target scoring_tests detector_tests model_tests scan_bench \
  scan_bench_encoder scan_extract || exit 1
# Which CUDA runtime and cuBLAS the binaries load: the CUDA scorer links the toolkit's cuBLAS, and
# LibTorch's CUDA needs one too (a single libcublas.so.13 is loaded for both), which a symbol
# error at start-up would point at.
ldd "$BUILD_DIR"/tests/scoring_tests | grep -E 'cublas|cudart|libtorch_cuda' || true

# The end-to-end serving benchmark: scanserve on the GPU with 1M synthetic images, scanctl bench at
# concurrency 1 (a lone query; goal <= 25 ms p50) and with concurrent clients (goal >= 300 queries/s).
# Two batch workers: one encodes the next batch while the other's batch is on the scorer.
serve_bench() {
  if [ "$SERVER" != "ON" ] || [ "${SERVE_BENCH:-1}" = "0" ]; then
    echo "serving benchmark skipped (the server is not configured, or SERVE_BENCH=0)"
    return 0
  fi
  if [ "$(elapsed)" -gt "${SERVE_BENCH_BEFORE_S:-420}" ]; then
    echo "serving benchmark skipped: $(elapsed)s used; run it next on the warm machine with"
    echo "  SERVE_BENCH_ONLY=1 bash scripts/gpu-check.sh"
    return 0
  fi
  # Built only now, so that it never delays the CUDA tests and the scoring table.
  run_step "BUILD scanserve scanctl" 240 cmake --build "$BUILD_DIR" -j "$JOBS" --target scanserve scanctl || return 0
  local precision
  local precisions="${SERVE_QUERY_PRECISIONS:-bf16x2}"
  for precision in ${precisions//,/ }; do
    run_step "SERVE BENCH scanserve cuda (${SERVE_CUDA_KERNELS:-auto}, queries $precision), ${SERVE_IMAGES:-1000000} images, through gRPC" 240 \
      env BUILD_DIR="$BUILD_DIR" BACKEND=cuda IMAGES="${SERVE_IMAGES:-1000000}" LEVELS=1,16,64,128 DURATION=4 \
      WARMUP=2 START_TIMEOUT=150 \
      EXTRA_SERVER_ARGS="--batch-workers 2 --cuda-kernels ${SERVE_CUDA_KERNELS:-auto} --cuda-query-precision $precision" \
      bash scripts/serve-bench.sh || true
  done
}
if [ "${SERVE_BENCH_ONLY:-0}" = "1" ]; then
  # On a warm machine: the default (split) queries and the opt-in rounded ones, whose batched
  # passes do half the tensor-core work.
  SERVE_QUERY_PRECISIONS="${SERVE_QUERY_PRECISIONS:-bf16x2,bf16}"
  SERVE_BENCH_BEFORE_S=100000 serve_bench
  exit "$FAILED"
fi

# ---------------------------------------------------------------------------------------------
# CUDA tests. SCANSERVE_TEST_VERBOSE prints every CUDA-vs-CPU comparison (max rel err, top-10).
export SCANSERVE_TEST_VERBOSE=1
run_step "TEST scoring (CUDA scorer vs CPU oracle)" 240 \
  "$BUILD_DIR"/tests/scoring_tests --gtest_color=no \
  --gtest_filter='CudaKernelsTest.*:CudaScorerTest.*:*CudaScorerStorageTest.*:MakeScorerTest.*:Scoring/ValidationTest.*Cuda*' || true
unset SCANSERVE_TEST_VERBOSE
run_step "TEST detector (CUDA ops)" 180 \
  "$BUILD_DIR"/tests/detector_tests --gtest_color=no --gtest_filter='*Cuda*:*cuda*' || true
run_step "TEST model (CUDA encoders vs CPU)" 120 \
  "$BUILD_DIR"/tests/model_tests --gtest_color=no --gtest_filter='*Cuda*' || true
# The BiGRU text encoder on the GPU, per call (a lone query's encoding is part of its 25 ms).
run_step "BENCH text encoder on cuda (random model at the released sizes)" 90 bash -c "
  python3 tools/make_random_scan_model.py /tmp/scanserve-random-model >/dev/null &&
  '$BUILD_DIR/engine/scan_bench_encoder' --model=/tmp/scanserve-random-model --device=cuda \
    --batch=1,16,64 --queries=64 --reps=3" || true
# The CPU scoring tests too (quick), so that the CUDA build did not disturb them.
run_step "TEST scoring (all other scoring tests)" 240 \
  "$BUILD_DIR"/tests/scoring_tests --gtest_color=no --gtest_brief=1 \
  --gtest_filter='-CudaKernelsTest.*:CudaScorerTest.*:*CudaScorerStorageTest.*' || true

# ---------------------------------------------------------------------------------------------
# The detector network alone (no decoding) on the GPU, random weights in the converted format:
# fp32, TF32 and the opt-in bf16, batch 1, 300 proposals per image (goals: >= 60 images/s in TF32,
# >= 200 in bf16).
if [ "${DETECTOR_BENCH:-1}" = "1" ]; then
  run_step "BENCH detector (random weights), fp32, TF32 and bf16" 240 bash -c "
    python3 tools/make_random_detector.py /tmp/scanserve-random-detector >/dev/null &&
    '$BUILD_DIR/engine/scan_extract' --detector /tmp/scanserve-random-detector --device cuda --benchmark 20 &&
    '$BUILD_DIR/engine/scan_extract' --detector /tmp/scanserve-random-detector --device cuda --precision tf32 --benchmark 40 &&
    '$BUILD_DIR/engine/scan_extract' --detector /tmp/scanserve-random-detector --device cuda --precision bf16 --benchmark 40" || true
fi

# ---------------------------------------------------------------------------------------------
# Same-run baseline first: the published code's t2i scoring in PyTorch (one caption per call, as
# its evaluation does), clipped_l2norm, LogSumExp, λ1 = 9, λ2 = 6, on 100k random images, fp32
# and bf16. Its REF_MS lines become scan_bench's --ref_ms, so the tables' "vs ref" column is a
# same-run ratio (1M rows keep performance.md's number, marked *).
REF_FLAG=""
if [ "$BASELINE" = "1" ]; then
  run_step "BASELINE reference-style PyTorch, 100k images" 150 bash -o pipefail -c \
    "python3 tools/reference_scan_baseline.py --images 100000 --dtypes fp32,bf16 --device cuda | tee /tmp/scanserve-ref.txt" || true
  REF_FLAG=$(awk '/^REF_MS /{printf "%s%s:%s=%s", sep, $2, $3, $4; sep=","}' /tmp/scanserve-ref.txt 2>/dev/null || true)
  if [ -n "$REF_FLAG" ]; then REF_FLAG="--ref_ms=$REF_FLAG"; fi
  echo "scan_bench baseline flag: ${REF_FLAG:-none, the tables quote performance.md}"
fi

BENCH="$BUILD_DIR/engine/scan_bench"
run_step "BENCH cuda 100k images, fp32 + bf16 + fp8, cuBLAS (two streams, one) and fused kernels" 300 \
  "$BENCH" --backend=cuda --images=100000 --storage=fp32,bf16,fp8 --kernels=gemm,gemm-serial,fused,fused-1,fused:q-bf16 \
  --product_mb=256,32 --queries=64 --reps=3 ${REF_FLAG:+"$REF_FLAG"} || true
if [ "$BENCH_1M" = "1" ]; then
  # fused-s2: the fused pass with one k step in flight (two copy stages) against the default (up
  # to four): what the deeper copy pipeline buys at batch 1, where the pass only reads the store.
  # auto: the scorer's own choice per batch size after timing both (--cuda-kernels auto): its
  # rows should match the faster of gemm and fused. auto:q-bf16: the same with the queries rounded
  # to bf16 (--cuda-query-precision bf16): half the tensor-core work of a batched pass.
  run_step "BENCH cuda 1M images, bf16" 300 \
    "$BENCH" --backend=cuda --images=1000000 --storage=bf16 --kernels=gemm,fused,fused-s2,auto,auto:q-bf16 \
    --product_mb=256,32 --queries=64 \
    --reps=3 || true
fi

# fp8 on the fused pass reads half of bf16's bytes (the codes are widened as they are staged):
# the likeliest lone-query winner at 1M, when time is left for another 1M load.
if [ "$BENCH_1M" = "1" ] && [ "$(elapsed)" -lt "${FP8_1M_BEFORE_S:-330}" ]; then
  run_step "BENCH cuda 1M images, fp8, fused" 150 \
    "$BENCH" --backend=cuda --images=1000000 --storage=fp8 --kernels=fused --queries=64 --reps=3 || true
fi
# The engine on the CUDA backend: ensembles and filters answered from the models' device top
# lists rank as the CPU engine does. Built after the tables (its engine library is the server's
# too), on its own, so that a failure cannot stop the rest.
if [ "$(elapsed)" -gt "${RETRIEVAL_TEST_BEFORE_S:-450}" ]; then
  echo "retrieval_tests skipped: $(elapsed)s used (RETRIEVAL_TEST_BEFORE_S); run them on a warm machine with"
  echo "  cmake --build $BUILD_DIR --target retrieval_tests && $BUILD_DIR/tests/retrieval_tests --gtest_filter='*Cuda*:TopListSearchTest.*'"
elif run_step "BUILD retrieval_tests" 150 cmake --build "$BUILD_DIR" -j "$JOBS" --target retrieval_tests; then
  run_step "TEST retrieval (CUDA engine vs CPU engine, top-list search)" 120 \
    "$BUILD_DIR"/tests/retrieval_tests --gtest_color=no --gtest_filter='*Cuda*:TopListSearchTest.*' || true
fi
serve_bench
[ "$FAILED" -eq 0 ]
