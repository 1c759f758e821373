// Device kernels of the CUDA scoring backend; see scan_kernels.h for the layouts and
// engine/scoring/cpu_scorer.cc for the CPU epilogue these mirror step by step.
#include "engine/scoring/cuda/scan_kernels.h"

#include "engine/common/fp8_e4m3.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>
#include <cuda_pipeline.h>
#include <cuda_runtime.h>
#include <mma.h>

#include <algorithm>
#include <cmath>
#include <cstdint>

namespace scanserve {
namespace cuda_kernels {
namespace {

// The reference code's constants (scan-model.md), as in cpu_scorer.cc.
constexpr float kL2NormEps = 1e-8f;  // l2norm: ADDED to the norm
constexpr float kCosineEps = 1e-8f;  // cosine_similarity: CLAMPS |x||y| from below
constexpr float kLeakySlope = 0.1f;  // LeakyReLU in clipped_l2norm / clipped

// RawFeatureNorm and Pooling enumerator values (checked against attention_params.h in
// cuda_scorer_pass.cc).
constexpr int kClippedL2Norm = 0, kL2Norm = 1, kClipped = 2, kNoNorm = 3, kSoftmax = 4;
constexpr int kLogSumExp = 0, kMean = 1, kMax = 2, kSum = 3;
static_assert(kNoNorm == 3 && kSum == 3, "kNoNorm and kSum are the default branches below");

constexpr int kWarp = 32;
constexpr unsigned kFull = 0xffffffffu;
constexpr int kMaxGridY = 65535;  // gridDim.y and gridDim.z limit
constexpr int64_t kMaxGridX = (int64_t{1} << 31) - 1;
// Block sizes, also given to __launch_bounds__ so that nvcc keeps each kernel's registers within
// what such a block may use (a kernel over the limit fails at launch, not at build).
constexpr int kEpilogueMaxWarps = 8;
constexpr int kFusedWarps = 8;
constexpr int kTopKThreads = 1024;

__device__ __forceinline__ uint16_t ToBf16(float f) {
  uint32_t bits = __float_as_uint(f);
  if ((bits & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((bits >> 16) | 0x0040u);
  bits += 0x7fffu + ((bits >> 16) & 1u);
  return static_cast<uint16_t>(bits >> 16);
}
__device__ __forceinline__ float FromBf16(uint16_t h) {
  return __uint_as_float(static_cast<uint32_t>(h) << 16);
}
// Two e4m3 codes (the first in the low byte) times their rows' power-of-two scales, as two bf16
// (the first in the low half): exactly ToBf16(Fp8E4M3ToFloat(code) * scale) for every code and
// scale 2^s, |s| <= kFp8MaxScaleExponent. e4m3 -> fp16 is exact (one cvt for the pair on
// sm_89+), fp16 -> fp32 and the multiply by 2^s are exact, and the product has at most 4
// significant bits, so its bf16 is its top half: no rounding step. A few instructions per value
// where the decode and the rounding take ~20; the fused pass widens every code at every k step.
__device__ __forceinline__ uint32_t Fp8PairToBf16Pair(uint16_t codes, float scale_first,
                                                      float scale_second) {
  const __half2_raw h = __nv_cvt_fp8x2_to_halfraw2(codes, __NV_E4M3);
  const uint32_t a = __float_as_uint(__half2float(__ushort_as_half(h.x)) * scale_first);
  const uint32_t b = __float_as_uint(__half2float(__ushort_as_half(h.y)) * scale_second);
  return (a >> 16) | (b & 0xffff0000u);
}

// Element i (= row * dim + column) of x, as fp32.
__device__ __forceinline__ float Load(const RowsView& x, int64_t dim, int64_t i) {
  switch (x.type) {
    case ElemType::kBFloat16:
      return FromBf16(static_cast<const uint16_t*>(x.values)[i]);
    case ElemType::kFp8E4M3:
      return Fp8E4M3ToFloat(static_cast<const uint8_t*>(x.values)[i]) * x.scales[i / dim];
    default:
      return static_cast<const float*>(x.values)[i];
  }
}
__device__ __forceinline__ float WarpSum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(kFull, v, o);
  return v;
}
__device__ __forceinline__ float Leaky(float x) { return fmaxf(x, x * kLeakySlope); }

int GridFor(int64_t n, int per_block) {
  return static_cast<int>(std::min<int64_t>((n + per_block - 1) / per_block, 65535 * 8));
}

// ---------------------------------------------------------------------------------------------
// Conversions, norms, Gram matrices.

__global__ void FloatToBf16Kernel(const float* src, uint16_t* dst, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n;
       i += int64_t{gridDim.x} * blockDim.x) {
    dst[i] = ToBf16(src[i]);
  }
}

__global__ void SplitKernel(const float* src, uint16_t* hi, uint16_t* lo, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n;
       i += int64_t{gridDim.x} * blockDim.x) {
    const uint16_t h = ToBf16(src[i]);
    hi[i] = h;
    if (lo != nullptr) lo[i] = ToBf16(src[i] - FromBf16(h));
  }
}

// One warp per row: the row's largest magnitude gives its scale, then every value is encoded.
__global__ void FloatToFp8RowsKernel(const float* src, int64_t rows, int64_t dim, uint8_t* codes,
                                     float* scales) {
  const int lane = threadIdx.x % kWarp;
  const int64_t warps = int64_t{gridDim.x} * (blockDim.x / kWarp);
  for (int64_t r = blockIdx.x * int64_t{blockDim.x / kWarp} + threadIdx.x / kWarp; r < rows;
       r += warps) {
    const float* x = src + r * dim;
    float max_abs = 0.0f;
    for (int64_t i = lane; i < dim; i += kWarp) max_abs = fmaxf(max_abs, fabsf(x[i]));
    for (int o = 16; o > 0; o >>= 1) max_abs = fmaxf(max_abs, __shfl_xor_sync(kFull, max_abs, o));
    const int exponent = Fp8RowScaleExponent(max_abs);
    const float inverse = Fp8ScaleOf(-exponent);
    for (int64_t i = lane; i < dim; i += kWarp) codes[r * dim + i] = FloatToFp8E4M3(x[i] * inverse);
    if (lane == 0) scales[r] = Fp8ScaleOf(exponent);
  }
}

// Two values per thread, through the fused pass's conversion (a pair may span two rows).
__global__ void Fp8RowsToBf16Kernel(const uint8_t* codes, const float* scales, int64_t dim,
                                    int64_t n, uint16_t* dst) {
  for (int64_t i = 2 * (blockIdx.x * int64_t{blockDim.x} + threadIdx.x); i < n;
       i += 2 * int64_t{gridDim.x} * blockDim.x) {
    const bool second = i + 1 < n;
    const uint16_t pair = static_cast<uint16_t>(codes[i] | (second ? codes[i + 1] << 8 : 0));
    const uint32_t out =
        Fp8PairToBf16Pair(pair, scales[i / dim], second ? scales[(i + 1) / dim] : 1.0f);
    dst[i] = static_cast<uint16_t>(out);
    if (second) dst[i + 1] = static_cast<uint16_t>(out >> 16);
  }
}

// One warp per row.
__global__ void RowNormsKernel(RowsView x, int64_t rows, int64_t dim, float* out) {
  const int lane = threadIdx.x % kWarp;
  const int64_t warps = int64_t{gridDim.x} * (blockDim.x / kWarp);
  for (int64_t r = blockIdx.x * int64_t{blockDim.x / kWarp} + threadIdx.x / kWarp; r < rows;
       r += warps) {
    float ss = 0.0f;
    for (int64_t i = lane; i < dim; i += kWarp) {
      const float v = Load(x, dim, r * dim + i);
      ss = fmaf(v, v, ss);
    }
    ss = WarpSum(ss);
    if (lane == 0) out[r] = sqrtf(ss);
  }
}

// One block per item, one warp per upper-triangle entry (mirrored).
__global__ void GramsKernel(RowsView x, int64_t dim, const ItemDev* items, float* grams) {
  const ItemDev it = items[blockIdx.x];
  const int lane = threadIdx.x % kWarp;
  const int warps = blockDim.x / kWarp;
  const int64_t n = it.rows;
  const int64_t entries = n * n;
  for (int64_t e = threadIdx.x / kWarp; e < entries; e += warps) {
    const int64_t a = e / n, b = e % n;
    if (b < a) continue;
    const int64_t ra = (it.row_begin + a) * dim, rb = (it.row_begin + b) * dim;
    float s = 0.0f;
    for (int64_t i = lane; i < dim; i += kWarp) s = fmaf(Load(x, dim, ra + i), Load(x, dim, rb + i), s);
    s = WarpSum(s);
    if (lane == 0) {
      grams[it.gram_begin + a * n + b] = s;
      grams[it.gram_begin + b * n + a] = s;
    }
  }
}

// ---------------------------------------------------------------------------------------------
// The fused epilogue.
//
// Per (query, item) pair, one warp, in the attention's own terms (nc context rows, nq attending
// rows; t2i: context = the image's regions, attending = the caption's words):
//  0. stage m[c][q] = <context_c, attending_q> from the product chunk into the warp's scratch
//     (adding the lo part for split bf16 queries), transposing when the stored side attends;
//  1. lane per context row c: the raw_feature_norm scalars over the attending axis (LeakyReLU
//     and l2norm, or the softmax max/sum), folded with λ1 into (scale_c, shift_c);
//  2. lanes per attending row q (one, or 2-4 sharing the context rows when nq <= 16): softmax
//     over c of a[c][q] (recomputed from m and the scalars), <y_q, att_q> = Σ_c w_c m[c][q],
//     |att_q|² = wᵀ G w from the context's Gram matrix (upper triangle), r_q = the clamped
//     cosine, folded straight into the pooling accumulator;
//  3. warp reduction of the pooling; lane 0 writes the score.
// Scratch per warp: m (nc x ldm, ldm = nq rounded up to odd: conflict-free column access), the
// scalars (2 x nc), and the softmax numerators e (nc x 32, one column per attending row in flight).

__device__ __forceinline__ float Attn(int norm, float v, float scale, float shift) {
  switch (norm) {
    case kClippedL2Norm:
    case kClipped:
      return Leaky(v) * scale;
    case kSoftmax:
      return expf(v - shift) * scale;
    default:  // kL2Norm, kNoNorm
      return v * scale;
  }
}

// The epilogue of one (query j, chunk item i) pair, by one warp: `prod` points at the product of
// the item's first row and the query's first row, rows ld_product apart, the lo parts lo_offset
// further; `buf` is the warp's scratch. Lane 0 writes the score.
__device__ void ScorePair(const EpilogueParams& p, int i, int j, const float* prod,
                          int64_t ld_product, int64_t lo_offset, float* buf, int lane) {
  const float lambda = p.lambda_softmax;
  const float inf = INFINITY;
  const ItemDev it = p.items[p.item_begin + i];
  const ItemDev qu = p.queries[j];
  const int nc = p.stored_is_context ? it.rows : qu.rows;
  const int nq = p.stored_is_context ? qu.rows : it.rows;
  const int ldm = nq | 1;
  float* m = buf;
  float* scale = m + int64_t{nc} * ldm;
  float* shift = scale + nc;
  float* e = shift + nc;
  const float* gram = p.stored_is_context ? p.stored_grams + it.gram_begin
                                          : p.query_grams + qu.gram_begin;
  const float* ynorm = p.stored_is_context ? p.query_norms + qu.row_begin
                                           : p.stored_norms + it.row_begin;

  // 0. Stage the pair's products; consecutive lanes read consecutive query rows (coalesced).
  const int total = it.rows * qu.rows;
  for (int idx = lane; idx < total; idx += kWarp) {
    const int r = idx / qu.rows;
    const int qq = idx - r * qu.rows;
    const float* src = prod + int64_t{r} * ld_product + qq;
    float v = src[0];
    if (lo_offset != 0) v += src[lo_offset];
    if (p.stored_is_context) {
      m[int64_t{r} * ldm + qq] = v;
    } else {
      m[int64_t{qq} * ldm + r] = v;
    }
  }
  __syncwarp();

  // 1. Row scalars, lane per context row.
  for (int c = lane; c < nc; c += kWarp) {
    const float* mr = m + int64_t{c} * ldm;
    float s = lambda, t = 0.0f;
    if (p.raw_feature_norm == kClippedL2Norm || p.raw_feature_norm == kL2Norm) {
      const bool clip = p.raw_feature_norm == kClippedL2Norm;
      float ss = 0.0f;
      for (int q = 0; q < nq; ++q) {
        const float v = clip ? Leaky(mr[q]) : mr[q];
        ss = fmaf(v, v, ss);
      }
      s = lambda / (sqrtf(ss) + kL2NormEps);
    } else if (p.raw_feature_norm == kSoftmax) {
      float mx = -inf;
      for (int q = 0; q < nq; ++q) mx = fmaxf(mx, mr[q]);
      float sum = 0.0f;
      for (int q = 0; q < nq; ++q) sum += expf(mr[q] - mx);
      s = lambda / sum;
      t = mx;
    }
    scale[c] = s;
    shift[c] = t;
  }
  __syncwarp();

  // 2. Attending rows over the lanes, `span` rows at a time (a power of two >= nq, at least 8):
  //    when they are fewer than 32 (t2i's captions, mostly), the `parts` = 32 / span lanes of a
  //    row share its context rows (c ≡ part mod parts) and combine their partial max, sums and
  //    quadratic form with shuffles, instead of leaving lanes idle. Pooling accumulators per
  //    lane, on the part-0 lanes only.
  const int span = nq <= 8 ? 8 : (nq <= 16 ? 16 : kWarp);
  const int parts = kWarp / span;
  const int part = lane / span;
  const int col = lane % span;  // the row's column of e, shared by its parts
  float pool_a = p.pooling == kLogSumExp || p.pooling == kMax ? -inf : 0.0f;  // max or sum
  float pool_b = 0.0f;                                                       // LSE sum
  for (int q0 = 0; q0 < nq; q0 += span) {
    const int q = q0 + col;
    const bool active = q < nq;
    float mx = -inf;
    if (active) {
      for (int c = part; c < nc; c += parts) {
        mx = fmaxf(mx, Attn(p.raw_feature_norm, m[int64_t{c} * ldm + q], scale[c], shift[c]));
      }
    }
    for (int o = span; o < kWarp; o <<= 1) mx = fmaxf(mx, __shfl_xor_sync(kFull, mx, o));
    float sum = 0.0f, dot = 0.0f;
    if (active) {
      for (int c = part; c < nc; c += parts) {
        const float mv = m[int64_t{c} * ldm + q];
        const float ex = expf(Attn(p.raw_feature_norm, mv, scale[c], shift[c]) - mx);
        e[int64_t{c} * kWarp + col] = ex;
        sum += ex;
        dot = fmaf(ex, mv, dot);
      }
    }
    for (int o = span; o < kWarp; o <<= 1) {
      sum += __shfl_xor_sync(kFull, sum, o);
      dot += __shfl_xor_sync(kFull, dot, o);
    }
    __syncwarp();  // every part's e values written
    // eᵀ G e over the upper triangle: Σ_c e_c (G_cc e_c / 2 + Σ_{c' > c} G_cc' e_c'), doubled.
    float quad = 0.0f;
    if (active) {
      for (int c = part; c < nc; c += parts) {
        const float* g = gram + int64_t{c} * nc;
        const float ec = e[int64_t{c} * kWarp + col];
        float t = 0.5f * g[c] * ec;
        for (int c2 = c + 1; c2 < nc; ++c2) t = fmaf(g[c2], e[int64_t{c2} * kWarp + col], t);
        quad = fmaf(ec, t, quad);
      }
    }
    for (int o = span; o < kWarp; o <<= 1) quad += __shfl_xor_sync(kFull, quad, o);
    __syncwarp();  // e is rewritten for the next rows
    if (!active || part != 0) continue;
    const float inv = 1.0f / sum;
    const float num = dot * inv;
    const float att_norm = sqrtf(fmaxf(quad + quad, 0.0f)) * inv;
    const float den = fmaxf(ynorm[q] * att_norm, kCosineEps);
    const float r = num / den;
    switch (p.pooling) {
      case kLogSumExp: {  // online log-sum-exp of λ2 r
        const float v = p.lambda_lse * r;
        if (v > pool_a) {
          pool_b = pool_b * expf(pool_a - v) + 1.0f;
          pool_a = v;
        } else {
          pool_b += expf(v - pool_a);
        }
        break;
      }
      case kMax:
        pool_a = fmaxf(pool_a, r);
        break;
      default:  // kMean, kSum
        pool_a += r;
        break;
    }
  }

  // 3. Reduce over the lanes.
  for (int o = 16; o > 0; o >>= 1) {
    const float a2 = __shfl_xor_sync(kFull, pool_a, o);
    const float b2 = __shfl_xor_sync(kFull, pool_b, o);
    if (p.pooling == kLogSumExp) {
      const float mx = fmaxf(pool_a, a2);
      if (mx != -inf) {
        pool_b = (pool_b == 0.0f ? 0.0f : pool_b * expf(pool_a - mx)) +
                 (b2 == 0.0f ? 0.0f : b2 * expf(a2 - mx));
        pool_a = mx;
      }
    } else if (p.pooling == kMax) {
      pool_a = fmaxf(pool_a, a2);
    } else {
      pool_a += a2;
    }
  }
  if (lane == 0) {
    float score = pool_a;
    if (p.pooling == kLogSumExp) score = (pool_a + logf(pool_b)) / p.lambda_lse;
    if (p.pooling == kMean) score = pool_a / static_cast<float>(nq);
    p.scores[int64_t{j} * p.ld_scores + p.col0 + i] = score;
  }
  __syncwarp();  // the next pair reuses the scratch
}

__global__ void __launch_bounds__(kEpilogueMaxWarps * kWarp)
    EpilogueKernel(EpilogueParams p, int warps_per_block, int64_t warp_floats,
                   float* global_scratch) {
  extern __shared__ float shared_scratch[];
  const int lane = threadIdx.x % kWarp;
  const int warp = threadIdx.x / kWarp;
  float* buf = global_scratch != nullptr
                   ? global_scratch + (int64_t{blockIdx.x} * warps_per_block + warp) * warp_floats
                   : shared_scratch + warp * warp_floats;
  const int64_t pairs = int64_t{p.num_items} * p.num_queries;
  for (int64_t pair = int64_t{blockIdx.x} * warps_per_block + warp; pair < pairs;
       pair += int64_t{gridDim.x} * warps_per_block) {
    const int i = static_cast<int>(pair / p.num_queries);  // item within the chunk
    const int j = static_cast<int>(pair % p.num_queries);  // query
    const int64_t item_row = p.items[p.item_begin + i].row_begin - p.chunk_row0;
    const float* prod = p.product + item_row * p.ld_product + p.queries[j].row_begin;
    ScorePair(p, i, j, prod, p.ld_product, p.lo_offset, buf, lane);
  }
}

// ---------------------------------------------------------------------------------------------
// The fused pass: products on the tensor cores straight into shared memory, then the epilogue
// from there; no product matrix in device memory.
//
// Block x = tile * groups + group, over every slab's row tiles (one launch per pass; a block finds
// its tile's slab by binary search over the slab descriptors): a 128 x 128 GEMM tile, the tile's
// stored rows against the group's stacked query rows, k over the embedding in steps of
// kFusedTileK. Each step's slice of both operands (and of the lo rows when the queries are split)
// reaches shared memory by asynchronous copies (cp.async, 16-byte vectors; fp8 codes 8 bytes),
// `stages - 1` steps ahead of the multiplies, so a block keeps several k steps of its tile in
// flight from HBM: at batch 1 the pass is bound by reading the store, and one step in flight per
// block is not enough to cover the memory latency. Staged rows past the tile's or the group's are
// not written: they only reach product rows or columns the epilogue never reads. Split queries
// accumulate A·hi and A·lo into the same fp32 fragments. The groups of one tile are consecutive
// blocks, so a tile is read from HBM about once per pass and from L2 by its other groups; a
// block reuses each staged stored row against 128 (or 256, split) query rows.
// Then the product tile (fp32, kFusedProductLd floats per row) overwrites the staging, and the
// block's epilogue warps score the tile's (item, query) pairs from it.

constexpr int kFusedStageLd = kFusedTileK + 8;  // bf16 per staged row: 16-byte rows, banks spread
constexpr int kFusedProductLd = kFusedMaxGroupRows + 4;
constexpr int kFusedVecsPerRow = kFusedTileK / 8;  // 16-byte vectors of 8 bf16
constexpr int kFusedOperandVecs = kFusedTileRows * kFusedVecsPerRow;
constexpr int kFusedThreads = kFusedWarps * kWarp;
constexpr int kFusedVecsPerThread = 3 * kFusedOperandVecs / kFusedThreads;  // stored, hi, lo
constexpr size_t kFusedProductBytes = size_t{kFusedTileRows} * kFusedProductLd * sizeof(float);
// One k step of the stored rows: bf16 (padded rows), or fp8 codes (no padding: 8-byte reads).
constexpr size_t kFusedSliceBytes = size_t{kFusedTileRows} * kFusedStageLd * 2;
constexpr size_t kFusedCodeSliceBytes = size_t{kFusedTileRows} * kFusedTileK;
// One k step of a query operand (hi or lo) for groups of up to `rows` rows (a multiple of 16).
__host__ __device__ constexpr size_t FusedQuerySliceBytes(int rows) {
  return size_t(rows) * kFusedStageLd * 2;
}
// A pipeline stage: the step's stored slice, then one query slice per query operand (hi, and lo
// when split), each only as tall as the pass's tallest group: a lone caption's 16-32 rows leave
// room for several times the stages of full 128-row groups, hence more of the store in flight at
// batch 1, where the pass is bound by reading it. fp8 adds one bf16 slice, shared by the stages,
// that the codes are widened into before the multiplies.
__host__ __device__ constexpr size_t FusedStageBytes(bool fp8, int query_operands, int query_rows) {
  return (fp8 ? kFusedCodeSliceBytes : kFusedSliceBytes) +
         size_t(query_operands) * FusedQuerySliceBytes(query_rows);
}
// Shared memory for `stages` stages, for either stored type (one plan serves both kernels).
constexpr size_t FusedStagingBytes(int stages, int query_operands, int query_rows) {
  return std::max(stages * FusedStageBytes(false, query_operands, query_rows),
                  kFusedSliceBytes + stages * FusedStageBytes(true, query_operands, query_rows));
}
static_assert(kFusedMaxGroupRows == kFusedTileRows, "the staging treats both operands alike");
static_assert(kFusedWarps == 8, "the warps tile the 128 x 128 block as 4 x 2 of 32 x 64");
static_assert(kFusedOperandVecs % kFusedThreads == 0, "whole operands per register slot");
static_assert(FusedStagingBytes(kFusedMinStages, 2, kFusedMaxGroupRows) <= kFusedProductBytes,
              "the fewest stages fit where the product tile goes");
// Slices start 256-bit aligned for WMMA loads (and 16-byte copies): a query slice of any multiple
// of 16 rows, and the stored slices.
static_assert(kFusedSliceBytes % 32 == 0 && kFusedCodeSliceBytes % 32 == 0 &&
                  FusedQuerySliceBytes(16) % 32 == 0,
              "aligned slices");

struct alignas(16) Vec16 {
  uint32_t w[4];
};
struct alignas(8) Vec8 {  // 8 fp8 codes
  uint32_t w[2];
};
// Copy slot n of a thread in a stage: whole operands per slot (the threads divide an operand's
// vectors), so `which` (0 stored, 1 hi, 2 lo) is a constant once n is unrolled.
struct StageSlot {
  int which, row, vec;
};
__device__ __forceinline__ StageSlot StageSlotOf(int n) {
  const int v = n * kFusedThreads % kFusedOperandVecs + static_cast<int>(threadIdx.x);
  return StageSlot{n * kFusedThreads / kFusedOperandVecs, v / kFusedVecsPerRow,
                   v % kFusedVecsPerRow};
}
// Byte offsets of a slot's vector in its slice: bf16 rows of kFusedStageLd, or fp8 code rows.
__device__ __forceinline__ int Bf16SlotBytes(const StageSlot& t) {
  return (t.row * kFusedStageLd + t.vec * 8) * 2;
}
__device__ __forceinline__ int CodeSlotBytes(const StageSlot& t) {
  return t.row * kFusedTileK + t.vec * 8;
}

// fp8 stored rows are copied as codes (8 bytes per vector, half bf16's traffic) and widened to
// bf16 once they have landed, by the thread that copied them (Fp8PairToBf16Pair, as
// Fp8RowsToBf16).
template <bool kFp8Stored>
__global__ void __launch_bounds__(kFusedThreads, 2)
    FusedScoreKernel(EpilogueParams p, FusedParams f, int64_t first_tile, int epilogue_warps,
                     int64_t warp_floats, int stages, int query_slice_rows) {
  extern __shared__ __align__(128) float fused_shared[];
  const int lane = threadIdx.x % kWarp;
  const int warp = threadIdx.x / kWarp;
  const int64_t tile_index = first_tile + blockIdx.x / f.num_groups;
  const QueryGroupDev g = f.groups[blockIdx.x % f.num_groups];
  // The tile's slab: the last with first_tile <= tile_index.
  int lo_slab = 0, hi_slab = f.num_slabs - 1;
  while (lo_slab < hi_slab) {
    const int mid = (lo_slab + hi_slab + 1) / 2;
    if (f.slabs[mid].first_tile <= tile_index) {
      lo_slab = mid;
    } else {
      hi_slab = mid - 1;
    }
  }
  const RowTileDev tile = f.slabs[lo_slab].tiles[tile_index - f.slabs[lo_slab].first_tile];
  const RowsView stored_rows = f.slabs[lo_slab].stored;
  // Staging: [fp8: the widened slice] then the stages; after the k loop, the product tile and the
  // epilogue scratch.
  constexpr size_t kStoredSliceBytes = kFp8Stored ? kFusedCodeSliceBytes : kFusedSliceBytes;
  auto* widened = reinterpret_cast<__nv_bfloat16*>(fused_shared);
  char* ring = reinterpret_cast<char*>(fused_shared) + (kFp8Stored ? kFusedSliceBytes : 0);
  float* product = fused_shared;  // after the k loop
  float* scratch = fused_shared + kFusedProductBytes / sizeof(float);
  const __nv_bfloat16* hi = f.queries + g.row_begin * f.dim;
  const __nv_bfloat16* lo = f.queries + (f.lo_row_offset + g.row_begin) * f.dim;
  const int operands = f.split ? 3 : 2;
  // Query slices of query_slice_rows rows (>= every group's rows: the plan's).
  const size_t query_slice_bytes = FusedQuerySliceBytes(query_slice_rows);
  const size_t stage_bytes = FusedStageBytes(kFp8Stored, operands - 1, query_slice_rows);
  // Fragments cover whole 16-row blocks: no multiplies past them.
  const int rows_p = (tile.rows + 15) / 16 * 16, cols_p = (g.rows + 15) / 16 * 16;

  // A thread's stored rows are the same at every k step: their fp8 scales are read once.
  constexpr int kStoredSlots = kFusedOperandVecs / kFusedThreads;
  float row_scale[kStoredSlots];
#pragma unroll
  for (int n = 0; n < kStoredSlots; ++n) {
    const StageSlot t = StageSlotOf(n);
    row_scale[n] = kFp8Stored && t.row < tile.rows ? stored_rows.scales[tile.row_begin + t.row] : 1.0f;
  }
  // Issues the copies of k step `step` into its stage, as one commit group (empty past the end,
  // so that every thread counts the same groups).
  const int steps = static_cast<int>(f.dim / kFusedTileK);
  auto issue = [&](int step) {
    if (step < steps) {
      const int64_t k0 = int64_t{step} * kFusedTileK;
      char* stage = ring + static_cast<size_t>(step % stages) * stage_bytes;
#pragma unroll
      for (int n = 0; n < kFusedVecsPerThread; ++n) {
        const StageSlot t = StageSlotOf(n);
        if (t.which == 0 && t.row < tile.rows) {
          const int64_t i = (tile.row_begin + t.row) * f.dim + k0 + t.vec * 8;
          if (kFp8Stored) {
            __pipeline_memcpy_async(stage + CodeSlotBytes(t),
                                    static_cast<const uint8_t*>(stored_rows.values) + i, 8);
          } else {
            __pipeline_memcpy_async(stage + Bf16SlotBytes(t),
                                    static_cast<const __nv_bfloat16*>(stored_rows.values) + i, 16);
          }
        } else if (t.which > 0 && t.which < operands && t.row < g.rows) {
          const __nv_bfloat16* base = t.which == 1 ? hi : lo;
          __pipeline_memcpy_async(
              stage + kStoredSliceBytes + (t.which - 1) * query_slice_bytes + Bf16SlotBytes(t),
              base + int64_t{t.row} * f.dim + k0 + t.vec * 8, 16);
        }
      }
    }
    __pipeline_commit();
  };
  // The codes this thread copied for a stage, widened into the bf16 slice.
  auto widen = [&](const char* stage) {
#pragma unroll
    for (int n = 0; n < kStoredSlots; ++n) {
      const StageSlot t = StageSlotOf(n);
      if (t.row >= tile.rows) continue;
      const Vec8 codes = *reinterpret_cast<const Vec8*>(stage + CodeSlotBytes(t));
      Vec16 x;
#pragma unroll
      for (int e = 0; e < 8; e += 2) {
        const auto pair = static_cast<uint16_t>(codes.w[e / 4] >> (8 * (e % 4)));
        x.w[e / 2] = Fp8PairToBf16Pair(pair, row_scale[n], row_scale[n]);
      }
      *reinterpret_cast<Vec16*>(reinterpret_cast<char*>(widened) + Bf16SlotBytes(t)) = x;
    }
  };

  using namespace nvcuda;
  const int row0 = (warp / 2) * 32, col0 = (warp % 2) * 64;
  wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[2][4];
#pragma unroll
  for (int i = 0; i < 2; ++i) {
#pragma unroll
    for (int j = 0; j < 4; ++j) wmma::fill_fragment(acc[i][j], 0.0f);
  }
  for (int step = 0; step < stages - 1; ++step) issue(step);
  for (int step = 0; step < steps; ++step) {
    __pipeline_wait_prior(stages - 2);  // this thread's copies of this step have landed
    __syncthreads();  // everyone's have, and everyone is done with the stage refilled next
    issue(step + stages - 1);
    const char* stage = ring + static_cast<size_t>(step % stages) * stage_bytes;
    const __nv_bfloat16* a_slice = reinterpret_cast<const __nv_bfloat16*>(stage);
    if (kFp8Stored) {
      widen(stage);
      __syncthreads();
      a_slice = widened;
    }
    const auto* b_slices = reinterpret_cast<const __nv_bfloat16*>(stage + kStoredSliceBytes);
    for (int kk = 0; kk < kFusedTileK; kk += 16) {
#pragma unroll
      for (int i = 0; i < 2; ++i) {
        if (row0 + 16 * i >= rows_p) continue;  // warp-uniform: rows past the tile
        wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::row_major> fa;
        wmma::load_matrix_sync(fa, a_slice + (row0 + 16 * i) * kFusedStageLd + kk, kFusedStageLd);
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          if (col0 + 16 * j >= cols_p) continue;
          for (int part = 1; part < operands; ++part) {
            wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::col_major> fb;
            wmma::load_matrix_sync(
                fb, b_slices + ((part - 1) * query_slice_rows + col0 + 16 * j) * kFusedStageLd + kk,
                kFusedStageLd);
            wmma::mma_sync(acc[i][j], fa, fb, acc[i][j]);
          }
        }
      }
    }
  }
  __pipeline_wait_prior(0);  // only empty groups are left; nothing may land on the products
  __syncthreads();  // the staging is overwritten by the products
#pragma unroll
  for (int i = 0; i < 2; ++i) {
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      if (row0 + 16 * i >= rows_p || col0 + 16 * j >= cols_p) continue;
      wmma::store_matrix_sync(product + (row0 + 16 * i) * kFusedProductLd + col0 + 16 * j,
                              acc[i][j], kFusedProductLd, wmma::mem_row_major);
    }
  }
  __syncthreads();
  if (warp >= epilogue_warps) return;
  // The slab's epilogue inputs, read now rather than kept in registers through the k loop.
  p.items = f.slabs[lo_slab].items;
  p.item_begin = 0;
  p.stored_norms = f.slabs[lo_slab].norms;
  p.stored_grams = f.slabs[lo_slab].grams;
  p.col0 = f.slabs[lo_slab].col0;
  const int pairs = tile.num_items * g.num_queries;
  for (int pair = warp; pair < pairs; pair += epilogue_warps) {
    const int i = tile.item_begin + pair / g.num_queries;  // slab item (p.item_begin is 0)
    const int j = g.first_query + pair % g.num_queries;
    const float* prod = product +
                        (p.items[p.item_begin + i].row_begin - tile.row_begin) * kFusedProductLd +
                        (p.queries[j].row_begin - g.row_begin);
    ScorePair(p, i, j, prod, kFusedProductLd, 0, scratch + warp * warp_floats, lane);
  }
}

