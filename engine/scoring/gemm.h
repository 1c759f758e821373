// The one dense matrix product the scoring backends need, behind a torch-free interface.
// Implemented with LibTorch (gemm.cc) so it runs on whatever BLAS LibTorch was built with
// (OpenBLAS on Debian, MKL in the CUDA images).
#pragma once

#include <cstdint>

#include "absl/status/status.h"

namespace scanserve {

// Who does the arithmetic of one GemmNT call.
enum class GemmThreading {
  // The BLAS library's own threads (ComputeThreads() of them): for a caller that issues one
  // GEMM at a time.
  kLibrary,
  // The calling thread only: for callers that already run one GEMM per core on their own threads.
  // With MKL or OpenBLAS >= 0.3.27 this is a per-thread setting. Older OpenBLAS (0.3.21 on Debian
  // 12) only has a process-wide thread count, so while any kCaller call is running, BLAS calls
  // from other threads run single-threaded too (correct, possibly slower).
  kCaller,
};

// Whether kCaller can keep a call on the calling thread: true when LibTorch's BLAS exposes its
// thread controls in the process (OpenBLAS, or MKL linked dynamically). With MKL linked
// statically into LibTorch, for instance, kCaller calls run as kLibrary ones.
bool CallerOnlyGemmSupported();

// C = A · Bᵀ, all row-major fp32: A is m x k (row stride lda >= k), B is n x k (row stride
// ldb >= k), C is m x n (row stride ldc >= n) and is overwritten. m, n or k may be 0 (then C is
// zero-filled when k == 0). Safe to call from several threads at once.
absl::Status GemmNT(int64_t m, int64_t n, int64_t k, const float* a, int64_t lda, const float* b,
                    int64_t ldb, float* c, int64_t ldc,
                    GemmThreading threading = GemmThreading::kLibrary);

// Sets the threads LibTorch's intra-op pool and the BLAS library use (process-wide). n < 1 means
// all cores. The first GemmNT call applies the default (all cores) unless this ran before.
void SetComputeThreads(int n);
// The value last applied (after the first GemmNT or SetComputeThreads).
int ComputeThreads();

// Sets only the BLAS library's own thread count (process-wide; OpenBLAS or MKL), leaving
// LibTorch's intra-op pool alone; SetComputeThreads resets it. For benchmarks that compare BLAS
// threading, e.g. the reference path's many small batched products. n < 1 means ComputeThreads().
void SetBlasThreads(int n);

// Wraps the torch/BLAS build in words, for benchmark headers ("OpenBLAS 0.3.21, 2 threads").
const char* BlasDescription();

}  // namespace scanserve
