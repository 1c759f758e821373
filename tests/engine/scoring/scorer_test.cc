// The Scorer base class: argument validation (shared by every backend), TopKPerRow, MakeScorer.
#include <cmath>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "scoring_test_util.h"

namespace scanserve {
namespace {

using testing_util::ItemGenerator;
using testing_util::Views;

ScorerConfig Config(int64_t dim = 8) {
  ScorerConfig c;
  c.dim = dim;
  c.num_threads = 2;
  return c;
}

class ValidationTest : public ::testing::TestWithParam<ScorerBackend> {
 protected:
  void SetUp() override {
    auto s = MakeScorer(GetParam(), Config());
    if (GetParam() == ScorerBackend::kCuda &&
        s.status().code() == absl::StatusCode::kFailedPrecondition) {
      GTEST_SKIP() << "no CUDA device: " << s.status().message();
    }
    ASSERT_TRUE(s.ok()) << s.status();
    scorer_ = std::move(s).value();
  }

  // Expects INVALID_ARGUMENT whose message contains `needle`.
  static void ExpectInvalid(const absl::Status& st, const std::string& needle) {
    EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << st;
    EXPECT_NE(st.message().find(needle), absl::string_view::npos) << st;
  }

  std::unique_ptr<Scorer> scorer_;
  ItemGenerator gen_{8, 11};
};

TEST_P(ValidationTest, AddSizesMismatch) {
  FloatMatrix a = gen_.Item(2);
  ExpectInvalid(scorer_->Add({1, 2}, {ItemView(a)}), "2 keys but 1 items");
}

TEST_P(ValidationTest, AddNullData) {
  ExpectInvalid(scorer_->Add({1}, {ItemView(nullptr, 3)}), "null data");
}

TEST_P(ValidationTest, AddRowsOutOfRange) {
  FloatMatrix a = gen_.Item(1);
  ExpectInvalid(scorer_->Add({1}, {ItemView(a.data.data(), 0)}), "0 rows");
  ExpectInvalid(scorer_->Add({1}, {ItemView(a.data.data(), Scorer::kMaxRows + 1)}), "rows");
  ExpectInvalid(scorer_->Add({1}, {ItemView(a.data.data(), -3)}), "-3 rows");
}

TEST_P(ValidationTest, AddDuplicateKeysChangesNothing) {
  FloatMatrix a = gen_.Item(2), b = gen_.Item(3);
  ExpectInvalid(scorer_->Add({5, 5}, {ItemView(a), ItemView(b)}), "key 5 appears more than once");
  EXPECT_EQ(scorer_->size(), 0);
}

TEST_P(ValidationTest, AddWithOneBadItemChangesNothing) {
  FloatMatrix a = gen_.Item(2);
  ASSERT_TRUE(scorer_->Add({1}, {ItemView(a)}).ok());
  ExpectInvalid(scorer_->Add({2, 3}, {ItemView(a), ItemView(nullptr, 2)}), "item 1");
  EXPECT_EQ(scorer_->keys(), std::vector<int64_t>{1});
}

TEST_P(ValidationTest, AddEmptyIsOk) {
  EXPECT_TRUE(scorer_->Add({}, {}).ok());
  EXPECT_EQ(scorer_->size(), 0);
}

TEST_P(ValidationTest, ScoreAllArguments) {
  FloatMatrix q = gen_.Item(3);
  ExpectInvalid(scorer_->ScoreAll({ItemView(q)}, nullptr), "null");
  FloatMatrix out;
  ExpectInvalid(scorer_->ScoreAll({}, &out), "no queries");
  ExpectInvalid(scorer_->ScoreAll({ItemView(q), ItemView(nullptr, 2)}, &out), "item 1");
  ExpectInvalid(scorer_->ScoreAll({ItemView(q.data.data(), 0)}, &out), "0 rows");
}

TEST_P(ValidationTest, SearchArguments) {
  FloatMatrix q = gen_.Item(3);
  ExpectInvalid(scorer_->Search({ItemView(q)}, 0).status(), "k must be >= 1");
  ExpectInvalid(scorer_->Search({ItemView(q)}, -2).status(), "k must be >= 1");
  ExpectInvalid(scorer_->Search({}, 3).status(), "no queries");
  ExpectInvalid(scorer_->Search({ItemView(nullptr, 1)}, 3).status(), "null data");
}

TEST_P(ValidationTest, RemoveArguments) {
  FloatMatrix a = gen_.Item(2);
  ASSERT_TRUE(scorer_->Add({1, 2}, {ItemView(a), ItemView(a)}).ok());
  ExpectInvalid(scorer_->Remove({1, 1}), "key 1 appears more than once");
  const absl::Status st = scorer_->Remove({2, 3});
  EXPECT_EQ(st.code(), absl::StatusCode::kNotFound) << st;
  EXPECT_NE(st.message().find("key 3"), absl::string_view::npos) << st;
  EXPECT_EQ(scorer_->size(), 2);
  EXPECT_TRUE(scorer_->Remove({}).ok());
  EXPECT_TRUE(scorer_->Remove({1, 2}).ok());
  EXPECT_EQ(scorer_->size(), 0);
}

INSTANTIATE_TEST_SUITE_P(Scoring, ValidationTest,
                         ::testing::Values(ScorerBackend::kCpu, ScorerBackend::kReference
#ifdef SCANSERVE_WITH_CUDA
                                           ,
                                           ScorerBackend::kCuda
#endif
                                           ),
                         [](const auto& info) {
                           switch (info.param) {
                             case ScorerBackend::kCpu:
                               return std::string("Cpu");
                             case ScorerBackend::kReference:
                               return std::string("Reference");
                             default:
                               return std::string("Cuda");
                           }
                         });

TEST(ScorerConfigValidation, RejectsBadConfigs) {
  ScorerConfig c = Config();
  c.dim = 0;
  EXPECT_EQ(MakeScorer(ScorerBackend::kCpu, c).status().code(), absl::StatusCode::kInvalidArgument);
  c = Config();
  c.num_threads = -1;
  EXPECT_EQ(MakeScorer(ScorerBackend::kCpu, c).status().code(), absl::StatusCode::kInvalidArgument);
  c = Config();
  c.attention.lambda_lse = 0.0f;
  EXPECT_EQ(MakeScorer(ScorerBackend::kReference, c).status().code(),
            absl::StatusCode::kInvalidArgument);
  c.attention.pooling = Pooling::kMean;  // λ2 unused
  EXPECT_TRUE(MakeScorer(ScorerBackend::kCpu, c).ok());
  c = Config();
  c.attention.lambda_softmax = std::numeric_limits<float>::quiet_NaN();
  EXPECT_EQ(MakeScorer(ScorerBackend::kCpu, c).status().code(), absl::StatusCode::kInvalidArgument);
  CpuScorerOptions o;
  o.block_rows = 0;
  EXPECT_EQ(CpuScorer::Create(Config(), o).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(MakeScorerTest, CudaAvailability) {
  auto s = MakeScorer(ScorerBackend::kCuda, Config());
#ifndef SCANSERVE_WITH_CUDA
  EXPECT_EQ(s.status().code(), absl::StatusCode::kUnimplemented) << s.status();
  EXPECT_NE(s.status().message().find("built without CUDA"), absl::string_view::npos);
#else
  // Built with CUDA: a scorer where a device is usable, else FAILED_PRECONDITION saying why.
  if (s.ok()) {
    EXPECT_EQ((*s)->size(), 0);
    return;
  }
  EXPECT_EQ(s.status().code(), absl::StatusCode::kFailedPrecondition) << s.status();
  EXPECT_NE(s.status().message().find("no CUDA device"), absl::string_view::npos) << s.status();
#endif
}

TEST(MakeScorerTest, ReferenceBf16Rejected) {
  ScorerConfig c = Config();
  c.storage = StorageType::kBFloat16;
  EXPECT_EQ(MakeScorer(ScorerBackend::kReference, c).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(MakeScorer(ScorerBackend::kCpu, c).ok());
}

// ---------------------------------------------------------------------------------------------

TEST(TopKPerRowTest, OrderAndTies) {
  FloatMatrix s(2, 5);
  s.data = {0.5f, 0.9f, 0.5f, 0.1f, 0.9f,   //
            -1.f, -2.f, -3.f, -4.f, -5.f};
  const std::vector<int64_t> keys = {30, 20, 10, 40, 5};
  auto top = TopKPerRow(s, keys, 3);
  ASSERT_EQ(top.size(), 2u);
  ASSERT_EQ(top[0].size(), 3u);
  // 0.9 twice: key 5 before key 20; then 0.5 twice: key 10 before key 30.
  EXPECT_EQ(top[0][0].key, 5);
  EXPECT_EQ(top[0][1].key, 20);
  EXPECT_EQ(top[0][2].key, 10);
  EXPECT_FLOAT_EQ(top[0][2].score, 0.5f);
  EXPECT_EQ(top[1][0].key, 30);
  EXPECT_EQ(top[1][2].key, 10);
}

TEST(TopKPerRowTest, KLargerThanColumnsAndZero) {
  FloatMatrix s(1, 3);
  s.data = {0.2f, 0.3f, 0.1f};
  auto top = TopKPerRow(s, {1, 2, 3}, 10);
  ASSERT_EQ(top[0].size(), 3u);
  EXPECT_EQ(top[0][0].key, 2);
  EXPECT_EQ(top[0][2].key, 3);
  EXPECT_TRUE(TopKPerRow(s, {1, 2, 3}, 0)[0].empty());
  FloatMatrix empty(4, 0);
  auto none = TopKPerRow(empty, {}, 5);
  ASSERT_EQ(none.size(), 4u);
  EXPECT_TRUE(none[3].empty());
}

TEST(TopKPerRowTest, NanRanksLast) {
  FloatMatrix s(1, 4);
  s.data = {std::nanf(""), -0.5f, std::nanf(""), 0.25f};
  auto top = TopKPerRow(s, {1, 2, 3, 4}, 4);
  ASSERT_EQ(top[0].size(), 4u);
  EXPECT_EQ(top[0][0].key, 4);
  EXPECT_EQ(top[0][1].key, 2);
  EXPECT_EQ(top[0][2].key, 1);
  EXPECT_EQ(top[0][3].key, 3);
}

TEST(TopKPerRowTest, MatchesFullSort) {
  std::mt19937 rng(3);
  std::uniform_int_distribution<int> val(0, 20);  // many ties
  FloatMatrix s(3, 500);
  for (float& x : s.data) x = static_cast<float>(val(rng)) / 20.0f;
  std::vector<int64_t> keys(500);
  for (int i = 0; i < 500; ++i) keys[i] = (i * 7919) % 1000;
  for (int k : {1, 7, 499, 500}) {
    auto top = TopKPerRow(s, keys, k);
    for (int r = 0; r < 3; ++r) {
      std::vector<std::pair<float, int64_t>> all;
      for (int i = 0; i < 500; ++i) all.push_back({-s.at(r, i), keys[i]});
      std::sort(all.begin(), all.end());
      ASSERT_EQ(top[r].size(), static_cast<size_t>(k));
      for (int i = 0; i < k; ++i) EXPECT_EQ(top[r][i].key, all[i].second) << "k " << k;
    }
  }
}

}  // namespace
}  // namespace scanserve
