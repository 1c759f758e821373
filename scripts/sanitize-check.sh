#!/usr/bin/env bash
# Builds scanserve with sanitizers and runs its tests under them (CPU only; the CUDA kernels are
# not built). Slower than scripts/test.sh (~45 min on 2 cores for `address`), so not part of CI:
# run it before a release and after changes to memory handling or threading.
#
#   scripts/sanitize-check.sh [address|thread] [BUILD_DIR]
#
# address (default): AddressSanitizer + UndefinedBehaviorSanitizer, every C++ and Python test
#   (the Python end-to-end tests start the sanitized scanserve). Any report aborts the process, so
#   it fails its test.
# thread: ThreadSanitizer over scanserve's own concurrency: the dynamic batcher, the detector pool,
#   the thread pool, the store under concurrent writers and readers, searches during upserts, the
#   top-list search. Debian's LibTorch, OpenMP, RocksDB, gRPC and Abseil are not instrumented, so
#   TSan cannot see their internal synchronisation: tests/tsan.supp names the first four; the
#   gRPC server tests stay out (Abseil's reference-counted Status alone gives hundreds of reports).
set -euo pipefail
cd "$(dirname "$0")/.."
mode="${1:-address}"
jobs="${JOBS:-2}"

bash scripts/install-deps.sh
case "$mode" in
  address)
    build_dir="${2:-build-asan}"
    cmake -S . -B "$build_dir" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DSCANSERVE_WITH_CUDA=OFF \
      -DSCANSERVE_SANITIZE=address,undefined
    cmake --build "$build_dir" -j "$jobs"
    # Leak checking is off: LibTorch and OpenBLAS keep process-lifetime allocations it would report.
    # A failed allocation returns null, as in production, rather than aborting: tests check that an
    # impossible allocation becomes RESOURCE_EXHAUSTED (torch_status_test).
    # SCANSERVE_SANITIZED tells the tests that bound the server's memory that a sanitizer's allocator
    # adds its own (tests/python/test_server_connections.py).
    ASAN_OPTIONS=detect_leaks=0:halt_on_error=1:abort_on_error=1:allocator_may_return_null=1 \
    UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 SCANSERVE_SANITIZED=address \
    OPENBLAS_CORETYPE="${OPENBLAS_CORETYPE:-Haswell}" \
      ctest --test-dir "$build_dir" --output-on-failure -j "$jobs" --timeout 2400
    ;;
  thread)
    build_dir="${2:-build-tsan}"
    cmake -S . -B "$build_dir" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DSCANSERVE_WITH_CUDA=OFF \
      -DSCANSERVE_SANITIZE=thread
    cmake --build "$build_dir" -j "$jobs" --target scoring_tests store_tests retrieval_tests server_tests
    export TSAN_OPTIONS="halt_on_error=1:second_deadlock_stack=1:suppressions=$PWD/tests/tsan.supp"
    export OPENBLAS_CORETYPE="${OPENBLAS_CORETYPE:-Haswell}"
    "$build_dir/tests/scoring_tests" --gtest_brief=1 --gtest_filter='ThreadPool*'
    "$build_dir/tests/store_tests" --gtest_brief=1
    "$build_dir/tests/retrieval_tests" --gtest_brief=1 --gtest_filter='*Concurrent*:TopList*:*Synthetic*'
    "$build_dir/tests/server_tests" --gtest_brief=1 --gtest_filter='DynamicBatcher*:DetectorPool*'
    ;;
  *)
    echo "usage: $0 [address|thread] [BUILD_DIR]" >&2
    exit 2
    ;;
esac
echo "sanitize-check ($mode): all tests passed"
