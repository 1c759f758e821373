// AVX-512 streaming GEMM kernels (streaming_gemm_kernels.h), both forms. Compiled with -mavx512f;
// called only where the CPU has it (streaming_gemm.cc).
// GCC 12's AVX-512 headers initialise their "undefined" operands from themselves, which
// -Wuninitialized reports once per inlined intrinsic.
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#include <cstdint>

#include "engine/scoring/streaming_gemm_dot_tiles.h"
#include "engine/scoring/streaming_gemm_kernels.h"
#include "engine/scoring/streaming_gemm_outer_tiles.h"

namespace scanserve {
namespace streaming_gemm_internal {
namespace {

struct V512 {
  using Reg = __m512;
  static constexpr int kLanes = 16;
  static Reg Zero() { return _mm512_setzero_ps(); }
  static Reg Load(const float* p) { return _mm512_loadu_ps(p); }
  static void Store(float* p, Reg v) { _mm512_storeu_ps(p, v); }
  // Folded into the FMA as an embedded {1to16} broadcast operand.
  static Reg Broadcast(const float* p) { return _mm512_set1_ps(*p); }
  static Reg Fma(Reg a, Reg b, Reg acc) { return _mm512_fmadd_ps(a, b, acc); }
  static void Prefetch(const void* p) { _mm_prefetch(static_cast<const char*>(p), _MM_HINT_T0); }
  static float Sum(Reg v) { return _mm512_reduce_add_ps(v); }
  // 16 little-endian pairs: the even element is the low half, the odd one the high half.
  static void LoadPairs(const uint16_t* p, Reg* even, Reg* odd) {
    const __m512i pairs = _mm512_loadu_si512(p);
    *even = _mm512_castsi512_ps(_mm512_slli_epi32(pairs, 16));
    *odd = _mm512_castsi512_ps(_mm512_and_si512(pairs, _mm512_set1_epi32(~0xffff)));
  }
  static Reg Widen(const uint16_t* p) {
    const __m256i bf16 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(bf16), 16));
  }
};

// The outer form: 24 accumulators of the 32 registers, plus up to 4 query vectors.
constexpr int kOuterAccumulators = 24;
static_assert(kOuterAccumulators <= kMaxPanelRows, "the callers size scratch by kMaxPanelRows");

}  // namespace

// fp32: 4 stored rows x 6 query rows (24 accumulators + 4 stored vectors + 1 query vector of the
// 32 registers; measured faster than 6 x 4).
void GemmDotAvx512(int64_t m, int64_t n, int64_t k, const float* a, int64_t lda, const float* b,
                   float* c, int64_t ldc) {
  dot::Gemm<V512, 4, 6>(m, n, k, a, lda, b, c, ldc);
}

// bf16: 4 x 4 accumulators + 4 x (even, odd) + 2 query vectors.
void GemmDotAvx512(int64_t m, int64_t n, int64_t k, const uint16_t* a, int64_t lda,
                   const float* b, float* c, int64_t ldc) {
  dot::Gemm<V512, 4, 4>(m, n, k, a, lda, b, c, ldc);
}

void GemmOuterAvx512(int64_t m, int64_t n, int64_t k, const float* a, int64_t lda,
                     const float* bt, int64_t rem, float* c, int64_t ldc, float* scratch) {
  outer::Gemm<V512, kOuterAccumulators, kPanelVectorsAvx512>(m, n, k, a, lda, bt, rem, c, ldc,
                                                             scratch);
}

void GemmOuterAvx512(int64_t m, int64_t n, int64_t k, const uint16_t* a, int64_t lda,
                     const float* bt, int64_t rem, float* c, int64_t ldc, float* scratch) {
  outer::Gemm<V512, kOuterAccumulators, kPanelVectorsAvx512>(m, n, k, a, lda, bt, rem, c, ldc,
                                                             scratch);
}

}  // namespace streaming_gemm_internal
}  // namespace scanserve