// ---------------------------------------------------------------------------------------------
// Top-k: bitonic sort of kTopKTile candidates per block in shared memory, keep the best k.

__device__ __forceinline__ uint64_t Rank(const TopKCand& c) {
  if (!c.valid) return 0;
  float s = c.score;
  if (isnan(s)) return 1;
  if (s == 0.0f) s = 0.0f;  // -0 ranks as +0 (TopKPerRow compares with !=)
  uint32_t b = __float_as_uint(s);
  b = (b & 0x80000000u) ? ~b : (b | 0x80000000u);
  return uint64_t{b} + 2;
}
__device__ __forceinline__ bool Better(const TopKCand& a, const TopKCand& b) {
  const uint64_t ra = Rank(a), rb = Rank(b);
  if (ra != rb) return ra > rb;
  return a.key < b.key;
}

template <bool kFromScores>
__global__ void __launch_bounds__(kTopKThreads)
    TopKKernel(const float* scores, int64_t ld_scores, const int64_t* col_keys,
               const TopKCand* in, int64_t n, int k, TopKCand* out) {
  __shared__ TopKCand s[kTopKTile];
  const int j = blockIdx.y;
  const int64_t base = int64_t{blockIdx.x} * kTopKTile;
  for (int t = threadIdx.x; t < kTopKTile; t += blockDim.x) {
    const int64_t g = base + t;
    TopKCand c;
    c.score = 0.0f;
    c.valid = 0;
    c.key = INT64_MAX;
    if (g < n) {
      if (kFromScores) {
        c.score = scores[int64_t{j} * ld_scores + g];
        c.valid = 1;
        c.key = col_keys[g];
      } else {
        c = in[int64_t{j} * n + g];
      }
    }
    s[t] = c;
  }
  for (int size = 2; size <= kTopKTile; size <<= 1) {
    for (int stride = size / 2; stride > 0; stride >>= 1) {
      __syncthreads();
      for (int i = threadIdx.x; i < kTopKTile / 2; i += blockDim.x) {
        const int pos = 2 * i - (i & (stride - 1));
        const int partner = pos + stride;
        const bool best_first = (pos & size) == 0;
        const TopKCand a = s[pos], b = s[partner];
        if (best_first ? Better(b, a) : Better(a, b)) {
          s[pos] = b;
          s[partner] = a;
        }
      }
    }
  }
  __syncthreads();
  TopKCand* dst = out + (int64_t{j} * gridDim.x + blockIdx.x) * k;
  for (int t = threadIdx.x; t < k; t += blockDim.x) dst[t] = s[t];
}

}  // namespace

