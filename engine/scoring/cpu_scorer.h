// CpuScorer: the fast exact CPU path of Scorer (see scorer.h for the data conventions).
//
// What differs from the interface:
//  - Storage. Items live in one contiguous row arena (row_arena.h: fp32, bf16 rounded to nearest
//    even, or fp8 e4m3 with per-row scales, as ScorerConfig::storage says), in insertion order.
//    For the side that is the attention context (t2i: images, i2t: captions) each stored item's
//    Gram matrix (rows x rows, fp32, from the stored, i.e. rounded, values) is computed once at
//    Add. bf16 and fp8 scores are the exact
//    scores of the rounded items.
//  - Order. keys() is insertion order; an upserted key moves to the end. Remove leaves tombstones
//    and compacts the arena once tombstoned rows pass CpuScorerOptions::compact_dead_fraction.
//  - Scoring. Per block of stored items, ONE GEMM of the block's stacked rows against all queries'
//    stacked rows, then a fused epilogue per (query, item) pair in the Gram form of scan-model.md
//    ("Cheaper exact forms"): the attended vectors are never built. Exact up to fp32 rounding.
//  - Threads. ScoreAll uses ScorerConfig::num_threads threads (0 = all cores), split as
//    CpuScorerOptions::parallelism says. The GEMM goes through LibTorch's BLAS (gemm.h); Create
//    sets its process-wide thread count (SetComputeThreads) when num_threads > 0.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "engine/common/matrix.h"
#include "engine/common/thread_pool.h"
#include "engine/scoring/row_arena.h"
#include "engine/scoring/scorer.h"

namespace scanserve {

// How ScoreAll spreads its work over the threads.
enum class CpuParallelism {
  // Each pool thread takes whole (block of stored items, group of queries) units and runs their
  // GEMM (single-threaded: GemmThreading::kCaller) and epilogue itself: no barrier per block and
  // the product stays in that core's cache. Robust when the cores are shared with other work.
  // Falls back to kSharedGemm when the BLAS cannot be kept single-threaded per call
  // (CallerOnlyGemmSupported() in gemm.h). With OpenBLAS < 0.3.27 (Debian 12's 0.3.21) that
  // setting is process-wide: while ScoreAll or Add runs, other threads' BLAS calls are
  // single-threaded too.
  kPerThreadUnits,
  // One unit at a time: the BLAS library's threads split the GEMM, then the pool splits the
  // epilogue, with a barrier after each.
  kSharedGemm,
};

struct CpuScorerOptions {
  CpuParallelism parallelism = CpuParallelism::kPerThreadUnits;
  // Stored rows per GEMM block (whole items; an item larger than this is a block of its own).
  int64_t block_rows = 1024;
  // kPerThreadUnits shrinks blocks, not below this, so that every thread gets ~4 units.
  int64_t min_block_rows = 256;
  // Query rows per GEMM (whole queries): bounds the block's product matrix to
  // block_rows x query_block_rows floats.
  int64_t query_block_rows = 1024;
  // Query groups of at most this many rows take the streaming kernels (streaming_gemm.h: the
  // stored rows read once, bf16 ones widened as they are loaded) instead of GemmNT, on
  // kPerThreadUnits with dim % 32 == 0 where the CPU has AVX2 + FMA. 0: always GemmNT.
  int64_t streaming_max_query_rows = 64;
  // Compact the arena when tombstoned rows exceed this fraction of all rows.
  double compact_dead_fraction = 0.25;
};

class CpuScorer final : public Scorer {
 public:
  // INVALID_ARGUMENT for a bad config (see ValidateScorerConfig) or bad options.
  static absl::StatusOr<std::unique_ptr<CpuScorer>> Create(const ScorerConfig& config,
                                                           const CpuScorerOptions& options = {});

  ~CpuScorer() override;

  int64_t size() const override { return static_cast<int64_t>(live_slots_.size()); }
  std::vector<int64_t> keys() const override;
  int64_t memory_bytes() const override;

  const CpuScorerOptions& options() const { return options_; }

  // Region-word products computed so far, by kernel: GemmNT (BLAS) calls and streaming kernel
  // calls (one per (block, query group) unit).
  struct PassCounts {
    int64_t blas = 0;
    int64_t streamed = 0;
  };
  PassCounts pass_counts() const {
    return {blas_products_.load(std::memory_order_relaxed),
            streamed_products_.load(std::memory_order_relaxed)};
  }

 protected:
  absl::Status AddImpl(absl::Span<const int64_t> keys, absl::Span<const ItemView> items) override;
  absl::Status RemoveImpl(absl::Span<const int64_t> keys) override;
  bool Contains(int64_t key) const override { return slot_of_key_.contains(key); }
  absl::Status ScoreAllImpl(absl::Span<const ItemView> queries, FloatMatrix* scores) const override;

 private:
  CpuScorer(const ScorerConfig& config, const CpuScorerOptions& options);

  // One stored item (live or tombstoned) in arena order.
  struct Slot {
    int64_t key = 0;
    int64_t row_begin = 0;   // first row in the arena (and in row_norms_)
    int64_t rows = 0;
    int64_t gram_begin = 0;  // offset into grams_ (stored_is_context_ only)
    bool live = true;
  };

  // Marks a live slot dead and forgets its key.
  void Tombstone(int64_t slot);
  // Rebuilds live_slots_ and column_of_slot_ after tombstoning.
  void RebuildColumns();
  // Drops tombstoned slots from the arena when they pass the threshold. Best effort: on allocation
  // failure the arena stays as it is.
  void MaybeCompact();

  // Per-call buffers (one set per pool thread), defined in cpu_scorer.cc.
  struct ScoreScratch;
  std::unique_ptr<ScoreScratch> AcquireScratch() const;
  void ReleaseScratch(std::unique_ptr<ScoreScratch> scratch) const;

  CpuScorerOptions options_;
  // True when the stored side is the attention context, so its Gram matrices are precomputed:
  // (t2i and stored images) or (i2t and stored captions).
  bool stored_is_context_ = false;
  std::unique_ptr<ThreadPool> pool_;

  RowArena arena_;                       // total_rows x dim stored values
  std::vector<float> row_norms_;         // |row| of every stored row (of the stored values)
  std::vector<float> grams_;             // concatenated rows x rows Gram matrices
  int64_t total_rows_ = 0;               // arena rows, tombstoned included
  int64_t dead_rows_ = 0;                // tombstoned rows still in the arena
  int64_t max_rows_ = 0;                 // largest item ever stored (scratch sizing)

  std::vector<Slot> slots_;
  absl::flat_hash_map<int64_t, int64_t> slot_of_key_;  // live keys only
  std::vector<int64_t> live_slots_;                    // column j of ScoreAll = live_slots_[j]
  std::vector<int64_t> column_of_slot_;                // -1 for tombstones
  mutable std::atomic<int64_t> blas_products_{0};
  mutable std::atomic<int64_t> streamed_products_{0};

  // Buffers of finished ScoreAll calls, reused by later ones so that a call neither pages in nor
  // zeroes fresh multi-MB buffers; as many sets as calls ever ran at once.
  mutable std::mutex scratch_mu_;
  mutable std::vector<std::unique_ptr<ScoreScratch>> free_scratch_;  // guarded by scratch_mu_
};

}  // namespace scanserve
