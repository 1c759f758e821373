// The streaming GEMM's dot-product form, written once for any vector width: register tiles of MR
// stored rows x NR query rows, each accumulator holding kLanes partial sums of one (stored, query)
// product along k, summed at the end. Per kLanes k: MR + NR loads for MR * NR FMAs, and the query
// rows are read again for every MR stored rows. It reads the stored rows in place (no copy), and
// widens bf16 rows 2 * kLanes values per load for all NR query rows: the form the kernels use
// for bf16 rows and few query rows, and wherever the outer-product form
// (streaming_gemm_outer_tiles.h) does not run. Included only by the per-ISA
// kernel files, each with its own vector type `V` from an anonymous namespace, so every
// instantiation is local to its file and compiled for its ISA. No standard headers beyond
// <cstdint>'s types, which bring no inline functions: see streaming_gemm_kernels.h.
//
// V provides: type `Reg`, kLanes, Zero(), Load(const float*), Fma(a, b, acc) = a * b + acc,
// Prefetch(const void*) (into L1), Sum(Reg) -> float, and LoadPairs(const uint16_t*, Reg* even,
// Reg* odd), which reads 2 * kLanes bf16 values and widens the even-indexed ones into `even` and
// the odd-indexed ones into `odd`.
#pragma once

#include <cstdint>