cudaError_t FloatToBf16(const float* src, uint16_t* dst, int64_t n, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  FloatToBf16Kernel<<<GridFor(n, 256), 256, 0, stream>>>(src, dst, n);
  return cudaGetLastError();
}

cudaError_t SplitToBf16(const float* src, uint16_t* hi, uint16_t* lo, int64_t n,
                        cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  SplitKernel<<<GridFor(n, 256), 256, 0, stream>>>(src, hi, lo, n);
  return cudaGetLastError();
}

cudaError_t FloatToFp8Rows(const float* src, int64_t rows, int64_t dim, uint8_t* codes,
                           float* scales, cudaStream_t stream) {
  if (rows == 0) return cudaSuccess;
  FloatToFp8RowsKernel<<<GridFor(rows, 8), 256, 0, stream>>>(src, rows, dim, codes, scales);
  return cudaGetLastError();
}

cudaError_t Fp8RowsToBf16(const uint8_t* codes, const float* scales, int64_t rows, int64_t dim,
                          uint16_t* dst, cudaStream_t stream) {
  const int64_t n = rows * dim;
  if (n == 0) return cudaSuccess;
  Fp8RowsToBf16Kernel<<<GridFor((n + 1) / 2, 256), 256, 0, stream>>>(codes, scales, dim, n, dst);
  return cudaGetLastError();
}

