// SearchFiltered: the over-fetching top-k equals TopKPerRow over the kept columns of ScoreAll when
// the fetch holds k kept items, says so (nullopt) when it cannot, and never drops items when the
// fetch is the whole store.
#include "engine/retrieval/filtered_search.h"

#include <gtest/gtest.h>

#include <memory>
#include <random>
#include <vector>

#include "engine/scoring/cpu_scorer.h"

namespace scanserve {
namespace {

constexpr int64_t kDim = 16;

FloatMatrix RandomItem(std::mt19937& rng, int64_t rows) {
  std::normal_distribution<float> normal;
  FloatMatrix m(rows, kDim);
  for (float& v : m.data) v = normal(rng);
  return m;
}

struct Fixture {
  std::unique_ptr<CpuScorer> scorer;
  std::vector<FloatMatrix> queries;
  std::vector<ItemView> query_views;
  FloatMatrix scores;  // ScoreAll
  std::vector<int64_t> keys;
};

Fixture Make(int64_t items) {
  Fixture f;
  ScorerConfig config;
  config.dim = kDim;
  config.num_threads = 1;
  auto scorer = CpuScorer::Create(config);
  EXPECT_TRUE(scorer.ok()) << scorer.status();
  f.scorer = *std::move(scorer);
  std::mt19937 rng(7);
  std::vector<FloatMatrix> stored;
  std::vector<int64_t> keys;
  for (int64_t i = 0; i < items; ++i) {
    stored.push_back(RandomItem(rng, 2 + i % 5));
    keys.push_back(1000 + i);
  }
  std::vector<ItemView> views;
  for (const FloatMatrix& item : stored) views.emplace_back(item);
  EXPECT_TRUE(f.scorer->Add(keys, views).ok());
  for (int q = 0; q < 4; ++q) f.queries.push_back(RandomItem(rng, 3 + q));
  for (const FloatMatrix& query : f.queries) f.query_views.emplace_back(query);
  EXPECT_TRUE(f.scorer->ScoreAll(f.query_views, &f.scores).ok());
  f.keys = f.scorer->keys();
  return f;
}

// TopKPerRow over the columns whose key `keep` accepts.
std::vector<std::vector<ScoredKey>> Expected(const Fixture& f, int k, const std::function<bool(int64_t)>& keep) {
  std::vector<int64_t> columns;
  for (size_t j = 0; j < f.keys.size(); ++j) {
    if (keep(f.keys[j])) columns.push_back(static_cast<int64_t>(j));
  }
  FloatMatrix kept(f.scores.rows, static_cast<int64_t>(columns.size()));
  std::vector<int64_t> kept_keys;
  for (int64_t j : columns) kept_keys.push_back(f.keys[static_cast<size_t>(j)]);
  for (int64_t q = 0; q < f.scores.rows; ++q) {
    for (size_t c = 0; c < columns.size(); ++c) kept.at(q, static_cast<int64_t>(c)) = f.scores.at(q, columns[c]);
  }
  return TopKPerRow(kept, kept_keys, k);
}

void ExpectSame(const std::vector<std::vector<ScoredKey>>& got, const std::vector<std::vector<ScoredKey>>& want) {
  ASSERT_EQ(got.size(), want.size());
  for (size_t q = 0; q < want.size(); ++q) {
    ASSERT_EQ(got[q].size(), want[q].size()) << "query " << q;
    for (size_t r = 0; r < want[q].size(); ++r) {
      EXPECT_EQ(got[q][r].key, want[q][r].key) << "query " << q << " rank " << r;
      EXPECT_EQ(got[q][r].score, want[q][r].score);
    }
  }
}

TEST(SearchFilteredTest, OverFetchCount) {
  EXPECT_EQ(OverFetchCount(1, 1000), 65);
  EXPECT_EQ(OverFetchCount(10, 1000), 74);
  EXPECT_EQ(OverFetchCount(100, 1000), 400);
  EXPECT_EQ(OverFetchCount(100, 300), 300);
  EXPECT_EQ(OverFetchCount(5, 0), 1);
}

TEST(SearchFilteredTest, CommonFilterEqualsTheFilteredFullRanking) {
  const Fixture f = Make(400);
  const auto even = [](int64_t key) { return key % 2 == 0; };
  for (int k : {1, 5, 30}) {
    auto got = SearchFiltered(*f.scorer, f.query_views, k, even);
    ASSERT_TRUE(got.ok()) << got.status();
    ASSERT_TRUE(got->has_value()) << "half the items pass: the best " << OverFetchCount(k, 400) << " hold " << k;
    ExpectSame(**got, Expected(f, k, even));
  }
}

TEST(SearchFilteredTest, RareFilterAsksForFullScores) {
  const Fixture f = Make(400);
  // Two items pass: a fetch of 67 of 400 cannot show that there are no others.
  const auto two = [](int64_t key) { return key == 1003 || key == 1300; };
  auto got = SearchFiltered(*f.scorer, f.query_views, 3, two);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_FALSE(got->has_value());
}

TEST(SearchFilteredTest, WholeStoreFetchedReturnsWhatPasses) {
  const Fixture f = Make(50);  // k + 64 > 50: every item is fetched
  const auto two = [](int64_t key) { return key == 1003 || key == 1030; };
  auto got = SearchFiltered(*f.scorer, f.query_views, 3, two);
  ASSERT_TRUE(got.ok()) << got.status();
  ASSERT_TRUE(got->has_value());
  ExpectSame(**got, Expected(f, 3, two));
  for (const auto& row : **got) EXPECT_EQ(row.size(), 2u);
  const auto none = [](int64_t) { return false; };
  got = SearchFiltered(*f.scorer, f.query_views, 3, none);
  ASSERT_TRUE(got.ok() && got->has_value());
  for (const auto& row : **got) EXPECT_TRUE(row.empty());
}

}  // namespace
}  // namespace scanserve
