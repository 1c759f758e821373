#include "engine/retrieval/synthetic_items.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "engine/common/split_mix64.h"

namespace scanserve {
namespace {

uint64_t Mix(uint64_t a, uint64_t b) { return SplitMix64(a * 0x2545f4914f6cdd1dULL ^ b).Next(); }

}  // namespace

std::string SyntheticId(int64_t index) { return absl::StrCat("synthetic/", index); }

int64_t SyntheticPoolSize(int64_t count) { return std::max<int64_t>(1, std::min(count, kSyntheticPoolItems)); }

FloatMatrix MakeSyntheticItem(ItemKind kind, int64_t index, size_t model, int64_t dim) {
  const bool image = kind == ItemKind::kImage;
  const uint64_t item_seed = Mix(image ? 0x5ca11ab1eULL : 0xca971011ULL, static_cast<uint64_t>(index));
  const int64_t span = kSyntheticCaptionMaxRows - kSyntheticCaptionMinRows + 1;
  const int64_t rows =
      image ? kSyntheticImageRegions : kSyntheticCaptionMinRows + static_cast<int64_t>(item_seed % span);
  SplitMix64 rng(Mix(item_seed, model + 1));
  FloatMatrix item(rows, dim);
  FillUnitRows(rng, item.data.data(), rows, dim);
  return item;
}

SyntheticPool MakeSyntheticPool(ItemKind kind, int64_t count, const std::vector<int64_t>& dims) {
  SyntheticPool pool;
  const int64_t size = SyntheticPoolSize(count);
  for (size_t m = 0; m < dims.size(); ++m) {
    std::vector<FloatMatrix> items;
    items.reserve(static_cast<size_t>(size));
    for (int64_t i = 0; i < size; ++i) items.push_back(MakeSyntheticItem(kind, i, m, dims[m]));
    pool.items.push_back(std::move(items));
  }
  return pool;
}

}  // namespace scanserve
