#include "engine/scoring/streaming_gemm.h"

#include <cstring>
#include <new>

#include "absl/strings/str_cat.h"
#include "engine/common/openblas_core.h"
#include "engine/common/status_macros.h"
#include "engine/scoring/streaming_gemm_kernels.h"

namespace scanserve {
namespace {

#if defined(__x86_64__)
namespace internal = streaming_gemm_internal;
#endif

bool CpuRuns(StreamingGemmIsa isa) {
  const CpuVectorFeatures cpu = DetectCpuVectorFeatures();
  switch (isa) {
    case StreamingGemmIsa::kNone:
      return false;
    case StreamingGemmIsa::kAvx2:
      return cpu.avx2_fma;
    case StreamingGemmIsa::kAvx512:
      return cpu.avx2_fma && cpu.avx512f;  // the file is compiled with -mavx2 -mfma too
  }
  return false;
}

// The fp32 lanes of one vector register.
int Lanes(StreamingGemmIsa isa) { return isa == StreamingGemmIsa::kAvx512 ? 16 : 8; }

absl::Status CheckShape(const StreamingGemmQueries& q, StreamedRowType type, int64_t m,
                        int64_t lda, int64_t ldc) {
  if (q.row_type() != type) {
    return absl::InvalidArgumentError(
        "StreamingGemmNT: stored rows of another type than the queries were packed for");
  }
  if (m < 0 || lda < q.dim() || ldc < q.rows()) {
    return absl::InvalidArgumentError(absl::StrCat("StreamingGemmNT: bad shape m=", m, " lda=", lda,
                                                   " ldc=", ldc, " for ", q.rows(), " x ",
                                                   q.dim(), " queries"));
  }
  return absl::OkStatus();
}

// Both StreamingGemmNT overloads: `a` holds rows of `type`.
template <typename T>
absl::Status RunKernel(const StreamingGemmQueries& queries, StreamedRowType type, int64_t m,
                       const T* a, int64_t lda, float* c, int64_t ldc) {
  SCANSERVE_RETURN_IF_ERROR(CheckShape(queries, type, m, lda, ldc));
  if (m == 0 || queries.rows() == 0) return absl::OkStatus();
#if defined(__x86_64__)  // elsewhere no queries can be packed
  if (queries.isa() == StreamingGemmIsa::kAvx512) {
    internal::GemmAvx512(m, queries.rows(), queries.dim(), a, lda, queries.data(), c, ldc);
  } else {
    internal::GemmAvx2(m, queries.rows(), queries.dim(), a, lda, queries.data(), c, ldc);
  }
#endif
  return absl::OkStatus();
}

}  // namespace

StreamingGemmIsa BestStreamingGemmIsa() {
  static const StreamingGemmIsa best = [] {
    if (CpuRuns(StreamingGemmIsa::kAvx512)) return StreamingGemmIsa::kAvx512;
    if (CpuRuns(StreamingGemmIsa::kAvx2)) return StreamingGemmIsa::kAvx2;
    return StreamingGemmIsa::kNone;
  }();
  return best;
}

absl::string_view StreamingGemmIsaName(StreamingGemmIsa isa) {
  switch (isa) {
    case StreamingGemmIsa::kNone:
      return "none";
    case StreamingGemmIsa::kAvx2:
      return "avx2";
    case StreamingGemmIsa::kAvx512:
      return "avx512";
  }
  return "none";
}

absl::StatusOr<StreamingGemmQueries> StreamingGemmQueries::Pack(StreamingGemmIsa isa,
                                                                StreamedRowType rows,
                                                                const float* b, int64_t n,
                                                                int64_t k, int64_t ldb) {
  if (k <= 0 || k % kStreamingGemmDimMultiple != 0 || n < 0 || ldb < k) {
    return absl::InvalidArgumentError(absl::StrCat(
        "StreamingGemmQueries: dimension ", k, " is not a positive multiple of ",
        kStreamingGemmDimMultiple, " (or n=", n, ", ldb=", ldb, ")"));
  }
  if (!CpuRuns(isa)) {
    return absl::FailedPreconditionError(absl::StrCat(
        "StreamingGemmQueries: this CPU does not run the ", StreamingGemmIsaName(isa), " kernels"));
  }
  StreamingGemmQueries q;
  q.isa_ = isa;
  q.row_type_ = rows;
  q.rows_ = n;
  q.dim_ = k;
  try {
    q.packed_.resize(n * k);
  } catch (const std::bad_alloc&) {
    return absl::ResourceExhaustedError(
        absl::StrCat("StreamingGemmQueries: out of memory packing ", n, " x ", k));
  }
  const int lanes = Lanes(isa);
  for (int64_t j = 0; j < n; ++j) {
    const float* src = b + j * ldb;
    float* dst = q.packed_.data() + j * k;
    if (rows == StreamedRowType::kFloat32) {
      std::memcpy(dst, src, k * sizeof(float));
      continue;
    }
    // bf16 kernels widen 2 * lanes stored values per load into the even-indexed and the
    // odd-indexed ones: each such step of the query row is stored evens first, then odds.
    for (int64_t s = 0; s < k; s += 2 * lanes) {
      for (int i = 0; i < lanes; ++i) {
        dst[s + i] = src[s + 2 * i];
        dst[s + lanes + i] = src[s + 2 * i + 1];
      }
    }
  }
  return q;
}

absl::Status StreamingGemmNT(const StreamingGemmQueries& queries, int64_t m, const float* a,
                             int64_t lda, float* c, int64_t ldc) {
  return RunKernel(queries, StreamedRowType::kFloat32, m, a, lda, c, ldc);
}

absl::Status StreamingGemmNT(const StreamingGemmQueries& queries, int64_t m, const uint16_t* a_bf16,
                             int64_t lda, float* c, int64_t ldc) {
  return RunKernel(queries, StreamedRowType::kBFloat16, m, a_bf16, lda, c, ldc);
}

}  // namespace scanserve
