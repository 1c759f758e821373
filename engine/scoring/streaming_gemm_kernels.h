// The streaming GEMM's per-ISA kernels (streaming_gemm_avx2.cc, streaming_gemm_avx512.cc), behind
// plain declarations. Those two files are compiled with their ISA's flags and include nothing but
// intrinsics: an inline function from a shared header compiled there could be the copy the linker
// keeps for the whole program, and then run on a CPU without the ISA. (The one function here,
// KernelScratchFloats, is for the callers.)
//
// Each computes C (m x n, row stride ldc) = A (m x k, row stride lda) · Bᵀ, k a multiple of 32,
// one overload per stored row type, in one of two forms:
// - Dot (streaming_gemm_dot_tiles.h): `b` holds the n query rows (row stride k), bf16 passes'
//   rows stored even-then-odd per 2 * lanes values (StreamingGemmQueries::Pack).
// - Outer (streaming_gemm_outer_tiles.h, AVX-512 only): `bt` holds the first n - rem as column
//   panels of kPanelVectorsAvx512 vectors (the last one narrower), each k-major, zero-padded to
//   whole vectors, then the last rem rows (0..kMaxRemainderRows) as rows; `scratch` is
//   KernelScratchFloats(n) floats of the calling thread's own.
#pragma once

#include <cstdint>

namespace scanserve {
namespace streaming_gemm_internal {

// k values of a stored panel copied at a time: 24 rows x 128 fp32 values (12 KB) stay in L1.
inline constexpr int64_t kBlockK = 128;
// The tallest panel of the outer form (24 accumulators of one vector).
inline constexpr int64_t kMaxPanelRows = 24;
// Query vectors per column panel of the outer form.
inline constexpr int kPanelVectorsAvx512 = 4;

// The outer form takes up to this many query rows past its last whole vector as dot products.
inline constexpr int64_t kMaxRemainderRows = 4;

// The outer form's scratch for n query rows: two copied panel blocks, the accumulator tile, and
// the remainder rows' partial sums.
inline constexpr int64_t KernelScratchFloats(int64_t n) {
  return kMaxPanelRows * (2 * kBlockK + (n + 15) / 16 * 16 + kMaxRemainderRows * 16);
}

void GemmDotAvx2(int64_t m, int64_t n, int64_t k, const float* a, int64_t lda, const float* b,
                 float* c, int64_t ldc);
void GemmDotAvx2(int64_t m, int64_t n, int64_t k, const uint16_t* a, int64_t lda,
                 const float* b, float* c, int64_t ldc);
void GemmDotAvx512(int64_t m, int64_t n, int64_t k, const float* a, int64_t lda, const float* b,
                   float* c, int64_t ldc);
void GemmDotAvx512(int64_t m, int64_t n, int64_t k, const uint16_t* a, int64_t lda,
                   const float* b, float* c, int64_t ldc);
void GemmOuterAvx512(int64_t m, int64_t n, int64_t k, const float* a, int64_t lda,
                     const float* bt, int64_t rem, float* c, int64_t ldc, float* scratch);
void GemmOuterAvx512(int64_t m, int64_t n, int64_t k, const uint16_t* a, int64_t lda,
                     const float* bt, int64_t rem, float* c, int64_t ldc, float* scratch);

}  // namespace streaming_gemm_internal
}  // namespace scanserve
