// SearchTopLists / RankFromTopLists: answers from the scorers' own top lists equal, bit for bit,
// TopKPerRow over the model-averaged, filtered ScoreAll: one model with filters, two-model
// ensembles with and without filters, exact ties, undecided queries ranked in full. The scorers here serve a table of scores, so that every pair's score is the same in
// every call (real scorers agree only to rounding across batches) and ties can be exact.
#include "engine/retrieval/top_list_search.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <memory>
#include <numeric>
#include <random>
#include <vector>

#include "engine/retrieval/model_mean.h"

namespace scanserve {
namespace {

constexpr int64_t kDim = 4;
constexpr int kQueries = 4;

// Scores from a table (queries x items, item i under key 1000 + i). A query is an item whose
// first value is its row in the table. Records the k of every Search.
class TableScorer final : public Scorer {
 public:
  explicit TableScorer(FloatMatrix table) : Scorer(Config()), table_(std::move(table)) {}
  int64_t size() const override { return table_.cols; }
  std::vector<int64_t> keys() const override {
    std::vector<int64_t> keys(static_cast<size_t>(table_.cols));
    std::iota(keys.begin(), keys.end(), int64_t{1000});
    return keys;
  }
  int64_t memory_bytes() const override { return 0; }
  mutable std::vector<int> search_ks;

 protected:
  absl::Status AddImpl(absl::Span<const int64_t>, absl::Span<const ItemView>) override {
    return absl::UnimplementedError("read-only");
  }
  absl::Status RemoveImpl(absl::Span<const int64_t>) override {
    return absl::UnimplementedError("read-only");
  }
  bool Contains(int64_t) const override { return false; }
  absl::Status ScoreAllImpl(absl::Span<const ItemView> queries, FloatMatrix* scores) const override {
    for (size_t j = 0; j < queries.size(); ++j) {
      const int64_t row = static_cast<int64_t>(queries[j].data[0]);
      std::copy_n(table_.row(row), table_.cols, scores->row(static_cast<int64_t>(j)));
    }
    return absl::OkStatus();
  }
  absl::StatusOr<std::vector<std::vector<ScoredKey>>> SearchImpl(absl::Span<const ItemView> queries,
                                                                 int k) const override {
    search_ks.push_back(k);
    return Scorer::SearchImpl(queries, k);
  }

