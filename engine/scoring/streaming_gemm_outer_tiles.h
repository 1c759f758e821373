// The streaming GEMM's outer-product form, written once for any vector width: register tiles of
// MR stored rows x NV query vectors (NV * kLanes query rows), each accumulator holding one stored
// row's products with kLanes query rows, as in a BLAS micro-kernel. Per k: NV query loads and MR
// broadcasts feed MR * NV FMAs, so the query rows are read once per MR = 24 / NV stored rows,
// where the dot-product form (streaming_gemm_dot_tiles.h) reads them per 4. (On a 2-core AVX-512
// Xeon, fp32 rows: 15-45% faster than the dot form at every width, a lone caption at the memory's
// speed; bf16 rows: no faster below 32 query rows. See ChooseStreamingGemmForm.) A pass whose
// last 1-4 query rows would start a vector of their own takes them as dot products instead
// (DotRemainder). Included only by the per-ISA kernel files, each with its own vector type `V`
// from an anonymous namespace, so every instantiation is local to its file and compiled for its
// ISA. No standard headers beyond <cstdint>'s types, which bring no inline functions: see
// streaming_gemm_kernels.h.
//
// V provides: type `Reg`, kLanes, Zero(), Load(const float*), Store(float*, Reg), Sum(Reg),
// Broadcast(const float*) (one value in every lane), Fma(a, b, acc) = a * b + acc,
// Widen(const uint16_t*) (kLanes bf16 values as fp32, exactly), Prefetch(const void*) (into L1).
//
// Stored rows lie 4 KB apart (1024 fp32 values), so the same k of MR rows falls in one L1 set:
// broadcasting from them in place would evict each other. A panel's rows are therefore copied
// (bf16 widened) k block by k block into a small dense buffer that stays in L1, the next block
// while the FMAs run on this one (its rows read one after another, each prefetched a block
// earlier).
#pragma once

#include <cstdint>

#include "engine/scoring/streaming_gemm_kernels.h"