cudaError_t RowNorms(RowsView x, int64_t rows, int64_t dim, float* out, cudaStream_t stream) {
  if (rows == 0) return cudaSuccess;
  RowNormsKernel<<<GridFor(rows, 8), 256, 0, stream>>>(x, rows, dim, out);
  return cudaGetLastError();
}

cudaError_t Grams(RowsView x, int64_t dim, const ItemDev* items, int num_items, float* grams,
                  cudaStream_t stream) {
  if (num_items == 0) return cudaSuccess;
  GramsKernel<<<num_items, 256, 0, stream>>>(x, dim, items, grams);
  return cudaGetLastError();
}

namespace {
// Floats of one warp's ScorePair scratch for pairs of up to these context and attending rows.
int64_t EpilogueWarpFloats(int max_context, int max_attending) {
  const int64_t nc = std::max(max_context, 1);
  const int64_t ldm = std::max(max_attending, 1) | 1;
  return nc * ldm + 2 * nc + nc * kWarp;
}
}  // namespace

cudaError_t PlanEpilogue(int device, int max_context, int max_attending, EpiloguePlan* plan) {
  int optin = 0, sms = 0;
  cudaError_t err = cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device);
  if (err != cudaSuccess) return err;
  err = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
  if (err != cudaSuccess) return err;
  plan->warp_floats = EpilogueWarpFloats(max_context, max_attending);
  const int64_t warp_bytes = plan->warp_floats * static_cast<int64_t>(sizeof(float));
  const int64_t budget = std::min<int64_t>(optin, 160 * 1024);
  if (warp_bytes <= budget) {
    plan->warps_per_block = static_cast<int>(std::min<int64_t>(kEpilogueMaxWarps, budget / warp_bytes));
    plan->shared_bytes = static_cast<size_t>(warp_bytes * plan->warps_per_block);
    plan->global_scratch_bytes = 0;
    // The attribute is the process's, per kernel and device, and scorers plan concurrently (a
    // model's image and caption scorers): always the same ceiling, so that no plan lowers it
    // under another's launch.
    err = cudaFuncSetAttribute(EpilogueKernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                               static_cast<int>(budget));
    if (err != cudaSuccess) return err;
    int per_sm = 0;
    err = cudaOccupancyMaxActiveBlocksPerMultiprocessor(
        &per_sm, EpilogueKernel, plan->warps_per_block * kWarp, plan->shared_bytes);
    if (err != cudaSuccess) return err;
    plan->max_blocks = std::max(1, per_sm) * sms;
  } else {
    // Huge items: scratch in global memory, at most ~512 MB of it.
    plan->warps_per_block = 4;
    plan->shared_bytes = 0;
    const int64_t cap = (int64_t{512} << 20) / (warp_bytes * plan->warps_per_block);
    plan->max_blocks = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(cap, 2 * sms)));
    plan->global_scratch_bytes =
        static_cast<size_t>(warp_bytes * plan->warps_per_block * plan->max_blocks);
  }
  return cudaSuccess;
}

