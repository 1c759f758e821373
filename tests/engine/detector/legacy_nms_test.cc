// engine/detector/legacy_nms: cpu_nms semantics (+1 areas, float32 IoU compared as a double with
// `>=`), the ORDER RULE for ties, and the bitset and bitmask variants against the greedy loop.
#include "engine/detector/legacy_nms.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <numeric>
#include <random>
#include <vector>

#include "gtest/gtest.h"

namespace scanserve {
namespace {

// An independent transcription of cpu_nms, ordered by numpy's stable argsort reversed.
std::vector<int> ReferenceNms(const std::vector<float>& boxes, const std::vector<float>& scores,
                              double threshold) {
  const int n = static_cast<int>(scores.size());
  std::vector<int> order(n);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return scores[a] < scores[b]; });
  std::reverse(order.begin(), order.end());
  std::vector<float> areas(n);
  for (int i = 0; i < n; ++i) {
    volatile float w = boxes[4 * i + 2] - boxes[4 * i] + 1;
    volatile float h = boxes[4 * i + 3] - boxes[4 * i + 1] + 1;
    areas[i] = w * h;
  }
  std::vector<char> suppressed(n, 0);
  std::vector<int> keep;
  for (int oi = 0; oi < n; ++oi) {
    const int i = order[oi];
    if (suppressed[i]) continue;
    keep.push_back(i);
    for (int oj = oi + 1; oj < n; ++oj) {
      const int j = order[oj];
      if (suppressed[j]) continue;
      const float xx1 = std::max(boxes[4 * i], boxes[4 * j]);
      const float yy1 = std::max(boxes[4 * i + 1], boxes[4 * j + 1]);
      const float xx2 = std::min(boxes[4 * i + 2], boxes[4 * j + 2]);
      const float yy2 = std::min(boxes[4 * i + 3], boxes[4 * j + 3]);
      volatile float w = std::max(0.0f, xx2 - xx1 + 1);
      volatile float h = std::max(0.0f, yy2 - yy1 + 1);
      volatile float inter = w * h;
      volatile float denom = areas[i] + areas[j] - inter;
      const float ovr = inter / denom;
      if (static_cast<double>(ovr) >= threshold) suppressed[j] = 1;
    }
  }
  return keep;
}

// Random boxes in clusters (so that many pairs overlap), integer and fractional corners.
std::vector<float> RandomBoxes(int n, std::mt19937* rng) {
  std::uniform_real_distribution<float> centre(0, 200);
  std::uniform_real_distribution<float> size(1, 60);
  std::uniform_real_distribution<float> jitter(-6, 6);
  std::vector<float> boxes;
  std::vector<std::array<float, 2>> centres(std::max(1, n / 8));
  for (auto& c : centres) c = {centre(*rng), centre(*rng)};
  for (int i = 0; i < n; ++i) {
    const auto& c = centres[i % centres.size()];
    float x = c[0] + jitter(*rng), y = c[1] + jitter(*rng), w = size(*rng), h = size(*rng);
    if (i % 3 == 0) {  // integer boxes make exact IoU ties likely
      x = std::round(x); y = std::round(y); w = std::round(w); h = std::round(h);
    }
    boxes.insert(boxes.end(), {x, y, x + w, y + h});
  }
  return boxes;
}

std::vector<float> RandomScores(int n, bool with_ties, std::mt19937* rng) {
  std::uniform_real_distribution<float> uniform(0, 1);
  std::vector<float> scores(n);
  for (float& s : scores) s = with_ties ? std::floor(uniform(*rng) * 8) / 8 : uniform(*rng);
  return scores;
}

TEST(LegacyNmsTest, IouUsesPlusOneAreas) {
  const float a[4] = {0, 0, 1, 1};  // 2 x 2 in the +1 convention
  const float b[4] = {1, 1, 2, 2};
  EXPECT_EQ(LegacyIou(a, b), 1.0f / 7.0f);  // one shared cell, union 4 + 4 - 1
  const float point[4] = {5, 5, 5, 5};        // a single pixel, area 1, not 0
  EXPECT_EQ(LegacyIou(point, point), 1.0f);
  const float far[4] = {10, 10, 12, 12};
  EXPECT_EQ(LegacyIou(a, far), 0.0f);
}

