// engine/detector/region_selection: generate_tsv's box policy on hand-made scores (threshold path,
// too few -> top min, too many -> top max, fixed 36, fewer proposals than 36), per-class NMS and
// the background class, and a naive per-class loop (as generate_tsv runs it) on random data.
#include "engine/detector/region_selection.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <numeric>
#include <random>
#include <vector>

#include "gtest/gtest.h"

namespace scanserve {
namespace {

// Disjoint boxes (NMS never suppresses) in a row.
std::vector<float> DisjointBoxes(int n) {
  std::vector<float> boxes;
  for (int i = 0; i < n; ++i) boxes.insert(boxes.end(), {20.0f * i, 0, 20.0f * i + 9, 9});
  return boxes;
}

// cls_prob with 3 classes; class 1 carries `conf`, class 2 a smaller value, background a big one.
std::vector<float> Probs(const std::vector<float>& conf) {
  std::vector<float> probs;
  for (float c : conf) probs.insert(probs.end(), {0.99f, c, c / 2});
  return probs;
}

RegionSelectionConfig Policy(int min_boxes, int max_boxes) {
  RegionSelectionConfig config;
  config.min_boxes = min_boxes;
  config.max_boxes = max_boxes;
  return config;
}

std::vector<int> Range(int begin, int end) {
  std::vector<int> v(end - begin);
  std::iota(v.begin(), v.end(), begin);
  return v;
}

TEST(RegionSelectionTest, ThresholdPathKeepsIndexOrder) {
  // 20 proposals, every other one at >= 0.2 plus two exactly at 0.2f: 12 pass, in [10, 100].
  std::vector<float> conf(20, 0.1f);
  for (int i = 0; i < 20; i += 2) conf[i] = 0.3f + 0.01f * i;
  conf[5] = 0.2f;
  conf[7] = 0.2f;
  const std::vector<float> boxes = DisjointBoxes(20);
  const RegionSelection s = SelectRegions(boxes.data(), Probs(conf).data(), 20, 3, Policy(10, 100));
  EXPECT_EQ(s.keep, (std::vector<int>{0, 2, 4, 5, 6, 7, 8, 10, 12, 14, 16, 18}));
  EXPECT_EQ(s.max_conf, conf);  // background (0.99) never counts
}

TEST(RegionSelectionTest, TooFewTakesTopMinBoxesByConfidence) {
  std::vector<float> conf(30);
  for (int i = 0; i < 30; ++i) conf[i] = 0.005f * i;  // 0 .. 0.145: none pass
  conf[3] = 0.5f;
  conf[20] = 0.5f;  // tie with 3: the higher index first
  const std::vector<float> boxes = DisjointBoxes(30);
  const RegionSelection s = SelectRegions(boxes.data(), Probs(conf).data(), 30, 3, Policy(10, 100));
  EXPECT_EQ(s.keep, (std::vector<int>{20, 3, 29, 28, 27, 26, 25, 24, 23, 22}));
}

TEST(RegionSelectionTest, TooManyTakesTopMaxBoxesByConfidence) {
  const int n = 150;
  std::vector<float> conf(n);
  for (int i = 0; i < n; ++i) conf[i] = 0.25f + 0.7f * ((i * 37) % n) / n;  // all pass
  const std::vector<float> boxes = DisjointBoxes(n);
  const RegionSelection s = SelectRegions(boxes.data(), Probs(conf).data(), n, 3, Policy(10, 100));
  ASSERT_EQ(s.keep.size(), 100u);
  for (size_t k = 1; k < s.keep.size(); ++k) EXPECT_GT(conf[s.keep[k - 1]], conf[s.keep[k]]);
  const float cutoff = conf[s.keep.back()];
  EXPECT_EQ(std::count_if(conf.begin(), conf.end(), [&](float c) { return c >= cutoff; }), 100);
}

TEST(RegionSelectionTest, Fixed36) {
  const std::vector<float> boxes = DisjointBoxes(50);
  std::vector<float> conf(50);
  for (int i = 0; i < 50; ++i) conf[i] = i / 100.0f;  // 0.2 .. 0.49 pass: 30 (< 36)
  RegionSelection s = SelectRegions(boxes.data(), Probs(conf).data(), 50, 3, Policy(36, 36));
  std::vector<int> expected = Range(14, 50);
  std::reverse(expected.begin(), expected.end());
  EXPECT_EQ(s.keep, expected);
  // Exactly 36 pass: index order, not confidence order.
  for (int i = 0; i < 50; ++i) conf[i] = i < 36 ? 0.2f + 0.5f * ((i * 7) % 36) / 36 : 0.1f;
  s = SelectRegions(boxes.data(), Probs(conf).data(), 50, 3, Policy(36, 36));
  EXPECT_EQ(s.keep, Range(0, 36));
}

TEST(RegionSelectionTest, FewerProposalsThanMinKeepsAllSorted) {
  const std::vector<float> conf = {0.1f, 0.7f, 0.3f, 0.7f, 0.0f};
  const std::vector<float> boxes = DisjointBoxes(5);
  const RegionSelection s = SelectRegions(boxes.data(), Probs(conf).data(), 5, 3, Policy(36, 36));
  EXPECT_EQ(s.keep, (std::vector<int>{3, 1, 2, 0, 4}));
  EXPECT_TRUE(SelectRegions(nullptr, nullptr, 0, 3, Policy(36, 36)).keep.empty());
}

TEST(RegionSelectionTest, PerClassNmsDecidesWhereAProposalCounts) {
  // Two identical boxes. Class 1: box 0 (0.9) suppresses box 1 (0.5). Class 2: box 1 (0.3) wins.
  const std::vector<float> boxes = {0, 0, 9, 9, 0, 0, 9, 9};
  const std::vector<float> probs = {0.05f, 0.9f, 0.05f,   // box 0: bg, c1, c2
                                    0.2f, 0.5f, 0.3f};    // box 1
  const RegionSelection s = SelectRegions(boxes.data(), probs.data(), 2, 3, Policy(1, 2));
  EXPECT_EQ(s.max_conf, (std::vector<float>{0.9f, 0.3f}));
  EXPECT_EQ(s.keep, (std::vector<int>{0, 1}));
}

// generate_tsv's loop: for each class, cpu_nms (stable argsort reversed), max_conf update with
// '>', then the box policy with stable argsort reversed.
RegionSelection NaiveSelect(const std::vector<float>& boxes, const std::vector<float>& probs,
                            int n, int classes, const RegionSelectionConfig& config) {
  auto descending = [](const std::vector<float>& v) {
    std::vector<int> order(v.size());
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return v[a] < v[b]; });
    std::reverse(order.begin(), order.end());
    return order;
  };
  auto area = [&](int i) {
    volatile float w = boxes[4 * i + 2] - boxes[4 * i] + 1, h = boxes[4 * i + 3] - boxes[4 * i + 1] + 1;
    return static_cast<float>(w * h);
  };
  RegionSelection result;
  result.max_conf.assign(n, 0.0f);
  std::vector<float> scores(n);
  for (int c = 1; c < classes; ++c) {
    for (int i = 0; i < n; ++i) scores[i] = probs[i * classes + c];
    const std::vector<int> order = descending(scores);
    std::vector<char> suppressed(n, 0);
    for (int oi = 0; oi < n; ++oi) {
      const int i = order[oi];
      if (suppressed[i]) continue;
      if (scores[i] > result.max_conf[i]) result.max_conf[i] = scores[i];
      for (int oj = oi + 1; oj < n; ++oj) {
        const int j = order[oj];
        volatile float w = std::max(0.0f, std::min(boxes[4 * i + 2], boxes[4 * j + 2]) -
                                               std::max(boxes[4 * i], boxes[4 * j]) + 1);
        volatile float h = std::max(0.0f, std::min(boxes[4 * i + 3], boxes[4 * j + 3]) -
                                               std::max(boxes[4 * i + 1], boxes[4 * j + 1]) + 1);
        volatile float inter = w * h;
        volatile float denom = area(i) + area(j) - inter;
        if (static_cast<double>(inter / denom) >= config.nms_threshold) suppressed[j] = 1;
      }
    }
  }
  for (int i = 0; i < n; ++i) {
    if (static_cast<double>(result.max_conf[i]) >= 0.2) result.keep.push_back(i);
  }
  const int count = static_cast<int>(result.keep.size());
  if (count < config.min_boxes || count > config.max_boxes) {
    result.keep = descending(result.max_conf);
    result.keep.resize(std::min<size_t>(result.keep.size(),
                                        count < config.min_boxes ? config.min_boxes : config.max_boxes));
  }
  return result;
}

