#include "engine/scoring/streaming_gemm.h"

#include <algorithm>
#include <memory>
#include <new>

#include "absl/strings/str_cat.h"
#include "engine/common/cpu_features.h"
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
  const int64_t n = queries.rows(), k = queries.dim();
  const float* b = queries.data();
  if (queries.form() == StreamingGemmForm::kOuter) {  // AVX-512 only (Pack)
    // Uninitialised: the kernel writes every value it reads, and this runs once per scoring unit.
    std::unique_ptr<float[]> scratch(new (std::nothrow) float[internal::KernelScratchFloats(n)]);
    if (scratch == nullptr) {
      return absl::ResourceExhaustedError("StreamingGemmNT: out of memory for its scratch");
    }
    internal::GemmOuterAvx512(m, n, k, a, lda, b, queries.remainder_rows(), c, ldc,
                              scratch.get());
  } else if (queries.isa() == StreamingGemmIsa::kAvx512) {
    internal::GemmDotAvx512(m, n, k, a, lda, b, c, ldc);
  } else {
    internal::GemmDotAvx2(m, n, k, a, lda, b, c, ldc);
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

absl::string_view StreamingGemmFormName(StreamingGemmForm form) {
  return form == StreamingGemmForm::kOuter ? "outer" : "dot";
}

StreamingGemmForm ChooseStreamingGemmForm(StreamingGemmIsa isa, StreamedRowType rows, int64_t n) {
  // With bf16 rows and fewer than 32 query rows, the dot form's in-place widening was as fast or
  // faster than copying widened rows (2 cores, 10,000 images, kernels alone: 12 rows 61 against
  // 72 ms, 16-20 rows equal, 24 rows 102 against 118 ms; 35 rows 169 against 135 ms). For fp32
  // rows the outer form was 15-45% faster at every width.
  constexpr int64_t kBf16OuterMinRows = 32;
  if (isa != StreamingGemmIsa::kAvx512) return StreamingGemmForm::kDot;
  if (rows == StreamedRowType::kBFloat16 && n < kBf16OuterMinRows) return StreamingGemmForm::kDot;
  return StreamingGemmForm::kOuter;
}

absl::StatusOr<StreamingGemmQueries> StreamingGemmQueries::Pack(StreamingGemmIsa isa,
                                                                StreamedRowType rows,
                                                                const float* b, int64_t n,
                                                                int64_t k, int64_t ldb) {
  return Pack(isa, rows, ChooseStreamingGemmForm(isa, rows, n), b, n, k, ldb);
}

absl::StatusOr<StreamingGemmQueries> StreamingGemmQueries::Pack(StreamingGemmIsa isa,
                                                                StreamedRowType rows,
                                                                StreamingGemmForm form,
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
  if (form == StreamingGemmForm::kOuter && isa != StreamingGemmIsa::kAvx512) {
    return absl::FailedPreconditionError(absl::StrCat(
        "StreamingGemmQueries: the outer form has no ", StreamingGemmIsaName(isa), " kernel"));
  }
  StreamingGemmQueries q;
  q.isa_ = isa;
  q.row_type_ = rows;
  q.form_ = form;
  q.rows_ = n;
  q.dim_ = k;
  const int64_t lanes = Lanes(isa);
  int64_t packed_rows = n;  // with the outer form's zero columns
#if defined(__x86_64__)
  if (form == StreamingGemmForm::kOuter) {
    // A few rows past whole vectors go to the kernel's dot-product remainder (one FMA per row
    // and vector of k instead of a whole, mostly empty, vector per k).
    if (n >= lanes && n % lanes <= internal::kMaxRemainderRows) q.remainder_rows_ = n % lanes;
    packed_rows = (n - q.remainder_rows_ + lanes - 1) / lanes * lanes + q.remainder_rows_;
  }
#endif
  try {
    q.packed_.assign(packed_rows * k, 0.0f);
  } catch (const std::bad_alloc&) {
    return absl::ResourceExhaustedError(
        absl::StrCat("StreamingGemmQueries: out of memory packing ", n, " x ", k));
  }
#if defined(__x86_64__)  // CpuRuns is false elsewhere
  if (form == StreamingGemmForm::kOuter) {
    // Column panels of up to kPanelVectorsAvx512 vectors, each k-major: one k of a panel is the
    // vectors the kernel multiplies by one broadcast stored value. Columns past n stay zero.
    const int64_t outer_rows = n - q.remainder_rows_;
    const int64_t outer_width = packed_rows - q.remainder_rows_;
    float* panel = q.packed_.data();
    for (int64_t col = 0; col < outer_width;) {
      const int64_t width =
          std::min<int64_t>(internal::kPanelVectorsAvx512 * lanes, outer_width - col);
      for (int64_t j = col; j < std::min(col + width, outer_rows); ++j) {
        const float* src = b + j * ldb;
        for (int64_t t = 0; t < k; ++t) panel[t * width + (j - col)] = src[t];
      }
      panel += k * width;
      col += width;
    }
    for (int64_t j = outer_rows; j < n; ++j, panel += k) {
      std::copy(b + j * ldb, b + j * ldb + k, panel);
    }
    return q;
  }
#endif
  for (int64_t j = 0; j < n; ++j) {
    const float* src = b + j * ldb;
    float* dst = q.packed_.data() + j * k;
    if (rows == StreamedRowType::kFloat32) {
      std::copy(src, src + k, dst);
      continue;
    }
    // The dot form's bf16 kernels widen 2 * lanes stored values per load into the even-indexed
    // and the odd-indexed ones: each such step of the query row is stored evens first, then odds.
    for (int64_t s = 0; s < k; s += 2 * lanes) {
      for (int64_t i = 0; i < lanes; ++i) {
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