TEST(LegacyNmsTest, IouExactlyPointSevenIsKept) {
  // IoU = 70 / 100: float(0.7) < 0.7, so the double comparison keeps the pair.
  const std::vector<float> boxes = {0, 0, 9, 9, 0, 0, 9, 6};
  const std::vector<float> scores = {0.9f, 0.8f};
  EXPECT_EQ(LegacyIou(boxes.data(), boxes.data() + 4), 0.7f);
  EXPECT_LT(static_cast<double>(0.7f), 0.7);
  EXPECT_EQ(LegacyNms(boxes.data(), scores.data(), 2, 0.7), (std::vector<int>{0, 1}));
}

TEST(LegacyNmsTest, IouExactlyPointThreeIsSuppressed) {
  // IoU = 30 / 100: float(0.3) > 0.3, so the pair is suppressed at 0.3.
  const std::vector<float> boxes = {0, 0, 9, 9, 0, 0, 9, 2};
  const std::vector<float> scores = {0.9f, 0.8f};
  EXPECT_EQ(LegacyIou(boxes.data(), boxes.data() + 4), 0.3f);
  EXPECT_GT(static_cast<double>(0.3f), 0.3);
  EXPECT_EQ(LegacyNms(boxes.data(), scores.data(), 2, 0.3), (std::vector<int>{0}));
}

TEST(LegacyNmsTest, ExactlyRepresentableThresholdSuppressesWithGreaterOrEqual) {
  const std::vector<float> boxes = {0, 0, 9, 9, 0, 0, 9, 4};  // IoU 0.5 exactly
  const std::vector<float> scores = {0.2f, 0.7f};
  EXPECT_EQ(LegacyNms(boxes.data(), scores.data(), 2, 0.5), (std::vector<int>{1}));
  EXPECT_EQ(LegacyNms(boxes.data(), scores.data(), 2, 0.5000001), (std::vector<int>{1, 0}));
}

TEST(LegacyNmsTest, TiesProcessHigherIndexFirst) {
  // Identical boxes with equal scores: the higher index wins.
  const std::vector<float> same = {0, 0, 9, 9, 0, 0, 9, 9, 0, 0, 9, 9};
  const std::vector<float> tied = {0.5f, 0.5f, 0.5f};
  EXPECT_EQ(LegacyNms(same.data(), tied.data(), 3, 0.7), (std::vector<int>{2}));
  // Disjoint boxes: all kept, in processing order.
  const std::vector<float> disjoint = {0, 0, 9, 9, 20, 0, 29, 9, 40, 0, 49, 9, 60, 0, 69, 9};
  const std::vector<float> scores = {0.5f, 0.9f, 0.5f, 0.1f};
  EXPECT_EQ(LegacyNms(disjoint.data(), scores.data(), 4, 0.7), (std::vector<int>{1, 2, 0, 3}));
  EXPECT_EQ(ScoreDescendingOrder(scores.data(), 4), (std::vector<int>{1, 2, 0, 3}));
  EXPECT_EQ(ScoreDescendingOrder(scores.data(), 4, 2), (std::vector<int>{1, 2}));
}

TEST(LegacyNmsTest, OrderTreatsSignedZerosAsEqualAndNanFirst) {
  const std::vector<float> scores = {0.0f, -0.0f, NAN, -1.0f, 0.0f};
  EXPECT_EQ(ScoreDescendingOrder(scores.data(), 5), (std::vector<int>{2, 4, 1, 0, 3}));
}

TEST(LegacyNmsTest, MaxKeepAndEmpty) {
  std::mt19937 rng(7);
  const std::vector<float> boxes = RandomBoxes(100, &rng);
  const std::vector<float> scores = RandomScores(100, false, &rng);
  const std::vector<int> all = LegacyNms(boxes.data(), scores.data(), 100, 0.5);
  ASSERT_GT(all.size(), 5u);
  EXPECT_EQ(LegacyNms(boxes.data(), scores.data(), 100, 0.5, 5),
            std::vector<int>(all.begin(), all.begin() + 5));
  EXPECT_TRUE(LegacyNms(boxes.data(), scores.data(), 100, 0.5, 0).empty());
  EXPECT_TRUE(LegacyNms(nullptr, nullptr, 0, 0.5).empty());
  EXPECT_TRUE(OverlapBitsets(nullptr, 0, 0.5).Nms(nullptr).empty());
  EXPECT_TRUE(ReduceNmsMask(nullptr, 0).empty());
}

