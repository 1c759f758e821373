// The streaming GEMM's per-ISA kernels (streaming_gemm_avx2.cc, streaming_gemm_avx512.cc), behind
// plain declarations. Those two files are compiled with their ISA's flags and include nothing but
// intrinsics: an inline function from a shared header compiled there could be the copy the linker
// keeps for the whole program, and then run on a CPU without the ISA.
//
// Each computes C (m x n, row stride ldc) = A (m x k, row stride lda) · Bᵀ, where `b` holds the n
// query rows packed by StreamingGemmQueries::Pack (row stride k) and k is a multiple of 32; one
// overload per stored row type.
#pragma once

#include <cstdint>

namespace scanserve {
namespace streaming_gemm_internal {

void GemmAvx2(int64_t m, int64_t n, int64_t k, const float* a, int64_t lda, const float* b,
              float* c, int64_t ldc);
void GemmAvx2(int64_t m, int64_t n, int64_t k, const uint16_t* a, int64_t lda, const float* b,
              float* c, int64_t ldc);
void GemmAvx512(int64_t m, int64_t n, int64_t k, const float* a, int64_t lda, const float* b,
                float* c, int64_t ldc);
void GemmAvx512(int64_t m, int64_t n, int64_t k, const uint16_t* a, int64_t lda, const float* b,
                float* c, int64_t ldc);

}  // namespace streaming_gemm_internal
}  // namespace scanserve
