#include "engine/detector/legacy_nms.h"

#include <algorithm>
#include <cmath>
#include <cstring>

namespace scanserve {
namespace {

// cpu_nms's own max/min (a on ties), kept so -0/+0 behave identically.
inline float Max(float a, float b) { return a >= b ? a : b; }
inline float Min(float a, float b) { return a <= b ? a : b; }

inline float LegacyArea(const float* box) { return (box[2] - box[0] + 1) * (box[3] - box[1] + 1); }

// cpu_nms's inner step with the areas precomputed.
inline float IouWithAreas(const float* a, float area_a, const float* b, float area_b) {
  const float xx1 = Max(a[0], b[0]);
  const float yy1 = Max(a[1], b[1]);
  const float xx2 = Min(a[2], b[2]);
  const float yy2 = Min(a[3], b[3]);
  const float w = Max(0.0f, xx2 - xx1 + 1);
  const float h = Max(0.0f, yy2 - yy1 + 1);
  const float inter = w * h;
  return inter / (area_a + area_b - inter);
}

// Monotone map from float to uint32 (ascending floats give ascending keys); -0 counts as +0 and
// every NaN ranks above +inf, as numpy's sort puts NaN last.
inline uint32_t OrderKey(float value) {
  if (std::isnan(value)) return 0xFFFFFFFFu;
  if (value == 0.0f) value = 0.0f;
  uint32_t bits;
  std::memcpy(&bits, &value, sizeof bits);
  return (bits & 0x80000000u) ? ~bits : (bits | 0x80000000u);
}

}  // namespace

float LegacyIou(const float* a, const float* b) {
  return IouWithAreas(a, LegacyArea(a), b, LegacyArea(b));
}

uint64_t ScoreOrderKey(float score, int index) {
  // (score key, index) descending: score descending, ties higher index first.
  return (static_cast<uint64_t>(OrderKey(score)) << 32) | static_cast<uint32_t>(index);
}

std::vector<int> ScoreDescendingOrder(const float* scores, int n, int top_k) {
  if (n <= 0) return {};
  std::vector<uint64_t> keys(n);
  for (int i = 0; i < n; ++i) keys[i] = ScoreOrderKey(scores[i], i);
  const int count = (top_k >= 0 && top_k < n) ? top_k : n;
  if (count < n) {
    std::partial_sort(keys.begin(), keys.begin() + count, keys.end(), std::greater<uint64_t>());
  } else {
    std::sort(keys.begin(), keys.end(), std::greater<uint64_t>());
  }
  std::vector<int> order(count);
  for (int i = 0; i < count; ++i) order[i] = static_cast<int>(keys[i] & 0xFFFFFFFFu);
  return order;
}

std::vector<int> LegacyNms(const float* boxes, const float* scores, int n, double threshold,
                           int max_keep) {
  std::vector<int> keep;
  if (n <= 0 || max_keep == 0) return keep;
  std::vector<float> areas(n);
  for (int i = 0; i < n; ++i) areas[i] = LegacyArea(boxes + 4 * i);
  const std::vector<int> order = ScoreDescendingOrder(scores, n);
  std::vector<char> suppressed(n, 0);
  for (int pos = 0; pos < n; ++pos) {
    const int i = order[pos];
    if (suppressed[i]) continue;
    keep.push_back(i);
    if (max_keep > 0 && static_cast<int>(keep.size()) == max_keep) break;
    const float* box_i = boxes + 4 * i;
    for (int later = pos + 1; later < n; ++later) {
      const int j = order[later];
      if (suppressed[j]) continue;
      if (LegacySuppresses(IouWithAreas(box_i, areas[i], boxes + 4 * j, areas[j]), threshold)) {
        suppressed[j] = 1;
      }
    }
  }
  return keep;
}

OverlapBitsets::OverlapBitsets(const float* boxes, int n, double threshold)
    : n_(std::max(n, 0)), words_per_row_((n_ + 63) / 64),
      bits_(static_cast<size_t>(n_) * words_per_row_, 0) {
  std::vector<float> areas(n_);
  for (int i = 0; i < n_; ++i) areas[i] = LegacyArea(boxes + 4 * i);
  for (int i = 0; i < n_; ++i) {
    uint64_t* row_i = bits_.data() + static_cast<size_t>(i) * words_per_row_;
    // The IoU is symmetric bit for bit (commutative float adds), so compute each pair once.
    for (int j = i; j < n_; ++j) {
      if (!LegacySuppresses(IouWithAreas(boxes + 4 * i, areas[i], boxes + 4 * j, areas[j]),
                            threshold)) {
        continue;
      }
      row_i[j >> 6] |= uint64_t{1} << (j & 63);
      bits_[static_cast<size_t>(j) * words_per_row_ + (i >> 6)] |= uint64_t{1} << (i & 63);
    }
  }
}

std::vector<int> OverlapBitsets::Nms(const float* scores, int max_keep) const {
  std::vector<int> keep;
  if (n_ == 0 || max_keep == 0) return keep;
  const std::vector<int> order = ScoreDescendingOrder(scores, n_);
  std::vector<uint64_t> removed(words_per_row_, 0);
  for (int i : order) {
    if ((removed[i >> 6] >> (i & 63)) & 1) continue;
    keep.push_back(i);
    if (max_keep > 0 && static_cast<int>(keep.size()) == max_keep) break;
    // Marking already-processed boxes too is harmless: they are never looked at again.
    const uint64_t* suppressed = row(i);
    for (int w = 0; w < words_per_row_; ++w) removed[w] |= suppressed[w];
  }
  return keep;
}

std::vector<int> ReduceNmsMask(const uint64_t* mask, int n, int max_keep) {
  std::vector<int> keep;
  if (n <= 0 || max_keep == 0) return keep;
  const int words = (n + 63) / 64;
  std::vector<uint64_t> removed(words, 0);
  for (int i = 0; i < n; ++i) {
    if ((removed[i >> 6] >> (i & 63)) & 1) continue;
    keep.push_back(i);
    if (max_keep > 0 && static_cast<int>(keep.size()) == max_keep) break;
    const uint64_t* row = mask + static_cast<size_t>(i) * words;
    // Bits j <= i are never set, so only words from i's onwards matter.
    for (int w = i >> 6; w < words; ++w) removed[w] |= row[w];
  }
  return keep;
}

}  // namespace scanserve