cudaError_t Epilogue(const EpilogueParams& params, const EpiloguePlan& plan, float* global_scratch,
                     cudaStream_t stream) {
  const int64_t pairs = int64_t{params.num_items} * params.num_queries;
  if (pairs == 0) return cudaSuccess;
  const int64_t want = (pairs + plan.warps_per_block - 1) / plan.warps_per_block;
  const int grid = static_cast<int>(std::min<int64_t>(want, plan.max_blocks));
  EpilogueKernel<<<grid, plan.warps_per_block * kWarp, plan.shared_bytes, stream>>>(
      params, plan.warps_per_block, plan.warp_floats,
      plan.global_scratch_bytes > 0 ? global_scratch : nullptr);
  return cudaGetLastError();
}

cudaError_t PlanFused(int device, int64_t dim, int max_stored_rows, int max_query_rows,
                      int max_group_rows, bool split, bool stored_is_context, bool bf16_operands,
                      int blocks_per_sm, int max_stages, FusedPlan* plan) {
  *plan = FusedPlan{};
  if (!bf16_operands || dim % kFusedTileK != 0 || max_stored_rows > kFusedTileRows ||
      max_query_rows > kFusedMaxGroupRows || max_group_rows > kFusedMaxGroupRows ||
      max_group_rows < max_query_rows) {
    return cudaSuccess;  // not eligible
  }
  // Query slices as tall as the tallest group, in whole 16-row fragments.
  const int query_rows = std::max(16, (max_group_rows + 15) / 16 * 16);
  const int query_operands = split ? 2 : 1;
  int optin = 0, per_sm = 0, reserved = 0;
  cudaError_t err = cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device);
  if (err == cudaSuccess) {
    err = cudaDeviceGetAttribute(&per_sm, cudaDevAttrMaxSharedMemoryPerMultiprocessor, device);
  }
  if (err == cudaSuccess) {
    err = cudaDeviceGetAttribute(&reserved, cudaDevAttrReservedSharedMemoryPerBlock, device);
  }
  if (err != cudaSuccess) return err;
  // The same ceiling for every plan (see PlanEpilogue).
  for (const void* kernel : {reinterpret_cast<const void*>(FusedScoreKernel<false>),
                             reinterpret_cast<const void*>(FusedScoreKernel<true>)}) {
    err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, optin);
    if (err != cudaSuccess) return err;
  }
  // The epilogue's per-warp scratch, for as many warps as fit beside the product tile in a
  // block's share of the SM: with two blocks per SM, one block's epilogue (CUDA cores) overlaps
  // the other's k loop (tensor cores), at the price of fewer epilogue warps each.
  plan->warp_floats = stored_is_context ? EpilogueWarpFloats(max_stored_rows, max_query_rows)
                                        : EpilogueWarpFloats(max_query_rows, max_stored_rows);
  const int64_t warp_bytes = plan->warp_floats * static_cast<int64_t>(sizeof(float));
  for (int blocks = std::max(blocks_per_sm, 1); blocks >= 1; --blocks) {
    const int64_t budget = std::min<int64_t>(optin, per_sm / blocks - reserved);
    const int warps = static_cast<int>(std::min<int64_t>(
        kFusedWarps, (budget - static_cast<int64_t>(kFusedProductBytes)) / warp_bytes));
    // Two blocks per SM only with at least two epilogue warps each.
    if (warps < (blocks > 1 ? 2 : 1)) continue;
    // As many copy stages as the block's share holds (the staging is free again by the time the
    // products and the scratch need the space).
    int stages = std::clamp(max_stages, kFusedMinStages, kFusedMaxStages);
    while (stages > kFusedMinStages &&
           static_cast<int64_t>(FusedStagingBytes(stages, query_operands, query_rows)) > budget) {
      --stages;
    }
    const size_t shared = std::max(kFusedProductBytes + static_cast<size_t>(warps * warp_bytes),
                                   FusedStagingBytes(stages, query_operands, query_rows));
    // What the device really fits (registers too), for the plan to report.
    int resident = 0;
    err = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&resident, FusedScoreKernel<false>,
                                                        kFusedThreads, shared);
    if (err != cudaSuccess) return err;
    if (resident < blocks && blocks > 1) continue;
    plan->epilogue_warps = warps;
    plan->stages = stages;
    plan->query_slice_rows = query_rows;
    plan->shared_bytes = shared;
    plan->blocks_per_sm = resident;
    plan->eligible = resident >= 1;
    return cudaSuccess;
  }
  return cudaSuccess;  // not eligible: not even one epilogue warp's scratch fits
}