TEST(RegionSelectionTest, MatchesNaivePerClassLoopOnRandomData) {
  struct Case {
    int n, classes, min_boxes, max_boxes;
    float logit_scale;
  };
  const std::vector<Case> cases = {
      {300, 1601, 36, 36, 4.0f}, {300, 201, 10, 100, 6.0f}, {120, 51, 10, 100, 1.0f},
      {20, 31, 36, 36, 3.0f},    {65, 101, 10, 100, 8.0f},
  };
  std::mt19937 rng(9);
  for (size_t k = 0; k < cases.size(); ++k) {
    const Case& c = cases[k];
    // Clustered boxes so the 0.3 relation is dense; some integer boxes for exact IoU hits.
    std::uniform_real_distribution<float> pos(0, 400), jitter(-15, 15), size(8, 120);
    std::vector<float> boxes;
    std::vector<std::array<float, 2>> centres(std::max(1, c.n / 20));
    for (auto& ctr : centres) ctr = {pos(rng), pos(rng)};
    for (int i = 0; i < c.n; ++i) {
      const auto& ctr = centres[i % centres.size()];
      float x = ctr[0] + jitter(rng), y = ctr[1] + jitter(rng), w = size(rng), h = size(rng);
      if (i % 2) { x = std::round(x); y = std::round(y); w = std::round(w); h = std::round(h); }
      boxes.insert(boxes.end(), {x, y, x + w, y + h});
    }
    // Softmax of random logits, a few rows peaked; some rows repeated to create exact ties.
    std::normal_distribution<float> logit(0, c.logit_scale);
    std::vector<float> probs(static_cast<size_t>(c.n) * c.classes);
    for (int i = 0; i < c.n; ++i) {
      float* row = &probs[static_cast<size_t>(i) * c.classes];
      if (i % 11 == 10) {
        std::copy_n(row - c.classes, c.classes, row);
        continue;
      }
      double total = 0;
      std::vector<double> e(c.classes);
      for (int j = 0; j < c.classes; ++j) total += e[j] = std::exp(static_cast<double>(logit(rng)));
      for (int j = 0; j < c.classes; ++j) row[j] = static_cast<float>(e[j] / total);
    }
    RegionSelectionConfig config;
    config.min_boxes = c.min_boxes;
    config.max_boxes = c.max_boxes;
    const RegionSelection fast = SelectRegions(boxes.data(), probs.data(), c.n, c.classes, config);
    const RegionSelection naive = NaiveSelect(boxes, probs, c.n, c.classes, config);
    EXPECT_EQ(fast.max_conf, naive.max_conf) << "case " << k;
    EXPECT_EQ(fast.keep, naive.keep) << "case " << k;
  }
}

}  // namespace
}  // namespace scanserve
