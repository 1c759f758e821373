// CudaQueryPrecision: how the CUDA backend's fp32 queries meet bf16 (or fp8-widened) stored
// features on the tensor cores. Header-only and torch-free, like cuda_pass_kernels.h, so that
// server/ (flags) uses it without linking the scoring library.
#pragma once

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"

namespace scanserve {

// fp32 storage ignores it: its products are fp32 SGEMM.
enum class CudaQueryPrecision {
  // q = hi + lo, both bf16, two stacked operands: the products are exact to ~2^-16 relative,
  // i.e. the scores of the rounded items (CpuScorer's bf16 semantics). Twice the tensor-core work
  // per query; the stored features are still read once per pass.
  kBf16Split,
  // q rounded to bf16: half the tensor-core work, which is what bounds a batched pass; the
  // queries' rounding adds ~2^-9 relative error to the products.
  kBf16,
};

// "bf16x2" (split), "bf16".
inline const char* CudaQueryPrecisionName(CudaQueryPrecision precision) {
  switch (precision) {
    case CudaQueryPrecision::kBf16Split: return "bf16x2";
    case CudaQueryPrecision::kBf16: return "bf16";
  }
  return "unknown";
}

// The names above; INVALID_ARGUMENT otherwise.
inline absl::StatusOr<CudaQueryPrecision> ParseCudaQueryPrecision(absl::string_view name) {
  for (CudaQueryPrecision p : {CudaQueryPrecision::kBf16Split, CudaQueryPrecision::kBf16}) {
    if (name == CudaQueryPrecisionName(p)) return p;
  }
  return absl::InvalidArgumentError(absl::StrCat("expected bf16x2 or bf16, got '", name, "'"));
}

}  // namespace scanserve