cudaError_t FusedScore(const EpilogueParams& params, const FusedParams& fused,
                       const FusedPlan& plan, int64_t num_tiles, cudaStream_t stream) {
  if (fused.num_groups < 1 || fused.num_slabs < 1 || plan.stages < kFusedMinStages ||
      plan.stages > kFusedMaxStages || plan.query_slice_rows < 16 ||
      plan.query_slice_rows % 16 != 0 || plan.query_slice_rows > kFusedMaxGroupRows) {
    return cudaErrorInvalidValue;
  }
  const int64_t tiles_per_launch = std::max<int64_t>(1, kMaxGridX / fused.num_groups);
  for (int64_t first = 0; first < num_tiles; first += tiles_per_launch) {
    const int64_t tiles = std::min(tiles_per_launch, num_tiles - first);
    const dim3 grid(static_cast<unsigned>(tiles * fused.num_groups));
    if (fused.stored_type == ElemType::kFp8E4M3) {
      FusedScoreKernel<true><<<grid, kFusedThreads, plan.shared_bytes, stream>>>(
          params, fused, first, plan.epilogue_warps, plan.warp_floats, plan.stages,
          plan.query_slice_rows);
    } else {
      FusedScoreKernel<false><<<grid, kFusedThreads, plan.shared_bytes, stream>>>(
          params, fused, first, plan.epilogue_warps, plan.warp_floats, plan.stages,
          plan.query_slice_rows);
    }
    const cudaError_t err = cudaGetLastError();
    if (err != cudaSuccess) return err;
  }
  return cudaSuccess;
}

