// ReferenceScorer: the plain path and the test oracle. It scores the way the published SCAN code
// does (model.py: func_attention, xattn_score_t2i / _i2t), with LibTorch ops in fp32: per query,
// A = bmm(context, attendingᵀ), the raw_feature_norm, the softmax over the context, the attended
// vectors through the SECOND batched product, the reference's cosine_similarity, then pooling.
// Stored items of equal row count are grouped into one (group, rows, dim) batch for the bmm; a
// query is repeated over the group as the reference repeats a caption over the images.
//
// What differs from the interface: fp32 storage only (Create rejects kBFloat16); keys() is
// insertion order and an upserted key moves to the end (as in CpuScorer). It is slow by design:
// one query at a time, two full products per pair.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "engine/common/matrix.h"
#include "engine/scoring/scorer.h"

namespace scanserve {

class ReferenceScorer final : public Scorer {
 public:
  // INVALID_ARGUMENT for a bad config or bf16 storage. Sets the process-wide LibTorch/BLAS thread
  // count (SetComputeThreads) when config.num_threads > 0.
  static absl::StatusOr<std::unique_ptr<ReferenceScorer>> Create(const ScorerConfig& config);

  int64_t size() const override { return static_cast<int64_t>(keys_.size()); }
  std::vector<int64_t> keys() const override { return keys_; }
  int64_t memory_bytes() const override;

 protected:
  absl::Status AddImpl(absl::Span<const int64_t> keys, absl::Span<const ItemView> items) override;
  absl::Status RemoveImpl(absl::Span<const int64_t> keys) override;
  bool Contains(int64_t key) const override { return column_of_key_.contains(key); }
  absl::Status ScoreAllImpl(absl::Span<const ItemView> queries, FloatMatrix* scores) const override;

 private:
  explicit ReferenceScorer(const ScorerConfig& config) : Scorer(config) {}

  // Stored items with the same row count, contiguous: keys.size() x rows x dim floats.
  struct Group {
    std::vector<int64_t> keys;
    std::vector<float> values;
  };

  // Removes `keys` (all stored) from their groups and from keys_, then renumbers the columns.
  void Erase(absl::Span<const int64_t> keys);
  void RebuildColumns();

  std::map<int64_t, Group> groups_;                        // by row count
  std::vector<int64_t> keys_;                              // column order
  absl::flat_hash_map<int64_t, int64_t> column_of_key_;
  absl::flat_hash_map<int64_t, int64_t> rows_of_key_;      // its group
};

}  // namespace scanserve