 private:
  static ScorerConfig Config() {
    ScorerConfig config;
    config.dim = kDim;
    return config;
  }
  FloatMatrix table_;
};

struct Model {
  std::unique_ptr<TableScorer> scorer;
  std::vector<FloatMatrix> queries;
  std::vector<ItemView> query_views;
};

// `models` table scorers over `items` items. Model 0's scores are uniform in [0, 1); model m > 0
// adds noise of `noise` to them (small: models that mostly agree, like a SCAN t2i / i2t pair;
// large: unrelated). With `step` > 0 every score is rounded to a multiple of it, so that scores
// and their means tie exactly.
std::vector<Model> MakeModels(int models, int64_t items, float noise, float step = 0.0f) {
  std::mt19937 rng(7);
  std::uniform_real_distribution<float> uniform(0.0f, 1.0f);
  std::normal_distribution<float> normal;
  FloatMatrix base(kQueries, items);
  for (float& v : base.data) v = uniform(rng);
  std::vector<Model> out(static_cast<size_t>(models));
  for (int m = 0; m < models; ++m) {
    FloatMatrix table = base;
    for (float& v : table.data) {
      if (m > 0) v += noise * normal(rng);
      if (step > 0.0f) v = step * std::round(v / step);
    }
    Model& model = out[static_cast<size_t>(m)];
    model.scorer = std::make_unique<TableScorer>(std::move(table));
    for (int q = 0; q < kQueries; ++q) {
      FloatMatrix query(1, kDim);
      query.at(0, 0) = static_cast<float>(q);
      model.queries.push_back(std::move(query));
    }
    for (const FloatMatrix& query : model.queries) model.query_views.emplace_back(query);
  }
  return out;
}

// One model per row of `scores` (the scores of items 1000, 1001, ...), the same for every query.
std::vector<Model> ModelsOfScores(const std::vector<std::vector<float>>& scores) {
  std::vector<Model> out = MakeModels(static_cast<int>(scores.size()), 0, 0.0f);
  for (size_t m = 0; m < scores.size(); ++m) {
    FloatMatrix table(kQueries, static_cast<int64_t>(scores[m].size()));
    for (int q = 0; q < kQueries; ++q) std::copy(scores[m].begin(), scores[m].end(), table.row(q));
    out[m].scorer = std::make_unique<TableScorer>(std::move(table));
  }
  return out;
}

TopListSearch SearchOf(const std::vector<Model>& models, int k, int64_t fetch,
                       std::function<bool(int64_t)> keep = {}) {
  TopListSearch search;
  for (const Model& model : models) {
    search.scorers.push_back(model.scorer.get());
    search.queries.push_back(model.query_views);
  }
  search.k = k;
  search.fetch = fetch;
  search.keep = std::move(keep);
  return search;
}

// TopKPerRow over the model mean of every model's ScoreAll, restricted to what `keep` passes,
// for the queries `indices`.
std::vector<std::vector<ScoredKey>> FullRanking(const std::vector<Model>& models, int k,
                                                const std::function<bool(int64_t)>& keep,
                                                absl::Span<const int> indices) {
  std::vector<FloatMatrix> scores(models.size());
  for (size_t m = 0; m < models.size(); ++m) {
    std::vector<ItemView> queries;
    for (int j : indices) queries.push_back(models[m].query_views[static_cast<size_t>(j)]);
    EXPECT_TRUE(models[m].scorer->ScoreAll(queries, &scores[m]).ok());
  }
  const std::vector<int64_t> keys = models[0].scorer->keys();
  std::vector<int64_t> columns;
  for (size_t c = 0; c < keys.size(); ++c) {
    if (!keep || keep(keys[c])) columns.push_back(static_cast<int64_t>(c));
  }
  FloatMatrix mean(static_cast<int64_t>(indices.size()), static_cast<int64_t>(columns.size()));
  std::vector<int64_t> kept_keys;
  for (int64_t c : columns) kept_keys.push_back(keys[static_cast<size_t>(c)]);
  std::vector<float> per_model(models.size());
  for (int64_t q = 0; q < mean.rows; ++q) {
    for (size_t i = 0; i < columns.size(); ++i) {
      for (size_t m = 0; m < models.size(); ++m) per_model[m] = scores[m].at(q, columns[i]);
      mean.at(q, static_cast<int64_t>(i)) = ModelMean(per_model);
    }
  }
  return TopKPerRow(mean, kept_keys, k);
}

std::vector<int> AllQueries() {
  std::vector<int> all(kQueries);
  std::iota(all.begin(), all.end(), 0);
  return all;
}

void ExpectSame(const std::vector<ScoredKey>& got, const std::vector<ScoredKey>& want, int query) {
  ASSERT_EQ(got.size(), want.size()) << "query " << query;
  for (size_t r = 0; r < want.size(); ++r) {
    EXPECT_EQ(got[r].key, want[r].key) << "query " << query << " rank " << r;
    EXPECT_EQ(got[r].score, want[r].score) << "query " << query << " rank " << r;
  }
}

// RankFromTopLists against the full ranking; returns the queries it ranked in full.
std::vector<int> ExpectRankedExactly(const std::vector<Model>& models, int k, int64_t fetch,
                                     const std::function<bool(int64_t)>& keep = {}) {
  std::vector<int> ranked_in_full;
  auto got = RankFromTopLists(SearchOf(models, k, fetch, keep),
                              [&](absl::Span<const int> indices)
                                  -> absl::StatusOr<std::vector<std::vector<ScoredKey>>> {
                                ranked_in_full.assign(indices.begin(), indices.end());
                                return FullRanking(models, k, keep, indices);
                              });
  EXPECT_TRUE(got.ok()) << got.status();
  if (!got.ok()) return ranked_in_full;
  const std::vector<std::vector<ScoredKey>> want = FullRanking(models, k, keep, AllQueries());
  EXPECT_EQ(got->size(), want.size());
  for (size_t q = 0; q < want.size() && q < got->size(); ++q) {
    ExpectSame((*got)[q], want[q], static_cast<int>(q));
  }
  return ranked_in_full;
}

TEST(TopListSearchTest, OneModelCommonFilterIsDecidedInOneFetch) {
  const std::vector<Model> models = MakeModels(1, 400, 0.0f);
  const auto even = [](int64_t key) { return key % 2 == 0; };
  for (int k : {1, 5, 30}) {
    models[0].scorer->search_ks.clear();
    EXPECT_TRUE(ExpectRankedExactly(models, k, 64, even).empty())
        << "half the items pass: the best 64 hold " << k;
    EXPECT_EQ(models[0].scorer->search_ks, std::vector<int>{64}) << "one Search, as deep as asked";
  }
}

TEST(TopListSearchTest, OneModelFilterDecidedByItemsFarDownTheList) {
  std::vector<Model> models = MakeModels(1, 400, 0.0f);
  // The items ranked 100..109 for query 0: far below k = 3, within a fetch of 256.
  const std::vector<ScoredKey> ranking = FullRanking(models, 400, {}, AllQueries())[0];
  std::vector<int64_t> passing;
  for (int r = 100; r < 110; ++r) passing.push_back(ranking[static_cast<size_t>(r)].key);
  const auto keep = [&](int64_t key) {
    return std::find(passing.begin(), passing.end(), key) != passing.end();
  };
  for (int64_t fetch : {256, 100}) {
    auto found = SearchTopLists(SearchOf(models, 3, fetch, keep));
    ASSERT_TRUE(found.ok()) << found.status();
    if (fetch == 256) {
      ASSERT_TRUE((*found)[0].has_value()) << "the fetch holds all ten passing items";
      ExpectSame(*(*found)[0], FullRanking(models, 3, keep, {0})[0], 0);
    } else {
      EXPECT_FALSE((*found)[0].has_value()) << "none of the best 100 passes";
    }
  }
}

TEST(TopListSearchTest, RareFilterIsRankedInFull) {
  const std::vector<Model> models = MakeModels(1, 400, 0.0f);
  // Two items pass: no fetch short of the whole store shows that there are no others.
  const auto two = [](int64_t key) { return key == 1003 || key == 1300; };
  auto found = SearchTopLists(SearchOf(models, 3, 100, two));
  ASSERT_TRUE(found.ok()) << found.status();
  for (const auto& query : *found) EXPECT_FALSE(query.has_value());
  EXPECT_EQ(ExpectRankedExactly(models, 3, 100, two), AllQueries());
}

TEST(TopListSearchTest, WholeStoreFetchedReturnsWhatPasses) {
  const std::vector<Model> models = MakeModels(2, 50, 0.5f);  // 256 > 50: all fetched
  const auto two = [](int64_t key) { return key == 1003 || key == 1030; };
  EXPECT_TRUE(ExpectRankedExactly(models, 3, 256, two).empty());
  auto found = SearchTopLists(SearchOf(models, 3, 256, [](int64_t) { return false; }));
  ASSERT_TRUE(found.ok()) << found.status();
  for (const auto& query : *found) {
    ASSERT_TRUE(query.has_value());
    EXPECT_TRUE(query->empty());
  }
}

TEST(TopListSearchTest, EnsembleOfRelatedModelsIsDecidedFromTheLists) {
  // Like a SCAN t2i / i2t pair: two models that mostly agree. Their top lists settle the mean.
  const std::vector<Model> models = MakeModels(2, 2000, 0.05f);
  for (int k : {1, 10}) {
    EXPECT_TRUE(ExpectRankedExactly(models, k, 256).empty()) << "k = " << k;
  }
  for (const Model& model : models) {
    for (int k : model.scorer->search_ks) EXPECT_LE(k, 256);
  }
}

TEST(TopListSearchTest, EnsembleOfUnrelatedModelsStaysExact) {
  // Unrelated models: the lists decide less often; whatever they leave is ranked in full.
  const std::vector<Model> models = MakeModels(2, 2000, 1.0f);
  for (int k : {1, 10, 50}) ExpectRankedExactly(models, k, 256);
  for (int k : {1, 10}) ExpectRankedExactly(models, k, k);  // no room to over-fetch
}

TEST(TopListSearchTest, EnsembleWithFilter) {
  const std::vector<Model> models = MakeModels(2, 1000, 0.05f);
  const auto third = [](int64_t key) { return key % 3 == 0; };
  for (int k : {1, 5, 20}) ExpectRankedExactly(models, k, 256, third);
}

TEST(TopListSearchTest, TiesAreBrokenByTheSmallerKey) {
  // Scores in steps of 1/64: a dozen items share each score (and each mean), across the edges of
  // the fetches too.
  for (int num_models : {1, 2}) {
    const std::vector<Model> models = MakeModels(num_models, 800, 0.05f, 1.0f / 64);
    for (int k : {1, 10, 45}) ExpectRankedExactly(models, k, 256);
    for (int k : {1, 10}) ExpectRankedExactly(models, k, k);
    ExpectRankedExactly(models, 10, 256, [](int64_t key) { return key % 2 == 1; });
  }
}

TEST(TopListSearchTest, ATieHiddenBelowAListIsRankedInFull) {
  // Fetching 2: model 0 lists 1001 (0.75) and 1002 (0.5); model 1 lists 1002 (0.5) and 1000
  // (0.25, before 1001's equal 0.25 by key). 1002's mean, 0.5, is known; 1001's is at most
  // (0.75 + 0.25) / 2 = 0.5 and is exactly that, and its key is smaller: it is the top 1. Only a
  // strict bound sends this query to the full ranking.
  const std::vector<Model> models = ModelsOfScores({{0.0f, 0.75f, 0.5f}, {0.25f, 0.25f, 0.5f}});
  EXPECT_EQ(ExpectRankedExactly(models, 1, 2), AllQueries());
  const std::vector<std::vector<ScoredKey>> top = FullRanking(models, 1, {}, {0});
  ASSERT_EQ(top[0].size(), 1u);
  EXPECT_EQ(top[0][0].key, 1001);
}

TEST(TopListSearchTest, EmptyStore) {
  const std::vector<Model> models = MakeModels(2, 0, 0.2f);
  auto found = SearchTopLists(SearchOf(models, 5, 256));
  ASSERT_TRUE(found.ok()) << found.status();
  ASSERT_EQ(found->size(), static_cast<size_t>(kQueries));
  for (const auto& query : *found) {
    ASSERT_TRUE(query.has_value());
    EXPECT_TRUE(query->empty());
  }
}

TEST(TopListSearchTest, BadArguments) {
  const std::vector<Model> models = MakeModels(2, 10, 0.2f);
  EXPECT_EQ(SearchTopLists(SearchOf(models, 5, 4)).status().code(),
            absl::StatusCode::kInvalidArgument);  // fetch below k
  TopListSearch search = SearchOf(models, 5, 256);
  search.queries[1] = search.queries[1].subspan(1);
  EXPECT_EQ(SearchTopLists(search).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(SearchTopLists(TopListSearch{}).status().code(), absl::StatusCode::kInvalidArgument);
  // A full ranking that answers the wrong number of queries is an internal error, not a crash.
  auto got = RankFromTopLists(SearchOf(models, 5, 5, [](int64_t key) { return key == 1001; }),
                              [](absl::Span<const int>)
                                  -> absl::StatusOr<std::vector<std::vector<ScoredKey>>> {
                                return std::vector<std::vector<ScoredKey>>{};
                              });
  EXPECT_EQ(got.status().code(), absl::StatusCode::kInternal);
}

}  // namespace
}  // namespace scanserve
