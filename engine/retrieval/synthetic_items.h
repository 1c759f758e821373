// Random stored items for load tests and capacity benchmarks at scale
// (RetrievalEngineOptions::synthetic_images / synthetic_captions, scanserve --synthetic-images):
// a pool of distinct random items with l2-normalised rows, which the engine repeats under
// distinct keys, so that a million synthetic images cost the pool's host memory (~600 MB), not
// the 147 GB of a million distinct fp32 items. Scoring cost does not depend on the values.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "engine/common/matrix.h"
#include "engine/scoring/scorer.h"

namespace scanserve {

inline constexpr char kSyntheticCollection[] = "synthetic";
inline constexpr int64_t kSyntheticPoolItems = 4096;
// Shapes: the 36 regions per image of the released features; captions of 12..19 tokens with
// <start>/<end> (mean 15.5, Flickr30K's test captions).
inline constexpr int64_t kSyntheticImageRegions = 36;
inline constexpr int64_t kSyntheticCaptionMinRows = 12;
inline constexpr int64_t kSyntheticCaptionMaxRows = 19;

// "synthetic/<index>".
std::string SyntheticId(int64_t index);

// Synthetic item i of `count` is pool item i % SyntheticPoolSize(count).
int64_t SyntheticPoolSize(int64_t count);

// Pool item `index` of `kind` for model `model` (embedding width dim): kSyntheticImageRegions rows
// for an image, 12..19 for a caption (the same for every model), each uniform in [-1, 1)^dim then
// l2-normalised; a function of its arguments alone, so one item can be made again on its own.
FloatMatrix MakeSyntheticItem(ItemKind kind, int64_t index, size_t model, int64_t dim);

// The whole pool behind `count` synthetic items of `kind`, one set of values per embedding width in
// `dims` (one per model).
struct SyntheticPool {
  std::vector<std::vector<FloatMatrix>> items;  // [model][pool item]

  int64_t size() const { return items.empty() ? 0 : static_cast<int64_t>(items.front().size()); }
  const FloatMatrix& item(size_t model, int64_t index) const {
    return items[model][static_cast<size_t>(index % size())];
  }
};
SyntheticPool MakeSyntheticPool(ItemKind kind, int64_t count, const std::vector<int64_t>& dims);

}  // namespace scanserve
