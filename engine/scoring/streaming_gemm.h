// The region-word products of a scoring pass computed straight from the stored rows (fp32, or bf16
// widened as they are loaded), for passes with few query rows.
//
// A general BLAS packs both operands of C = A · Bᵀ before multiplying. With few query rows (a lone
// caption is ~16) the stored block A is the whole cost, and packing it reads and writes it once
// more; with bf16 storage the scorer also widens it to fp32 first. These kernels read each stored
// row once from memory and meet it with every query row while it is in L1: the pass then moves
// the store's bytes once (half of them with bf16). Two forms (StreamingGemmForm): dot products
// along k, reading the stored rows in place, and outer products of broadcast stored values and
// query vectors (AVX-512), which copy a small block of stored rows into L1 at a time and read the
// query rows 6x less often. GemmNT (gemm.h) stays the general product, and the faster one when
// many queries share a pass.
#pragma once

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace scanserve {

// The instruction sets the kernels are written for, best last.
enum class StreamingGemmIsa { kNone, kAvx2, kAvx512 };

// The best one this CPU (and OS) runs; kNone off x86-64 or without AVX2 + FMA.
StreamingGemmIsa BestStreamingGemmIsa();
// "none", "avx2", "avx512".
absl::string_view StreamingGemmIsaName(StreamingGemmIsa isa);

// How the stored rows are held.
enum class StreamedRowType { kFloat32, kBFloat16 };

// How a kernel lays a pass's products out in registers: dot products along k
// (streaming_gemm_dot_tiles.h), or outer products of stored values and query vectors
// (streaming_gemm_outer_tiles.h, AVX-512 only).
enum class StreamingGemmForm { kDot, kOuter };

// "dot", "outer".
absl::string_view StreamingGemmFormName(StreamingGemmForm form);

// The faster form for n query rows over `rows`-typed stored rows on `isa` (as measured on a
// 2-core AVX-512 Xeon): outer for fp32 rows, and for bf16 rows from 32 query rows; dot
// otherwise, and always on AVX2.
StreamingGemmForm ChooseStreamingGemmForm(StreamingGemmIsa isa, StreamedRowType rows, int64_t n);

// The query rows (B) of one pass, packed once in the order one kernel reads them.
class StreamingGemmQueries {
 public:
  // Copies n rows of k floats (row stride ldb >= k), for ChooseStreamingGemmForm's form.
  // INVALID_ARGUMENT unless k is a positive multiple of kStreamingGemmDimMultiple and n >= 0;
  // FAILED_PRECONDITION when `isa` is kNone or this CPU cannot run it.
  static absl::StatusOr<StreamingGemmQueries> Pack(StreamingGemmIsa isa, StreamedRowType rows,
                                                   const float* b, int64_t n, int64_t k,
                                                   int64_t ldb);
  // The same for a given form; FAILED_PRECONDITION for the outer form off AVX-512.
  static absl::StatusOr<StreamingGemmQueries> Pack(StreamingGemmIsa isa, StreamedRowType rows,
                                                   StreamingGemmForm form, const float* b,
                                                   int64_t n, int64_t k, int64_t ldb);

  StreamingGemmIsa isa() const { return isa_; }
  StreamedRowType row_type() const { return row_type_; }
  StreamingGemmForm form() const { return form_; }
  // The outer form's last rows taken as dot products (streaming_gemm_kernels.h); 0 otherwise.
  int64_t remainder_rows() const { return remainder_rows_; }
  int64_t rows() const { return rows_; }
  int64_t dim() const { return dim_; }
  const float* data() const { return packed_.data(); }

 private:
  StreamingGemmQueries() = default;

  StreamingGemmIsa isa_ = StreamingGemmIsa::kNone;
  StreamedRowType row_type_ = StreamedRowType::kFloat32;
  StreamingGemmForm form_ = StreamingGemmForm::kDot;
  int64_t remainder_rows_ = 0;
  int64_t rows_ = 0;
  int64_t dim_ = 0;
  std::vector<float> packed_;  // in the form's layout (streaming_gemm_kernels.h)
};

// The dimensions the kernels take: whole steps of the widest kernel's bf16 loads.
inline constexpr int64_t kStreamingGemmDimMultiple = 32;

// C (m x queries.rows(), row stride ldc) = A · queries ᵀ, A being m stored rows of queries.dim()
// values (row stride lda >= dim) of the type the queries were packed for. On the calling thread.
// INVALID_ARGUMENT for a mismatched row type or bad strides.
absl::Status StreamingGemmNT(const StreamingGemmQueries& queries, int64_t m, const float* a,
                             int64_t lda, float* c, int64_t ldc);
absl::Status StreamingGemmNT(const StreamingGemmQueries& queries, int64_t m, const uint16_t* a_bf16,
                             int64_t lda, float* c, int64_t ldc);

}  // namespace scanserve