TEST(LegacyNmsTest, GreedyMatchesReferenceOnRandomBoxes) {
  std::mt19937 rng(1);
  for (int trial = 0; trial < 40; ++trial) {
    const int n = 1 + trial * 13;
    const double threshold = trial % 2 ? 0.7 : 0.3;
    const std::vector<float> boxes = RandomBoxes(n, &rng);
    const std::vector<float> scores = RandomScores(n, trial % 3 == 0, &rng);
    EXPECT_EQ(LegacyNms(boxes.data(), scores.data(), n, threshold),
              ReferenceNms(boxes, scores, threshold))
        << "trial " << trial << " n " << n;
  }
}

TEST(LegacyNmsTest, BitsetsMatchGreedyOnRandomBoxes) {
  std::mt19937 rng(2);
  for (int trial = 0; trial < 30; ++trial) {
    const int n = 1 + trial * 11;  // crosses several 64-bit word boundaries
    const double threshold = trial % 2 ? 0.3 : 0.7;
    const std::vector<float> boxes = RandomBoxes(n, &rng);
    const OverlapBitsets bitsets(boxes.data(), n, threshold);
    ASSERT_EQ(bitsets.size(), n);
    ASSERT_EQ(bitsets.words_per_row(), (n + 63) / 64);
    for (int i = 0; i < n; ++i) {
      for (int j = 0; j < n; ++j) {
        ASSERT_EQ(bitsets.overlaps(i, j),
                  LegacySuppresses(LegacyIou(&boxes[4 * i], &boxes[4 * j]), threshold))
            << i << "," << j;
      }
    }
    for (int repeat = 0; repeat < 3; ++repeat) {
      const std::vector<float> scores = RandomScores(n, repeat == 0, &rng);
      EXPECT_EQ(bitsets.Nms(scores.data()), LegacyNms(boxes.data(), scores.data(), n, threshold))
          << "trial " << trial;
      EXPECT_EQ(bitsets.Nms(scores.data(), 3), LegacyNms(boxes.data(), scores.data(), n, threshold, 3));
    }
  }
}

// The CUDA kernel's contract, computed on the host: boxes in processing order, bit j of row i set
// when j > i and i suppresses j.
std::vector<uint64_t> CpuNmsMask(const std::vector<float>& sorted_boxes, int n, double threshold) {
  const int words = (n + 63) / 64;
  std::vector<uint64_t> mask(static_cast<size_t>(n) * words, 0);
  for (int i = 0; i < n; ++i) {
    for (int j = i + 1; j < n; ++j) {
      if (LegacySuppresses(LegacyIou(&sorted_boxes[4 * i], &sorted_boxes[4 * j]), threshold)) {
        mask[static_cast<size_t>(i) * words + j / 64] |= uint64_t{1} << (j % 64);
      }
    }
  }
  return mask;
}

TEST(LegacyNmsTest, ReduceNmsMaskMatchesGreedy) {
  std::mt19937 rng(3);
  for (int trial = 0; trial < 30; ++trial) {
    const int n = 1 + trial * 17;
    const double threshold = trial % 2 ? 0.7 : 0.3;
    const std::vector<float> boxes = RandomBoxes(n, &rng);
    const std::vector<float> scores = RandomScores(n, trial % 2 == 0, &rng);
    const std::vector<int> order = ScoreDescendingOrder(scores.data(), n);
    std::vector<float> sorted(4 * n);
    for (int k = 0; k < n; ++k) std::copy_n(&boxes[4 * order[k]], 4, &sorted[4 * k]);
    const std::vector<uint64_t> mask = CpuNmsMask(sorted, n, threshold);
    std::vector<int> kept;
    for (int position : ReduceNmsMask(mask.data(), n)) kept.push_back(order[position]);
    EXPECT_EQ(kept, LegacyNms(boxes.data(), scores.data(), n, threshold)) << "trial " << trial;
    const std::vector<int> capped = ReduceNmsMask(mask.data(), n, 4);
    EXPECT_LE(capped.size(), 4u);
  }
}

}  // namespace
}  // namespace scanserve
