// The oracle itself, checked against numbers derived by hand on a tiny case (2 regions, 2 words,
// d = 2), and the CPU scorer on the same numbers in every stored-kind arrangement.
#include <memory>
#include <vector>

#include "gtest/gtest.h"
#include "scoring_test_util.h"

namespace scanserve {
namespace {

// Absolute tolerance for the hand-derived values (printed to 7 decimals below).
constexpr double kHandTol = 2e-6;

// The image: two regions, the unit axes.        v0 = (1, 0), v1 = (0, 1)
// The caption: two words; w0 has norm 2.        e0 = (1.2, 1.6), e1 = (-0.8, 0.6)
const std::vector<float> kRegions = {1.0f, 0.0f, 0.0f, 1.0f};
const std::vector<float> kWords = {1.2f, 1.6f, -0.8f, 0.6f};

// t2i (words attend over regions), clipped_l2norm, λ1 = 9:
//   S = V Eᵀ (region x word):     v0: ( 1.2, -0.8 )      v1: ( 1.6, 0.6 )
//   LeakyReLU(0.1):               v0: ( 1.2, -0.08)      v1: ( 1.6, 0.6 )
//   l2norm over the words:        |v0 row| = sqrt(1.44 + 0.0064) = 1.2026637
//                                 |v1 row| = sqrt(2.56 + 0.36)   = 1.7088007
//                                 v0: ( 0.9977851, -0.0665190)  v1: (0.9363292, 0.3511234)
//   word 0: softmax over regions of 9·(0.9977851, 0.9363292): w = (0.6348554, 0.3651446)
//           a0 = w0 v0 + w1 v1 = (0.6348554, 0.3651446), |a0| = 0.7323728, |e0| = 2
//           R0 = (1.2·0.6348554 + 1.6·0.3651446) / (2 · 0.7323728) = 0.9189686
//   word 1: softmax of 9·(-0.0665190, 0.3511234):           w = (0.0227810, 0.9772190)
//           a1 = (0.0227810, 0.9772190), |a1| = 0.9774845, |e1| = 1
//           R1 = (-0.8·0.0227810 + 0.6·0.9772190) / 0.9774845 = 0.5811924
//   LogSumExp, λ2 = 6: log(exp(6·0.9189686) + exp(6·0.5811924)) / 6 = 0.9395999
//   Mean: (0.9189686 + 0.5811924) / 2 = 0.7500805
constexpr double kT2iR0 = 0.9189686, kT2iR1 = 0.5811924;
constexpr double kT2iLse6 = 0.9395999;
constexpr double kT2iMean = 0.7500805;

// i2t (regions attend over words), clipped_l2norm, λ1 = 4:
//   A = E Vᵀ (word x region):     e0: ( 1.2, 1.6 )       e1: (-0.8, 0.6 )
//   LeakyReLU(0.1):               e0: ( 1.2, 1.6 )       e1: (-0.08, 0.6)
//   l2norm over the regions:      e0: (0.6, 0.8)         e1: (-0.1321637, 0.9912279)
//   region 0: softmax over words of 4·(0.6, -0.1321637):     w = (0.9492449, 0.0507551)
//             a0 = w0 e0 + w1 e1 = (1.0984898, 1.5492449), |a0| = 1.8991846
//             R0 = 1.0984898 / 1.8991846 = 0.5784058
//   region 1: softmax over words of 4·(0.8, 0.9912279):      w = (0.3175809, 0.6824191)
//             a1 = (-0.1648383, 0.9175809), |a1| = 0.9322696
//             R1 = 0.9175809 / 0.9322696 = 0.9842443
//   Mean: 0.7813250;  Max: 0.9842443;  Sum: 1.5626501
constexpr double kI2tMean = 0.7813250;
constexpr double kI2tMax = 0.9842443;
constexpr double kI2tSum = 1.5626501;

ScorerConfig HandConfig(ItemKind stored, CrossAttention cross, Pooling pooling, float l1,
                        float l2) {
  ScorerConfig c;
  c.dim = 2;
  c.stored_kind = stored;
  c.attention.cross_attn = cross;
  c.attention.raw_feature_norm = RawFeatureNorm::kClippedL2Norm;
  c.attention.pooling = pooling;
  c.attention.lambda_softmax = l1;
  c.attention.lambda_lse = l2;
  c.num_threads = 1;
  return c;
}

// Scores the hand pair through `backend`, storing the image or the caption.
double ScoreHandPair(ScorerBackend backend, ItemKind stored, CrossAttention cross, Pooling pooling,
                     float l1, float l2) {
  auto scorer = MakeScorer(backend, HandConfig(stored, cross, pooling, l1, l2));
  EXPECT_TRUE(scorer.ok()) << scorer.status();
  if (!scorer.ok()) return -1e9;
  const ItemView image(kRegions.data(), 2);
  const ItemView caption(kWords.data(), 2);
  const ItemView item = stored == ItemKind::kImage ? image : caption;
  const ItemView query = stored == ItemKind::kImage ? caption : image;
  EXPECT_TRUE((*scorer)->Add({42}, {item}).ok());
  FloatMatrix scores;
  const absl::Status st = (*scorer)->ScoreAll({query}, &scores);
  EXPECT_TRUE(st.ok()) << st;
  if (!st.ok() || scores.rows != 1 || scores.cols != 1) return -1e9;
  return scores.at(0, 0);
}

class HandCaseTest : public ::testing::TestWithParam<std::tuple<ScorerBackend, ItemKind>> {};

TEST_P(HandCaseTest, TextToImage) {
  const auto [backend, stored] = GetParam();
  EXPECT_NEAR(ScoreHandPair(backend, stored, CrossAttention::kTextToImage, Pooling::kLogSumExp, 9, 6),
              kT2iLse6, kHandTol);
  EXPECT_NEAR(ScoreHandPair(backend, stored, CrossAttention::kTextToImage, Pooling::kMean, 9, 6),
              kT2iMean, kHandTol);
  EXPECT_NEAR(ScoreHandPair(backend, stored, CrossAttention::kTextToImage, Pooling::kMax, 9, 6),
              std::max(kT2iR0, kT2iR1), kHandTol);
}

TEST_P(HandCaseTest, ImageToText) {
  const auto [backend, stored] = GetParam();
  EXPECT_NEAR(ScoreHandPair(backend, stored, CrossAttention::kImageToText, Pooling::kMean, 4, 5),
              kI2tMean, kHandTol);
  EXPECT_NEAR(ScoreHandPair(backend, stored, CrossAttention::kImageToText, Pooling::kMax, 4, 5),
              kI2tMax, kHandTol);
  EXPECT_NEAR(ScoreHandPair(backend, stored, CrossAttention::kImageToText, Pooling::kSum, 4, 5),
              kI2tSum, kHandTol);
}

INSTANTIATE_TEST_SUITE_P(
    Scoring, HandCaseTest,
    ::testing::Combine(::testing::Values(ScorerBackend::kReference, ScorerBackend::kCpu),
                       ::testing::Values(ItemKind::kImage, ItemKind::kCaption)),
    [](const auto& info) {
      return std::string(std::get<0>(info.param) == ScorerBackend::kCpu ? "Cpu" : "Reference") +
             (std::get<1>(info.param) == ItemKind::kImage ? "_StoredImage" : "_StoredCaption");
    });

TEST(ReferenceScorer, RejectsBf16) {
  ScorerConfig c;
  c.storage = StorageType::kBFloat16;
  auto s = ReferenceScorer::Create(c);
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.status().message().find("fp32"), absl::string_view::npos) << s.status();
}

TEST(ReferenceScorer, GroupsByRowCountKeepColumnOrder) {
  // Items of different row counts land in different bmm groups; columns follow keys().
  testing_util::ItemGenerator gen(8, 4);
  std::vector<FloatMatrix> items = {gen.Item(3), gen.Item(5), gen.Item(3), gen.Item(1)};
  std::vector<FloatMatrix> q = {gen.Item(4)};
  ScorerConfig c;
  c.dim = 8;
  auto grouped = ReferenceScorer::Create(c);
  ASSERT_TRUE(grouped.ok());
  ASSERT_TRUE((*grouped)->Add({4, 3, 2, 1}, testing_util::Views(items)).ok());
  EXPECT_EQ((*grouped)->keys(), (std::vector<int64_t>{4, 3, 2, 1}));
  FloatMatrix all;
  ASSERT_TRUE((*grouped)->ScoreAll(testing_util::Views(q), &all).ok());
  for (int i = 0; i < 4; ++i) {
    auto single = ReferenceScorer::Create(c);
    ASSERT_TRUE(single.ok());
    ASSERT_TRUE((*single)->Add({7}, {ItemView(items[i])}).ok());
    FloatMatrix one;
    ASSERT_TRUE((*single)->ScoreAll(testing_util::Views(q), &one).ok());
    EXPECT_NEAR(one.at(0, 0), all.at(0, i), 1e-6) << "item " << i;
  }
}

}  // namespace
}  // namespace scanserve
