// engine/detector/proposal_layer: decode (+1 widths, no -1 on x2), clipping, the `>=` min-size
// edge, ordering and the 6000/300 caps, and a slow transcription of proposal_layer.py on random
// inputs.
#include "engine/detector/proposal_layer.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <numeric>
#include <random>
#include <vector>

#include "engine/detector/anchors.h"
#include "gtest/gtest.h"

namespace scanserve {
namespace {

using Box = std::array<float, 4>;

// Zero deltas and zero scores for a feat_h x feat_w map.
struct RpnOutputs {
  RpnOutputs(int h, int w)
      : feat_h(h), feat_w(w), fg(h * w * kNumBottomUpAnchors, 0.0f),
        deltas(h * w * kNumBottomUpAnchors * 4, 0.0f) {}
  int Index(int h, int w, int a) const { return (h * feat_w + w) * kNumBottomUpAnchors + a; }
  int feat_h, feat_w;
  std::vector<float> fg, deltas;
};

TEST(ProposalLayerTest, ZeroDeltasDecodeWithoutMinusOneAndClip) {
  RpnOutputs rpn(1, 1);
  rpn.fg[rpn.Index(0, 0, 4)] = 0.9f;  // anchor (-24, -24, 39, 39): w 64, centre 8
  const Proposals p = ComputeProposals(rpn.fg.data(), rpn.deltas.data(), 1, 1, 600, 1000, 1.0f);
  ASSERT_FALSE(p.boxes.empty());
  EXPECT_EQ(p.scores[0], 0.9f);
  // 8 -/+ 32 = (-24, 40): x2 is one past the anchor's 39 (no -1), x1 clips to 0.
  EXPECT_EQ(p.boxes[0], (Box{0, 0, 40, 40}));
}

TEST(ProposalLayerTest, DecodesDeltasOnAShiftedCell) {
  RpnOutputs rpn(4, 5);
  const int index = rpn.Index(2, 3, 5);  // anchor (-56, -56, 71, 71) + (48, 32): (-8, -24, 119, 103)
  rpn.fg[index] = 0.95f;
  rpn.deltas[4 * index + 0] = 0.25f;    // centre x 56 + 0.25 * 128 = 88
  rpn.deltas[4 * index + 1] = -0.125f;  // centre y 40 - 0.125 * 128 = 24
  const Proposals p = ComputeProposals(rpn.fg.data(), rpn.deltas.data(), 4, 5, 600, 1000, 1.0f);
  ASSERT_FALSE(p.boxes.empty());
  EXPECT_EQ(p.scores[0], 0.95f);
  EXPECT_EQ(p.boxes[0], (Box{24, 0, 152, 88}));  // y1 = 24 - 64 clipped to 0
}

TEST(ProposalLayerTest, ClipsToImageMinusOne) {
  RpnOutputs rpn(1, 1);
  const int index = rpn.Index(0, 0, 7);  // (-248, -248, 263, 263): w 512, centre 8
  rpn.fg[index] = 0.99f;
  const Proposals p = ComputeProposals(rpn.fg.data(), rpn.deltas.data(), 1, 1, 100, 200, 1.0f);
  ASSERT_FALSE(p.boxes.empty());
  EXPECT_EQ(p.boxes[0], (Box{0, 0, 199, 99}));
}

TEST(ProposalLayerTest, MinSizeKeepsWidthEqualToScaledMinimum) {
  // The anchor-4 box is (0, 0, 40, 40): width 41 = 16 * 2.5625 (exact in float32) is kept.
  RpnOutputs rpn(1, 1);
  rpn.fg[rpn.Index(0, 0, 4)] = 0.9f;
  const float edge_scale = 41.0f / 16.0f;
  Proposals p = ComputeProposals(rpn.fg.data(), rpn.deltas.data(), 1, 1, 600, 1000, edge_scale);
  ASSERT_FALSE(p.boxes.empty());
  EXPECT_EQ(p.scores[0], 0.9f);
  EXPECT_EQ(p.boxes[0], (Box{0, 0, 40, 40}));
  // One ulp larger scale: 16 * scale > 41, the box goes.
  p = ComputeProposals(rpn.fg.data(), rpn.deltas.data(), 1, 1, 600, 1000,
                       std::nextafter(edge_scale, 10.0f));
  for (float s : p.scores) EXPECT_NE(s, 0.9f);
}

TEST(ProposalLayerTest, TiesFollowTheOrderRuleInBothSorts) {
  // Four disjoint cells far apart, one anchor each; three tie at 0.5; everything else is 0.
  RpnOutputs rpn(1, 40);
  for (int w : {0, 12, 24, 36}) rpn.fg[rpn.Index(0, w, 4)] = 0.5f;
  rpn.fg[rpn.Index(0, 24, 4)] = 0.6f;
  ProposalConfig config;
  const Proposals p = ComputeProposals(rpn.fg.data(), rpn.deltas.data(), 1, 40, 600, 1000, 1.0f);
  ASSERT_GE(p.boxes.size(), 4u);
  // Anchor 4 of cell w spans x in [16w - 24, 16w + 40]. The pre-NMS sort puts the ties as
  // cells 36, 12, 0 (higher flat index first); NMS sorts that list again with the same rule
  // (higher position first), as the original's cpu_nms does, so they come out as 0, 12, 36.
  EXPECT_EQ(p.boxes[0][0], 16 * 24 - 24);
  EXPECT_EQ(p.boxes[1][0], 0);
  EXPECT_EQ(p.boxes[2][0], 16 * 12 - 24);
  EXPECT_EQ(p.boxes[3][0], 16 * 36 - 24);
  EXPECT_TRUE(std::is_sorted(p.scores.rbegin(), p.scores.rend()));
  // Which tied boxes survive the pre-NMS cap is decided by the first sort: higher index first.
  config.pre_nms_top_n = 3;
  const Proposals capped =
      ComputeProposals(rpn.fg.data(), rpn.deltas.data(), 1, 40, 600, 1000, 1.0f, config);
  ASSERT_EQ(capped.boxes.size(), 3u);
  EXPECT_EQ(capped.boxes[0][0], 16 * 24 - 24);
  EXPECT_EQ(capped.boxes[1][0], 16 * 12 - 24);
  EXPECT_EQ(capped.boxes[2][0], 16 * 36 - 24);
}

// A straightforward transcription of proposal_layer.py (TEST), numpy's stable argsort reversed for
// both sorts, and cpu_nms. volatile stops the compiler from fusing float steps.
Proposals SlowProposals(const std::vector<float>& fg, const std::vector<float>& deltas, int feat_h,
                        int feat_w, float im_h, float im_w, float im_scale,
                        const ProposalConfig& config) {
  const auto& anchors = BottomUpAnchors();
  std::vector<Box> boxes;
  std::vector<float> scores;
  for (int h = 0; h < feat_h; ++h) {
    for (int w = 0; w < feat_w; ++w) {
      for (int a = 0; a < 12; ++a) {
        const int i = (h * feat_w + w) * 12 + a;
        const float x1 = anchors[a][0] + 16 * w, y1 = anchors[a][1] + 16 * h;
        const float x2 = anchors[a][2] + 16 * w, y2 = anchors[a][3] + 16 * h;
        const float width = x2 - x1 + 1.0f, height = y2 - y1 + 1.0f;
        const float cx = x1 + 0.5f * width, cy = y1 + 0.5f * height;
        volatile float mx = deltas[4 * i] * width;
        volatile float my = deltas[4 * i + 1] * height;
        const float pcx = mx + cx, pcy = my + cy;
        const float pw = std::exp(deltas[4 * i + 2]) * width;
        const float ph = std::exp(deltas[4 * i + 3]) * height;
        Box b = {pcx - 0.5f * pw, pcy - 0.5f * ph, pcx + 0.5f * pw, pcy + 0.5f * ph};
        for (int k = 0; k < 4; ++k) b[k] = std::max(std::min(b[k], k % 2 ? im_h - 1 : im_w - 1), 0.0f);
        const float min_size = 16.0f * im_scale;
        if (b[2] - b[0] + 1 >= min_size && b[3] - b[1] + 1 >= min_size) {
          boxes.push_back(b);
          scores.push_back(fg[i]);
        }
      }
    }
  }
  std::vector<int> order(scores.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return scores[a] < scores[b]; });
  std::reverse(order.begin(), order.end());
  if (static_cast<int>(order.size()) > config.pre_nms_top_n) order.resize(config.pre_nms_top_n);
  std::vector<Box> sorted_boxes;
  std::vector<float> sorted_scores;
  for (int i : order) {
    sorted_boxes.push_back(boxes[i]);
    sorted_scores.push_back(scores[i]);
  }
  // cpu_nms over the sorted list (it argsorts again).
  const int n = static_cast<int>(sorted_scores.size());
  std::vector<int> nms_order(n);
  std::iota(nms_order.begin(), nms_order.end(), 0);
  std::stable_sort(nms_order.begin(), nms_order.end(),
                   [&](int a, int b) { return sorted_scores[a] < sorted_scores[b]; });
  std::reverse(nms_order.begin(), nms_order.end());
  auto area = [](const Box& b) {
    volatile float w = b[2] - b[0] + 1, h = b[3] - b[1] + 1;
    return static_cast<float>(w * h);
  };
  std::vector<char> suppressed(n, 0);
  Proposals out;
  for (int oi = 0; oi < n; ++oi) {
    const int i = nms_order[oi];
    if (suppressed[i]) continue;
    if (static_cast<int>(out.boxes.size()) < config.post_nms_top_n) {
      out.boxes.push_back(sorted_boxes[i]);
      out.scores.push_back(sorted_scores[i]);
    }
    const Box& bi = sorted_boxes[i];
    for (int oj = oi + 1; oj < n; ++oj) {
      const int j = nms_order[oj];
      const Box& bj = sorted_boxes[j];
      volatile float iw = std::max(0.0f, std::min(bi[2], bj[2]) - std::max(bi[0], bj[0]) + 1);
      volatile float ih = std::max(0.0f, std::min(bi[3], bj[3]) - std::max(bi[1], bj[1]) + 1);
      volatile float inter = iw * ih;
      volatile float denom = area(bi) + area(bj) - inter;
      if (static_cast<double>(inter / denom) >= config.nms_threshold) suppressed[j] = 1;
    }
  }
  return out;
}

struct RandomCase {
  int feat_h, feat_w;
  float im_h, im_w, im_scale;
  ProposalConfig config;
  bool quantised_scores;  // many exact ties
};

TEST(ProposalLayerTest, MatchesSlowTranscriptionOnRandomInputs) {
  ProposalConfig small_caps;
  small_caps.pre_nms_top_n = 500;
  small_caps.post_nms_top_n = 40;
  const std::vector<RandomCase> cases = {
      {38, 63, 600, 1000, 1.0f, {}, false},
      {38, 50, 600, 800, 1.25f, {}, true},
      {13, 21, 200, 333, 0.333f, small_caps, true},
      {5, 7, 80, 100, 2.0f, {}, false},
      {1, 1, 16, 16, 1.0f, {}, false},
  };
  std::mt19937 rng(11);
  std::normal_distribution<float> delta(0, 0.4f);
  std::uniform_real_distribution<float> uniform(0, 1);
  for (size_t c = 0; c < cases.size(); ++c) {
    const RandomCase& rc = cases[c];
    const int n = rc.feat_h * rc.feat_w * 12;
    std::vector<float> fg(n), deltas(4 * n);
    for (float& s : fg) s = rc.quantised_scores ? std::floor(uniform(rng) * 32) / 32 : uniform(rng);
    for (float& d : deltas) d = delta(rng);
    const Proposals fast = ComputeProposals(fg.data(), deltas.data(), rc.feat_h, rc.feat_w, rc.im_h,
                                            rc.im_w, rc.im_scale, rc.config);
    const Proposals slow =
        SlowProposals(fg, deltas, rc.feat_h, rc.feat_w, rc.im_h, rc.im_w, rc.im_scale, rc.config);
    EXPECT_EQ(fast.boxes, slow.boxes) << "case " << c;
    EXPECT_EQ(fast.scores, slow.scores) << "case " << c;
    EXPECT_LE(static_cast<int>(fast.boxes.size()), rc.config.post_nms_top_n);
    if (c == 0) EXPECT_EQ(fast.boxes.size(), 300u) << "the 300 cap binds on a full 38x63 map";
  }
}

TEST(ProposalLayerTest, PreNmsCapTruncatesBeforeNms) {
  // Disjoint tiny maps: with pre_nms_top_n = 3 only the 3 best can come out.
  RpnOutputs rpn(1, 40);
  const float scores[4] = {0.1f, 0.2f, 0.3f, 0.4f};
  for (int w = 0; w < 40; w += 12) rpn.fg[rpn.Index(0, w, 4)] = scores[w / 12];
  ProposalConfig config;
  config.pre_nms_top_n = 3;
  const Proposals p = ComputeProposals(rpn.fg.data(), rpn.deltas.data(), 1, 40, 600, 1000, 1.0f, config);
  ASSERT_EQ(p.scores.size(), 3u);
  EXPECT_EQ(p.scores, (std::vector<float>{0.4f, 0.3f, 0.2f}));
  config.pre_nms_top_n = 6000;
  config.post_nms_top_n = 2;
  EXPECT_EQ(ComputeProposals(rpn.fg.data(), rpn.deltas.data(), 1, 40, 600, 1000, 1.0f, config).scores,
            (std::vector<float>{0.4f, 0.3f}));
}

TEST(ProposalLayerTest, EmptyMap) {
  const Proposals p = ComputeProposals(nullptr, nullptr, 0, 0, 600, 1000, 1.0f);
  EXPECT_TRUE(p.boxes.empty());
  EXPECT_TRUE(p.scores.empty());
}

}  // namespace
}  // namespace scanserve
