#!/usr/bin/env bash
# Installs dependencies, builds everything with -j2 and runs every test (C++ and Python).
# Usage: scripts/test.sh [BUILD_DIR]   (default: build)
set -euo pipefail
cd "$(dirname "$0")/.."
build_dir="${1:-build}"

bash scripts/install-deps.sh
cmake -S . -B "$build_dir" -G Ninja -DCMAKE_BUILD_TYPE=Release
cmake --build "$build_dir" -j2
# scanserve and the scan_* tools restart themselves with OpenBLAS kernels this CPU runs where
# OpenBLAS fell back to its SSE3 ones (engine/common/openblas_core.h); the test binaries and the
# Python references load the same OpenBLAS, so they get the same choice here (test_openblas_core.py
# clears it to test the restart).
if [[ -z "${OPENBLAS_CORETYPE+set}" && -r /proc/cpuinfo ]]; then
  flags=" $(grep -m1 '^flags' /proc/cpuinfo) "
  has() { for f in "$@"; do [[ "$flags" == *" $f "* ]] || return 1; done; }
  if has avx512f avx512bw avx512dq avx512vl avx512cd; then
    export OPENBLAS_CORETYPE=SkylakeX
  elif has avx2 fma; then
    export OPENBLAS_CORETYPE=Haswell
  fi
fi
ctest --test-dir "$build_dir" --output-on-failure -j2 --timeout 900