namespace scanserve {
namespace streaming_gemm_internal {
namespace dot {

template <int N>
struct Cols {
  static constexpr int kValue = N;
};

template <typename V, int MR, int NR>
inline void ZeroAll(typename V::Reg (&acc)[MR][NR]) {
#pragma GCC unroll 8
  for (int i = 0; i < MR; ++i) {
#pragma GCC unroll 8
    for (int j = 0; j < NR; ++j) acc[i][j] = V::Zero();
  }
}

template <typename V, int MR, int NR>
inline void StoreSums(typename V::Reg (&acc)[MR][NR], float* c, int64_t ldc) {
#pragma GCC unroll 8
  for (int i = 0; i < MR; ++i) {
#pragma GCC unroll 8
    for (int j = 0; j < NR; ++j) c[i * ldc + j] = V::Sum(acc[i][j]);
  }
}

// The first tile of a panel also prefetches the rows of a later panel, `next`.
template <typename V, int MR, bool kPrefetch, typename T>
inline void PrefetchRows(const T* next, int64_t lda, int64_t kk) {
  if constexpr (kPrefetch) {
#pragma GCC unroll 8
    for (int i = 0; i < MR; ++i) V::Prefetch(next + i * lda + kk);
  }
}

// A tile: MR stored rows x NR query rows (b: NR packed rows of k values). Each accumulator holds
// kLanes partial sums of one product, summed at the end. Per kLanes k: MR + NR loads for MR * NR
// FMAs; after the first column tile the panel's stored rows come from L1.
template <typename V, int MR, int NR, bool kPrefetch>
inline void Tile(int64_t k, const float* a, int64_t lda, const float* b, float* c, int64_t ldc,
                 const float* next) {
  typename V::Reg acc[MR][NR];
  ZeroAll<V>(acc);
  for (int64_t kk = 0; kk < k; kk += V::kLanes) {
    typename V::Reg av[MR];
#pragma GCC unroll 8
    for (int i = 0; i < MR; ++i) av[i] = V::Load(a + i * lda + kk);
    PrefetchRows<V, MR, kPrefetch>(next, lda, kk);
#pragma GCC unroll 8
    for (int j = 0; j < NR; ++j) {
      const typename V::Reg bv = V::Load(b + j * k + kk);
#pragma GCC unroll 8
      for (int i = 0; i < MR; ++i) acc[i][j] = V::Fma(av[i], bv, acc[i][j]);
    }
  }
  StoreSums<V>(acc, c, ldc);
}

// bf16 stored rows, 2 * kLanes k per step, widened as loaded (exactly). The query rows were
// packed even-then-odd per 2 * kLanes values to match (StreamingGemmQueries::Pack).
template <typename V, int MR, int NR, bool kPrefetch>
inline void Tile(int64_t k, const uint16_t* a, int64_t lda, const float* b, float* c,
                 int64_t ldc, const uint16_t* next) {
  typename V::Reg acc[MR][NR];
  ZeroAll<V>(acc);
  for (int64_t kk = 0; kk < k; kk += 2 * V::kLanes) {
    typename V::Reg even[MR], odd[MR];
#pragma GCC unroll 8
    for (int i = 0; i < MR; ++i) V::LoadPairs(a + i * lda + kk, &even[i], &odd[i]);
    PrefetchRows<V, MR, kPrefetch>(next, lda, kk);
#pragma GCC unroll 8
    for (int j = 0; j < NR; ++j) {
      const typename V::Reg be = V::Load(b + j * k + kk);
      const typename V::Reg bo = V::Load(b + j * k + kk + V::kLanes);
#pragma GCC unroll 8
      for (int i = 0; i < MR; ++i) {
        acc[i][j] = V::Fma(even[i], be, acc[i][j]);
        acc[i][j] = V::Fma(odd[i], bo, acc[i][j]);
      }
    }
  }
  StoreSums<V>(acc, c, ldc);
}

// One panel of MR stored rows against all n query rows, NR at a time. The first tile reads the
// panel from memory and prefetches a later panel's rows (`next`, MR rows from `next`; a k step is
// at most one cache line per row), so that panel finds its rows in cache.
template <typename V, int MR, int NR, typename T>
inline void Panel(int64_t n, int64_t k, const T* a, int64_t lda, const float* b, float* c,
                  int64_t ldc, const T* next) {
  auto tile = [&](auto nr, int64_t j) {
    constexpr int kCols = decltype(nr)::kValue;
    if (j == 0) {
      Tile<V, MR, kCols, true>(k, a, lda, b, c, ldc, next);
    } else {
      Tile<V, MR, kCols, false>(k, a, lda, b + j * k, c + j, ldc, next);
    }
  };
  int64_t j = 0;
  for (; j + NR <= n; j += NR) tile(Cols<NR>(), j);
  switch (n - j) {
    case 5: if constexpr (NR > 5) tile(Cols<5>(), j); break;
    case 4: if constexpr (NR > 4) tile(Cols<4>(), j); break;
    case 3: if constexpr (NR > 3) tile(Cols<3>(), j); break;
    case 2: if constexpr (NR > 2) tile(Cols<2>(), j); break;
    case 1: if constexpr (NR > 1) tile(Cols<1>(), j); break;
    default: break;
  }
}

// Panels of MR stored rows, then the m % MR rows left.
template <typename V, int MR, int NR, typename T>
inline void Gemm(int64_t m, int64_t n, int64_t k, const T* a, int64_t lda, const float* b,
                 float* c, int64_t ldc) {
  static_assert(MR >= 1 && MR <= 6 && NR >= 1 && NR <= 6, "tiles of 1 to 6 rows and columns");
  int64_t i = 0;
  for (; i + MR <= m; i += MR) {
    // Four panels ahead (16-64 KB: measured a little faster than one or two on a 2-core Xeon),
    // or this panel's own rows near the end (never past the block).
    const T* next = i + 5 * MR <= m ? a + (i + 4 * MR) * lda : a + i * lda;
    Panel<V, MR, NR>(n, k, a + i * lda, lda, b, c + i * ldc, ldc, next);
  }
  const T* ar = a + i * lda;
  float* cr = c + i * ldc;
  switch (m - i) {
    case 5: if constexpr (MR > 5) Panel<V, 5, NR>(n, k, ar, lda, b, cr, ldc, ar); break;
    case 4: if constexpr (MR > 4) Panel<V, 4, NR>(n, k, ar, lda, b, cr, ldc, ar); break;
    case 3: if constexpr (MR > 3) Panel<V, 3, NR>(n, k, ar, lda, b, cr, ldc, ar); break;
    case 2: if constexpr (MR > 2) Panel<V, 2, NR>(n, k, ar, lda, b, cr, ldc, ar); break;
    case 1: if constexpr (MR > 1) Panel<V, 1, NR>(n, k, ar, lda, b, cr, ldc, ar); break;
    default: break;
  }
}

}  // namespace dot
}  // namespace streaming_gemm_internal
}  // namespace scanserve