namespace {

// Tiles on grid x, queries on grid y (at most kMaxGridY per launch); the query offset moves the
// score rows (or candidate rows) and the output rows alike.
template <bool kFromScores>
cudaError_t LaunchTopK(const float* scores, int64_t ld_scores, const int64_t* col_keys,
                       const TopKCand* in, int64_t n, int num_queries, int k, TopKCand* out,
                       cudaStream_t stream) {
  const int64_t tiles = (n + kTopKTile - 1) / kTopKTile;
  for (int q0 = 0; q0 < num_queries && tiles > 0; q0 += kMaxGridY) {
    const int nq = std::min(kMaxGridY, num_queries - q0);
    TopKKernel<kFromScores><<<dim3(static_cast<unsigned>(tiles), static_cast<unsigned>(nq)), kTopKThreads, 0,
                              stream>>>(kFromScores ? scores + int64_t{q0} * ld_scores : nullptr, ld_scores,
                                        col_keys, kFromScores ? nullptr : in + int64_t{q0} * n, n, k,
                                        out + int64_t{q0} * tiles * k);
    const cudaError_t err = cudaGetLastError();
    if (err != cudaSuccess) return err;
  }
  return cudaSuccess;
}

}  // namespace

cudaError_t TopKFromScores(const float* scores, int64_t ld_scores, int64_t n,
                           const int64_t* col_keys, int num_queries, int k, TopKCand* out,
                           cudaStream_t stream) {
  return LaunchTopK<true>(scores, ld_scores, col_keys, nullptr, n, num_queries, k, out, stream);
}

cudaError_t TopKFromCandidates(const TopKCand* in, int64_t n, int num_queries, int k,
                               TopKCand* out, cudaStream_t stream) {
  return LaunchTopK<false>(nullptr, 0, nullptr, in, n, num_queries, k, out, stream);
}

}  // namespace cuda_kernels
}  // namespace scanserve
