// attention_explain against attention weights worked out by hand for 2 words x 3 regions.
#include "engine/scoring/attention_explain.h"

#include <gtest/gtest.h>

#include <cmath>
#include <vector>

namespace scanserve {
namespace {

constexpr float kTol = 1e-6f;

// Words e1 = (1, 0), e2 = (0, 1); regions v1 = (1, 0), v2 = (0.6, 0.8), v3 = (-1, 0.5); λ1 = 4.
// A = V Eᵀ: v1 -> (1, 0), v2 -> (0.6, 0.8), v3 -> (-1, 0.5) (per region: its dot with e1, e2).
const std::vector<float> kWords = {1, 0, 0, 1};
const std::vector<float> kRegions = {1, 0, 0.6f, 0.8f, -1, 0.5f};
constexpr float kLambda = 4.0f;

std::vector<double> Softmax(std::vector<double> x) {
  double sum = 0;
  for (double& v : x) sum += (v = std::exp(v));
  for (double& v : x) v /= sum;
  return x;
}

void ExpectRow(const FloatMatrix& w, int64_t t, const std::vector<double>& expected) {
  ASSERT_EQ(w.cols, static_cast<int64_t>(expected.size()));
  for (int64_t i = 0; i < w.cols; ++i)
    EXPECT_NEAR(w.at(t, i), expected[i], kTol) << "word " << t << " region " << i;
}

absl::StatusOr<FloatMatrix> Attention(RawFeatureNorm norm) {
  return TextToImageAttention(ItemView(kWords.data(), 2), ItemView(kRegions.data(), 3), 2, norm,
                              kLambda);
}

TEST(AttentionExplainTest, ClippedL2NormByHand) {
  // LeakyReLU(0.1): v3 -> (-0.1, 0.5); l2norm per region over the words (eps added):
  // v1 -> (1, 0) / (1 + 1e-8), v2 -> (0.6, 0.8), v3 -> (-0.1, 0.5) / sqrt(0.26).
  const double n3 = std::sqrt(0.26) + 1e-8;
  auto w = Attention(RawFeatureNorm::kClippedL2Norm);
  ASSERT_TRUE(w.ok()) << w.status();
  ASSERT_EQ(w->rows, 2);
  ExpectRow(*w, 0, Softmax({4 * 1 / (1 + 1e-8), 4 * 0.6, 4 * -0.1 / n3}));
  ExpectRow(*w, 1, Softmax({0, 4 * 0.8, 4 * 0.5 / n3}));

  auto best = BestRegionPerWord(ItemView(kWords.data(), 2), ItemView(kRegions.data(), 3), 2,
                                RawFeatureNorm::kClippedL2Norm, kLambda);
  ASSERT_TRUE(best.ok());
  ASSERT_EQ(best->size(), 2u);
  EXPECT_EQ((*best)[0].region, 0);  // "e1" looks at v1
  EXPECT_EQ((*best)[1].region, 2);  // 0.5 / 0.51 beats 0.8
  EXPECT_NEAR((*best)[1].weight, w->at(1, 2), 0);
}

TEST(AttentionExplainTest, L2NormWithoutClippingPicksAnotherRegion) {
  // v3 -> (-1, 0.5) / sqrt(1.25): the word e2 now prefers v2 (0.8 > 0.447).
  const double n3 = std::sqrt(1.25) + 1e-8;
  auto w = Attention(RawFeatureNorm::kL2Norm);
  ASSERT_TRUE(w.ok());
  ExpectRow(*w, 0, Softmax({4 / (1 + 1e-8), 4 * 0.6, -4 / n3}));
  ExpectRow(*w, 1, Softmax({0, 4 * 0.8, 4 * 0.5 / n3}));
  auto best = BestRegionPerWord(ItemView(kWords.data(), 2), ItemView(kRegions.data(), 3), 2,
                                RawFeatureNorm::kL2Norm, kLambda);
  EXPECT_EQ((*best)[1].region, 1);
}

TEST(AttentionExplainTest, OtherNorms) {
  auto no_norm = Attention(RawFeatureNorm::kNoNorm);
  ExpectRow(*no_norm, 0, Softmax({4, 2.4, -4}));
  auto clipped = Attention(RawFeatureNorm::kClipped);
  ExpectRow(*clipped, 0, Softmax({4, 2.4, -0.4}));
  // softmax: per region over the words first.
  auto sm = [](double a, double b) { return std::exp(a) / (std::exp(a) + std::exp(b)); };
  auto softmax = Attention(RawFeatureNorm::kSoftmax);
  ExpectRow(*softmax, 1, Softmax({4 * sm(0, 1), 4 * sm(0.8, 0.6), 4 * sm(0.5, -1)}));
}

TEST(AttentionExplainTest, SingleRegionAndSingleWord) {
  auto w = TextToImageAttention(ItemView(kWords.data(), 1), ItemView(kRegions.data(), 1), 2,
                                RawFeatureNorm::kClippedL2Norm, 9.0f);
  ASSERT_TRUE(w.ok());
  EXPECT_FLOAT_EQ(w->at(0, 0), 1.0f);
}

TEST(AttentionExplainTest, InvalidArguments) {
  EXPECT_EQ(TextToImageAttention(ItemView(kWords.data(), 0), ItemView(kRegions.data(), 3), 2,
                                 RawFeatureNorm::kClippedL2Norm, 4)
                .status()
                .code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(TextToImageAttention(ItemView(kWords.data(), 2), ItemView(kRegions.data(), 3), 0,
                                 RawFeatureNorm::kClippedL2Norm, 4)
                .status()
                .code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(TextToImageAttention(ItemView(kWords.data(), 2), ItemView(kRegions.data(), 3), 2,
                                 RawFeatureNorm::kClippedL2Norm, NAN)
                .status()
                .code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace scanserve
