// Device kernels of the CUDA scoring backend (engine/scoring/cuda_scorer.h), behind plain launcher
// functions so that the host side (cuda_scorer*.cc) is ordinary C++. Every launcher enqueues on the
// given stream and returns cudaGetLastError() (a launch error), never synchronising.
//
// Layouts (device memory, row-major, compact):
//  - features: rows x dim, fp32, bf16 (the upper 16 bits of fp32, stored as uint16_t), or fp8
//    e4m3 codes (uint8_t) with one power-of-two fp32 scale per row (engine/common/fp8_e4m3.h).
//  - an item (stored or query) is an ItemDev: its first row, its row count and (when it is the
//    attention context) the offset of its rows x rows fp32 Gram matrix.
//  - a product chunk: stored rows x ld_product fp32, row r holding <stored row, query row> for
//    every stacked query row (bf16 split queries: the hi parts in columns [0, Q), lo in [Q, 2Q)).
//  - scores: num_queries x ld_scores fp32.
#pragma once

#include <cstdint>

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

namespace scanserve {
namespace cuda_kernels {

struct ItemDev {
  int64_t row_begin = 0;   // first row (slab-relative for stored items, pass-relative for queries)
  int64_t gram_begin = 0;  // offset of the Gram matrix, when there is one
  int32_t rows = 0;
  int32_t pad = 0;
};

// Rows of stored values, in any of the storage types; `scales` (one per row, indexed like the
// rows) only for fp8.
enum class ElemType : int32_t { kFloat32 = 0, kBFloat16 = 1, kFp8E4M3 = 2 };
struct RowsView {
  const void* values = nullptr;
  ElemType type = ElemType::kFloat32;
  const float* scales = nullptr;
};

// n floats -> bf16, rounded to nearest even (bit-identical to engine/common/bfloat16.h).
cudaError_t FloatToBf16(const float* src, uint16_t* dst, int64_t n, cudaStream_t stream);
// n floats -> hi = bf16(x), lo = bf16(x - hi).
cudaError_t SplitToBf16(const float* src, uint16_t* hi, uint16_t* lo, int64_t n,
                        cudaStream_t stream);

// rows x dim floats -> e4m3 codes and per-row scales, bit-identical to FloatRowToFp8E4M3.
cudaError_t FloatToFp8Rows(const float* src, int64_t rows, int64_t dim, uint8_t* codes,
                           float* scales, cudaStream_t stream);
// rows x dim e4m3 codes with their row scales -> bf16; exact (a stored fp8 value is a bf16 value).
cudaError_t Fp8RowsToBf16(const uint8_t* codes, const float* scales, int64_t rows, int64_t dim,
                          uint16_t* dst, cudaStream_t stream);

// out[r] = |row r| of rows x dim, fp32 accumulation.
cudaError_t RowNorms(RowsView x, int64_t rows, int64_t dim, float* out, cudaStream_t stream);

// For items[0..num_items): grams[gram_begin + a * rows + b] = <row a, row b> of the item, rows
// taken from row row_begin of x.
cudaError_t Grams(RowsView x, int64_t dim, const ItemDev* items, int num_items, float* grams,
                  cudaStream_t stream);

// The fused SCAN epilogue: one (query, stored item) pair per warp, from the raw products to the
// pooled score; nothing but the score is written to device memory.
struct EpilogueParams {
  // Attention (AttentionParams, as ints: RawFeatureNorm and Pooling enumerator values).
  int raw_feature_norm = 0;
  int pooling = 0;
  float lambda_softmax = 0.0f;
  float lambda_lse = 0.0f;
  bool stored_is_context = true;  // t2i with stored images, or i2t with stored captions
  // Products of this chunk.
  const float* product = nullptr;
  int64_t ld_product = 0;
  int64_t lo_offset = 0;   // column offset of the lo parts; 0 when there are none
  int64_t chunk_row0 = 0;  // stored (slab) row of product row 0
  // Stored items: items[item_begin, item_begin + num_items) of the slab.
  const ItemDev* items = nullptr;
  int item_begin = 0;
  int num_items = 0;
  const float* stored_norms = nullptr;  // per slab row
  const float* stored_grams = nullptr;  // when stored_is_context
  // Queries.
  const ItemDev* queries = nullptr;
  int num_queries = 0;
  const float* query_norms = nullptr;  // per stacked query row
  const float* query_grams = nullptr;  // when !stored_is_context
  // Output: scores[j * ld_scores + col0 + i] for query j and chunk item i.
  float* scores = nullptr;
  int64_t ld_scores = 0;
  int64_t col0 = 0;
};

// Launch geometry of the epilogue for pairs with at most max_context context rows and
// max_attending attending rows: per-warp scratch lives in shared memory when it fits, else in
// global scratch of global_scratch_bytes (to be passed to Epilogue).
struct EpiloguePlan {
  int warps_per_block = 0;
  int max_blocks = 0;  // grid size cap (resident blocks, or the global scratch's capacity)
  size_t shared_bytes = 0;
  int64_t warp_floats = 0;
  size_t global_scratch_bytes = 0;  // 0 = shared-memory scratch
};
cudaError_t PlanEpilogue(int device, int max_context, int max_attending, EpiloguePlan* plan);
cudaError_t Epilogue(const EpilogueParams& params, const EpiloguePlan& plan, float* global_scratch,
                     cudaStream_t stream);

// The fused pass (CudaScorerOptions::pass_kernels kFused): a block per (query group, row tile), a
// tiled GEMM on the tensor cores (bf16 WMMA, fp32 accumulation; both operands staged in shared
// memory, k in steps of kFusedTileK) whose product tile stays in shared memory, then the same
// per-pair epilogue as Epilogue, reading it there. fp8 stored rows are read as codes and widened
// to bf16 in the staging (no widened copy in device memory). The operands reach shared memory by
// asynchronous copies, several k steps ahead (FusedPlan::stages); every group's rows must be at
// most FusedPlan::query_slice_rows. Needs bf16 operands (bf16 or
// fp8 storage, bf16 queries), dim % kFusedTileK == 0, stored items and queries of at most
// kFusedTileRows rows, and the epilogue's scratch for at least one warp beside the product tile.
constexpr int kFusedTileRows = 128;      // stored rows per row tile (whole items)
constexpr int kFusedMaxGroupRows = 128;  // stacked query rows per group (hi part; whole queries)
constexpr int kFusedTileK = 32;
// k steps staged at once (FusedPlan::stages): a double buffer at least; cp.async.wait_group
// counts at most 8.
constexpr int kFusedMinStages = 2;
constexpr int kFusedMaxStages = 8;
// A row tile: consecutive whole items of one slab, at most kFusedTileRows rows in all (or one
// item). Cached per slab beside its item metadata.
struct RowTileDev {
  int64_t row_begin = 0;  // slab row of its first item
  int32_t rows = 0;       // up to the end of its last item
  int32_t item_begin = 0;  // slab index of its first item
  int32_t num_items = 0;
  int32_t pad = 0;
};
struct QueryGroupDev {
  int64_t row_begin = 0;  // first stacked query row of the group
  int32_t rows = 0;       // its rows (whole queries), <= kFusedMaxGroupRows
  int32_t first_query = 0;
  int32_t num_queries = 0;
  int32_t pad = 0;
};
// One slab of a fused pass: its row tiles are the pass's tiles [first_tile, first_tile + its
// tiles); a launch covers every slab, so a pass is one launch however large the store.
struct FusedSlabDev {
  RowsView stored;  // bf16 rows, or fp8 codes and scales (widened as they are staged)
  const float* norms = nullptr;
  const float* grams = nullptr;  // when stored_is_context
  const ItemDev* items = nullptr;
  const RowTileDev* tiles = nullptr;
  int64_t first_tile = 0;
  int64_t col0 = 0;  // score column of the slab's first item
};
struct FusedParams {
  const __nv_bfloat16* queries = nullptr;  // stacked bf16 query rows (hi, then lo)
  int64_t lo_row_offset = 0;               // rows from the hi to the lo part
  int64_t dim = 0;
  bool split = false;
  const QueryGroupDev* groups = nullptr;
  int num_groups = 0;
  const FusedSlabDev* slabs = nullptr;  // non-empty slabs, by first_tile
  int num_slabs = 0;
  ElemType stored_type = ElemType::kBFloat16;  // every slab's (bf16 or fp8)
};
struct FusedPlan {
  bool eligible = false;  // false: shapes or shared memory rule it out; use GEMM + Epilogue
  int epilogue_warps = 0;  // warps with epilogue scratch (of the block's kFusedWarps)
  int64_t warp_floats = 0;
  size_t shared_bytes = 0;
  int blocks_per_sm = 0;  // resident blocks per SM at shared_bytes (the occupancy API's answer)
  int stages = 0;         // k steps staged at once: stages - 1 in flight while one is multiplied
  int query_slice_rows = 0;  // staged rows per query operand: the tallest group's, to 16
};
// Sizes the epilogue scratch so that blocks_per_sm blocks (1 or 2) fit an SM, with at least two
// epilogue warps each; otherwise one block per SM with as many warps as fit. Then as many copy
// stages (2 .. max_stages, at most 8) as that share of the SM holds: a stage holds the stored
// slice and query slices as tall as the tallest group (max_group_rows; hi, and lo when split),
// so short query groups (a lone caption) get more stages in flight than full ones.
// max_query_rows (the tallest query) sizes the epilogue's scratch.
cudaError_t PlanFused(int device, int64_t dim, int max_stored_rows, int max_query_rows,
                      int max_group_rows, bool split, bool stored_is_context, bool bf16_operands,
                      int blocks_per_sm, int max_stages, FusedPlan* plan);
// params as for Epilogue, less what is per slab or per chunk (items, stored norms and Grams,
// col0, item_begin, chunk_row0, product, ld_product, lo_offset, num_items: unused). A block per
// (tile, group), the groups of one tile consecutive; one launch for up to 2^31 - 1 blocks.
cudaError_t FusedScore(const EpilogueParams& params, const FusedParams& fused,
                       const FusedPlan& plan, int64_t num_tiles, cudaStream_t stream);

// Device top-k (k <= kTopKTile / 8): best first, ties to the smaller key, NaN below every number.
struct TopKCand {
  float score = 0.0f;
  int32_t valid = 0;  // 0: padding
  int64_t key = 0;
};
constexpr int kTopKTile = 2048;
// Round one: per query j and tile t of kTopKTile columns of scores (num_queries x ld_scores, n
// columns, column c named col_keys[c]), the tile's best k into out[(j * tiles + t) * k ..].
cudaError_t TopKFromScores(const float* scores, int64_t ld_scores, int64_t n, const int64_t* col_keys,
                           int num_queries, int k, TopKCand* out, cudaStream_t stream);
// Later rounds: the same over num_queries x n candidates.
cudaError_t TopKFromCandidates(const TopKCand* in, int64_t n, int num_queries, int k, TopKCand* out,
                               cudaStream_t stream);

}  // namespace cuda_kernels
}  // namespace scanserve