namespace scanserve {
namespace streaming_gemm_internal {
namespace outer {

inline constexpr int64_t Min(int64_t x, int64_t y) { return x < y ? x : y; }

// A stored panel's k block to copy into an L1 buffer: rows [0, rows) of `a` (row stride lda),
// values [0, kc), as fp32 at row stride kBlockK; the buffer's rows past `rows` become zero.
// Packing a row also prefetches that row of the block after (`after`, `after_rows` rows of
// `after_kc` values, row stride lda): one row's lines at a time, a block ahead. (Measured faster
// than prefetching whole blocks into L2 at once, or not at all.)
template <typename T>
struct PackJob {
  const T* a = nullptr;  // nullptr: nothing to pack
  int64_t lda = 0;
  int64_t rows = 0;
  int64_t kc = 0;
  float* buf = nullptr;
  const T* after = nullptr;  // nullptr: nothing after
  int64_t after_rows = 0;
  int64_t after_kc = 0;
};

template <typename V>
inline typename V::Reg LoadStored(const float* p) { return V::Load(p); }
template <typename V>
inline typename V::Reg LoadStored(const uint16_t* p) { return V::Widen(p); }

// Rows [r0, r1) of the job's panel, each whole: consecutive lines of one row at a time.
template <typename V, typename T>
inline void PackRows(const PackJob<T>& job, int64_t r0, int64_t r1) {
  for (int64_t i = r0; i < r1; ++i) {
    float* dst = job.buf + i * kBlockK;
    if (job.after != nullptr && i < job.after_rows) {
      constexpr int64_t kPerLine = 64 / static_cast<int64_t>(sizeof(T));
      const T* row = job.after + i * job.lda;
      for (int64_t kk = 0; kk < job.after_kc; kk += kPerLine) V::Prefetch(row + kk);
    }
    if (i < job.rows) {
      const T* src = job.a + i * job.lda;
      for (int64_t kk = 0; kk < job.kc; kk += V::kLanes) {
        V::Store(dst + kk, LoadStored<V>(src + kk));
      }
    } else {
      for (int64_t kk = 0; kk < job.kc; kk += V::kLanes) V::Store(dst + kk, V::Zero());
    }
  }
}

// acc (MR x NV vectors, in `tile`, row stride ldt) += the packed panel's kc values times the
// query block bt (kc rows of w = NV * kLanes values, k-major); `first` starts from zero.
// After each chunk of kLanes k it packs a share of the next block's rows (`next`, may be empty):
// those loads, from L2 or memory, then overlap the FMAs instead of stalling them.
template <typename V, int MR, int NV, typename T>
inline void MicroTile(int64_t kc, const float* buf, const float* bt, float* tile, int64_t ldt,
                      bool first, const PackJob<T>& next) {
  constexpr int64_t kWidth = NV * V::kLanes;
  typename V::Reg acc[MR][NV];
#pragma GCC unroll 32
  for (int i = 0; i < MR; ++i) {
#pragma GCC unroll 4
    for (int j = 0; j < NV; ++j) {
      acc[i][j] = first ? V::Zero() : V::Load(tile + i * ldt + j * V::kLanes);
    }
  }
  const int64_t chunks = kc / V::kLanes;
  const int64_t rows_per_chunk = (MR + chunks - 1) / chunks;
  for (int64_t chunk = 0; chunk < chunks; ++chunk) {
    for (int64_t kk = chunk * V::kLanes; kk < (chunk + 1) * V::kLanes; ++kk) {
      typename V::Reg bv[NV];
#pragma GCC unroll 4
      for (int j = 0; j < NV; ++j) bv[j] = V::Load(bt + kk * kWidth + j * V::kLanes);
#pragma GCC unroll 32
      for (int i = 0; i < MR; ++i) {
        const typename V::Reg av = V::Broadcast(buf + i * kBlockK + kk);
#pragma GCC unroll 4
        for (int j = 0; j < NV; ++j) acc[i][j] = V::Fma(av, bv[j], acc[i][j]);
      }
    }
    if (next.a != nullptr) {
      const int64_t r0 = chunk * rows_per_chunk;
      PackRows<V>(next, Min(r0, MR), Min(r0 + rows_per_chunk, MR));
    }
  }
#pragma GCC unroll 32
  for (int i = 0; i < MR; ++i) {
#pragma GCC unroll 4
    for (int j = 0; j < NV; ++j) V::Store(tile + i * ldt + j * V::kLanes, acc[i][j]);
  }
}

// The last R (1..kMaxRemainderRows) query rows of a pass whose other rows fill whole vectors, as
// dot products along k on the packed panel (already in L1): R FMAs per stored row and kLanes k
// instead of the kLanes of one more, mostly empty, query vector. G stored rows at a time; rtile
// holds each (stored row, query row)'s kLanes partial sums across the k blocks.
template <typename V, int MR, int R>
inline void DotRemainder(int64_t kc, const float* buf, const float* brem, int64_t ldb,
                         float* rtile, bool first) {
  constexpr int G = 2;
  static_assert(MR % G == 0, "panels of whole row groups");
  for (int g = 0; g < MR; g += G) {
    typename V::Reg acc[G][R];
#pragma GCC unroll 2
    for (int i = 0; i < G; ++i) {
#pragma GCC unroll 4
      for (int j = 0; j < R; ++j) {
        float* sums = rtile + ((g + i) * kMaxRemainderRows + j) * V::kLanes;
        acc[i][j] = first ? V::Zero() : V::Load(sums);
      }
    }
    for (int64_t kk = 0; kk < kc; kk += V::kLanes) {
      typename V::Reg av[G];
#pragma GCC unroll 2
      for (int i = 0; i < G; ++i) av[i] = V::Load(buf + (g + i) * kBlockK + kk);
#pragma GCC unroll 4
      for (int j = 0; j < R; ++j) {
        const typename V::Reg bv = V::Load(brem + j * ldb + kk);
#pragma GCC unroll 2
        for (int i = 0; i < G; ++i) acc[i][j] = V::Fma(av[i], bv, acc[i][j]);
      }
    }
#pragma GCC unroll 2
    for (int i = 0; i < G; ++i) {
#pragma GCC unroll 4
      for (int j = 0; j < R; ++j) {
        V::Store(rtile + ((g + i) * kMaxRemainderRows + j) * V::kLanes, acc[i][j]);
      }
    }
  }
}

// MicroTile for nv (1..NV) query vectors.
template <typename V, int MR, int NV, typename T>
inline void MicroTileOf(int nv, int64_t kc, const float* buf, const float* bt, float* tile,
                        int64_t ldt, bool first, const PackJob<T>& next) {
  if constexpr (NV > 1) {
    if (nv < NV) return MicroTileOf<V, MR, NV - 1>(nv, kc, buf, bt, tile, ldt, first, next);
  }
  MicroTile<V, MR, NV>(kc, buf, bt, tile, ldt, first, next);
}

// DotRemainder for rem (0..R) query rows.
template <typename V, int MR, int R>
inline void DotRemainderOf(int64_t rem, int64_t kc, const float* buf, const float* brem,
                           int64_t ldb, float* rtile, bool first) {
  if constexpr (R > 0) {
    if (rem < R) return DotRemainderOf<V, MR, R - 1>(rem, kc, buf, brem, ldb, rtile, first);
    DotRemainder<V, MR, R>(kc, buf, brem, ldb, rtile, first);
  }
}

// C (m x n, row stride ldc) = A · Bᵀ with panels of MR stored rows. bt holds the query rows: the
// first n - rem as column panels of up to NV vectors (the last one narrower), each k-major and
// zero-padded to whole vectors, then the last rem rows as rows of k values (rem: 0, or 1 to
// kMaxRemainderRows after at least one whole vector). `scratch`: KernelScratchFloats(n) floats.
template <typename V, int MR, int NV, typename T>
inline void GemmPanels(int64_t m, int64_t n, int64_t k, const T* a, int64_t lda, const float* bt,
                       int64_t rem, float* c, int64_t ldc, float* scratch) {
  const int64_t padded_n = (n - rem + V::kLanes - 1) / V::kLanes * V::kLanes;
  const float* brem = bt + padded_n * k;
  float* bufs[2] = {scratch, scratch + MR * kBlockK};  // the block computed, the one packed
  float* tile = scratch + 2 * MR * kBlockK;
  float* rtile = tile + MR * padded_n;
  // Blocks in the order computed: a panel's k blocks, then the next panel's.
  struct Block {
    int64_t i0, kb;
    Block After(int64_t k) const {
      return kb + kBlockK < k ? Block{i0, kb + kBlockK} : Block{i0 + MR, 0};
    }
  };
  // The job that packs block b into buf, and prefetches the block after it.
  auto job = [&](Block b, float* buf) {
    PackJob<T> j;
    if (b.i0 >= m) return j;
    j.a = a + b.i0 * lda + b.kb;
    j.lda = lda;
    j.rows = Min(m - b.i0, MR);
    j.kc = Min(k - b.kb, kBlockK);
    j.buf = buf;
    const Block after = b.After(k);
    if (after.i0 < m) {
      j.after = a + after.i0 * lda + after.kb;
      j.after_rows = Min(m - after.i0, MR);
      j.after_kc = Min(k - after.kb, kBlockK);
    }
    return j;
  };
  PackRows<V>(job(Block{0, 0}, bufs[0]), 0, MR);
  int cur = 0;
  for (int64_t i0 = 0; i0 < m; i0 += MR) {
    const int64_t rows = Min(m - i0, MR);
    for (int64_t kb = 0; kb < k; kb += kBlockK) {
      const int64_t kc = Min(k - kb, kBlockK);
      const PackJob<T> next = job(Block{i0, kb}.After(k), bufs[1 - cur]);
      const PackJob<T> none;
      const float* panel = bt;
      for (int64_t col = 0; col < padded_n;) {
        const int nv = static_cast<int>(Min((padded_n - col) / V::kLanes, NV));
        const float* block = panel + kb * nv * V::kLanes;
        const PackJob<T>& pack = col == 0 ? next : none;  // packed once, by the first panel
        MicroTileOf<V, MR, NV>(nv, kc, bufs[cur], block, tile + col, padded_n, kb == 0, pack);
        panel += k * nv * V::kLanes;
        col += nv * V::kLanes;
      }
      DotRemainderOf<V, MR, kMaxRemainderRows>(rem, kc, bufs[cur], brem + kb, k, rtile, kb == 0);
      cur = 1 - cur;
    }
    for (int64_t i = 0; i < rows; ++i) {
      float* ci = c + (i0 + i) * ldc;
      for (int64_t j = 0; j < n - rem; ++j) ci[j] = tile[i * padded_n + j];
      for (int64_t j = 0; j < rem; ++j) {
        ci[n - rem + j] = V::Sum(V::Load(rtile + (i * kMaxRemainderRows + j) * V::kLanes));
      }
    }
  }
}

// The widest column panel a pass uses (NV vectors at most, fewer for narrow passes) sets the
// panel height: kAccumulators / nv rows, so that the register tile stays kAccumulators vectors.
template <typename V, int kAccumulators, int NV, typename T>
inline void Gemm(int64_t m, int64_t n, int64_t k, const T* a, int64_t lda, const float* bt,
                 int64_t rem, float* c, int64_t ldc, float* scratch) {
  static_assert(NV >= 1 && NV <= 4, "column panels of 1 to 4 vectors");
  static_assert(kAccumulators <= kMaxPanelRows, "scratch is sized for kMaxPanelRows");
  if constexpr (NV > 1) {
    if ((n - rem + V::kLanes - 1) / V::kLanes < NV) {
      return Gemm<V, kAccumulators, NV - 1>(m, n, k, a, lda, bt, rem, c, ldc, scratch);
    }
  }
  GemmPanels<V, kAccumulators / NV, NV>(m, n, k, a, lda, bt, rem, c, ldc, scratch);
}

}  // namespace outer
}  // namespace streaming_gemm_internal
}  // namespace scanserve
