// CudaPassKernels: which kernels the CUDA backend scores a pass with. Header-only and torch-free,
// like storage_type.h, so that server/ (flags) uses it without linking the scoring library.
#pragma once

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"

namespace scanserve {

// Both give the same scores to rounding (CudaScorerOptions::pass_kernels).
enum class CudaPassKernels {
  kGemm,   // cuBLAS products, then the fused SCAN epilogue kernel
  kFused,  // one kernel: products on the tensor cores in shared memory, scored there
  // Whichever of the two has been faster on this device for passes of this many query rows,
  // by timing the live passes (engine/scoring/pass_kernel_chooser.h).
  kAuto,
};

// "gemm", "fused", "auto".
inline const char* CudaPassKernelsName(CudaPassKernels kernels) {
  switch (kernels) {
    case CudaPassKernels::kGemm: return "gemm";
    case CudaPassKernels::kFused: return "fused";
    case CudaPassKernels::kAuto: return "auto";
  }
  return "unknown";
}

// The names above; INVALID_ARGUMENT otherwise.
inline absl::StatusOr<CudaPassKernels> ParseCudaPassKernels(absl::string_view name) {
  for (CudaPassKernels k : {CudaPassKernels::kGemm, CudaPassKernels::kFused, CudaPassKernels::kAuto}) {
    if (name == CudaPassKernelsName(k)) return k;
  }
  return absl::InvalidArgumentError(
      absl::StrCat("expected gemm, fused or auto, got '", name, "'"));
}

}  // namespace scanserve
