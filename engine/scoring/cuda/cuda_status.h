// CUDA runtime and cuBLAS failures as absl::Status, and the macros that return them.
#ifndef SCANSERVE_ENGINE_SCORING_CUDA_CUDA_STATUS_H_
#define SCANSERVE_ENGINE_SCORING_CUDA_CUDA_STATUS_H_

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <string>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace scanserve {
namespace cuda_internal {

// Every failed runtime call also becomes the thread's "last error", which the next kernel
// launch's cudaGetLastError() check would report as its own: an error handled here is cleared.
// (A sticky error, after which the context is unusable, cannot be cleared: later calls fail too.)
inline absl::Status CudaStatus(cudaError_t err, const char* what, const char* file, int line) {
  cudaGetLastError();
  const std::string msg = absl::StrCat("CudaScorer: ", what, ": ", cudaGetErrorName(err), " (",
                                       cudaGetErrorString(err), ") at ", file, ":", line);
  if (err == cudaErrorMemoryAllocation) return absl::ResourceExhaustedError(msg);
  return absl::InternalError(msg);
}

inline absl::Status CublasStatus(cublasStatus_t st, const char* what, const char* file, int line) {
  const std::string msg = absl::StrCat("CudaScorer: ", what, ": cuBLAS status ",
                                       static_cast<int>(st), " at ", file, ":", line);
  if (st == CUBLAS_STATUS_ALLOC_FAILED) return absl::ResourceExhaustedError(msg);
  return absl::InternalError(msg);
}

}  // namespace cuda_internal
}  // namespace scanserve

#define SCANSERVE_CUDA_RETURN_IF_ERROR(expr, what)                                      \
  do {                                                                                  \
    const cudaError_t scanserve_cuda_err_ = (expr);                                     \
    if (scanserve_cuda_err_ != cudaSuccess) {                                           \
      return ::scanserve::cuda_internal::CudaStatus(scanserve_cuda_err_, what, __FILE__, \
                                                    __LINE__);                          \
    }                                                                                   \
  } while (0)

#define SCANSERVE_CUBLAS_RETURN_IF_ERROR(expr, what)                                      \
  do {                                                                                    \
    const cublasStatus_t scanserve_cublas_st_ = (expr);                                   \
    if (scanserve_cublas_st_ != CUBLAS_STATUS_SUCCESS) {                                  \
      return ::scanserve::cuda_internal::CublasStatus(scanserve_cublas_st_, what, __FILE__, \
                                                      __LINE__);                          \
    }                                                                                     \
  } while (0)

#endif  // SCANSERVE_ENGINE_SCORING_CUDA_CUDA_STATUS_H_
