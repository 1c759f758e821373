// AVX2 + FMA streaming GEMM kernels (streaming_gemm_kernels.h). Compiled with -mavx2 -mfma; called
// only where the CPU has them (streaming_gemm.cc).
#include <immintrin.h>

#include <cstdint>

#include "engine/scoring/streaming_gemm_kernels.h"
#include "engine/scoring/streaming_gemm_dot_tiles.h"

namespace scanserve {
namespace streaming_gemm_internal {
namespace {

struct V256 {
  using Reg = __m256;
  static constexpr int kLanes = 8;
  static Reg Zero() { return _mm256_setzero_ps(); }
  static Reg Load(const float* p) { return _mm256_loadu_ps(p); }
  static Reg Fma(Reg a, Reg b, Reg acc) { return _mm256_fmadd_ps(a, b, acc); }
  static void Prefetch(const void* p) { _mm_prefetch(static_cast<const char*>(p), _MM_HINT_T0); }
  static float Sum(Reg v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
  }
  static void LoadPairs(const uint16_t* p, Reg* even, Reg* odd) {
    const __m256i pairs = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
    *even = _mm256_castsi256_ps(_mm256_slli_epi32(pairs, 16));
    *odd = _mm256_castsi256_ps(_mm256_and_si256(pairs, _mm256_set1_epi32(~0xffff)));
  }
};

}  // namespace

// Only the dot form: the outer form's register tile needs more than AVX2's 16 registers (with 12
// accumulators it was measured slower than this for fp32 rows).

// fp32: 3 x 4 accumulators + 3 stored vectors + 1 query vector of the 16 registers.
void GemmDotAvx2(int64_t m, int64_t n, int64_t k, const float* a, int64_t lda, const float* b,
              float* c, int64_t ldc) {
  dot::Gemm<V256, 3, 4>(m, n, k, a, lda, b, c, ldc);
}

// bf16: 2 x 4 accumulators + 2 x (even, odd) + 2 query vectors.
void GemmDotAvx2(int64_t m, int64_t n, int64_t k, const uint16_t* a, int64_t lda, const float* b,
              float* c, int64_t ldc) {
  dot::Gemm<V256, 2, 4>(m, n, k, a, lda, b, c, ldc);
}

}  // namespace streaming_gemm_internal
}  // namespace scanserve
