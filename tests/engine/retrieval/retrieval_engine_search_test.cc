// RetrievalEngine searches over tiny random models: results equal the offline similarity matrix
// (the oracle), ensembles average their models, synthetic items, filters, explain, validation, and
// searches running during upserts.
#include "engine/retrieval/retrieval_engine.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <filesystem>
#include <numeric>
#include <string>
#include <thread>
#include <vector>

#include "engine/scoring/attention_explain.h"

#include "tests/engine/retrieval/retrieval_engine_fixture.h"

namespace scanserve {
namespace retrieval_test {
namespace {

TEST_F(RetrievalEngineTest, EmptyStoreSearchesReturnNothing) {
  auto engine = Make(Options());
  ASSERT_NE(engine, nullptr);
  auto images = engine->SearchImages({"a dog"}, {});
  ASSERT_TRUE(images.ok()) << images.status();
  ASSERT_EQ(images->size(), 1u);
  EXPECT_TRUE((*images)[0].empty());
  ImageQuery query;
  query.region_features = RandomImage("q", 3, 1).region_features;
  auto captions = engine->SearchCaptions({query}, {});
  ASSERT_TRUE(captions.ok()) << captions.status();
  EXPECT_TRUE((*captions)[0].empty());
  const EngineStats stats = engine->Stats();
  EXPECT_EQ(stats.images, 0);
  EXPECT_EQ(stats.backend, "cpu");
  EXPECT_EQ(stats.encoder_device, "cpu") << "auto with the cpu backend";
  EXPECT_EQ(stats.storage, "fp32");
  ASSERT_EQ(stats.model_summaries.size(), 1u);
  EXPECT_TRUE(engine->Health().ok()) << engine->Health();
  ASSERT_TRUE(engine->Close().ok());
  EXPECT_EQ(engine->Health().code(), absl::StatusCode::kFailedPrecondition);
}

TEST_F(RetrievalEngineTest, ExplicitEncoderDeviceIsUsedOrRefused) {
  RetrievalEngineOptions options = Options(/*ensemble=*/true);
  options.encoder_device = EncoderDevice::Cpu();
  auto engine = Make(options);
  ASSERT_NE(engine, nullptr);
  EXPECT_EQ(engine->Stats().encoder_device, "cpu");
  engine.reset();

  std::string why;
  if (ScanModel::CudaAvailable(&why)) GTEST_SKIP() << "CUDA is usable here; the refusal needs a machine without it";
  options.encoder_device = EncoderDevice::Cuda(0);
  auto refused = RetrievalEngine::Create(options);
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kFailedPrecondition) << refused.status();
  EXPECT_NE(refused.status().message().find("cuda:0"), std::string::npos) << refused.status();
}

TEST_F(RetrievalEngineTest, SearchImagesEqualsTheOfflineSimilarities) {
  const RetrievalEngineOptions options = Options();
  auto engine = Make(options);
  ASSERT_NE(engine, nullptr);
  const std::vector<ImageItem> images = SomeImages(7);
  // Two calls: batching of the ingest must not matter.
  ExpectAllOk(engine->UpsertImages({images.begin(), images.begin() + 3}));
  ExpectAllOk(engine->UpsertImages({images.begin() + 3, images.end()}));
  ExpectImageSearchMatchesOracle(*engine, options, images, 7);
  ExpectImageSearchMatchesOracle(*engine, options, images, 3);
  ExpectImageSearchMatchesOracle(*engine, options, images, 100);  // k > n: all of them
  EXPECT_EQ(engine->Stats().images, 7);
  EXPECT_GT(engine->Stats().feature_bytes, 0);
}

TEST_F(RetrievalEngineTest, EnsembleAveragesBothModels) {
  const RetrievalEngineOptions options = Options(/*ensemble=*/true);
  auto engine = Make(options);
  ASSERT_NE(engine, nullptr);
  const std::vector<ImageItem> images = SomeImages(6);
  ExpectAllOk(engine->UpsertImages(images));
  ExpectImageSearchMatchesOracle(*engine, options, images, 6);

  // And the average really is of two different models: each alone ranks differently or scores
  // differently from the ensemble.
  const FloatMatrix a = Oracle(Options(false), images, kCaptions, ItemKind::kImage);
  const FloatMatrix both = Oracle(options, images, kCaptions, ItemKind::kImage);
  double diff = 0;
  for (size_t i = 0; i < a.data.size(); ++i) diff += std::fabs(a.data[i] - both.data[i]);
  EXPECT_GT(diff, 1e-3);
  EXPECT_EQ(engine->Stats().model_summaries.size(), 2u);
}

TEST_F(RetrievalEngineTest, StatsSplitSearchTimeIntoEncodeAndScore) {
  auto engine = Make(Options());
  ASSERT_NE(engine, nullptr);
  EXPECT_EQ(engine->Stats().text_to_image.encode, 0);
  EXPECT_EQ(engine->Stats().image_to_text.score, 0);
  ExpectAllOk(engine->UpsertImages(SomeImages(3)));
  ExpectAllOk(engine->UpsertCaptions(SomeCaptions()));
  ASSERT_TRUE(engine->SearchImages({"a dog runs", "two people"}, {}).ok());
  const EngineStats after_t2i = engine->Stats();
  EXPECT_GT(after_t2i.text_to_image.encode, 0);
  EXPECT_GT(after_t2i.text_to_image.score, 0);
  EXPECT_EQ(after_t2i.image_to_text.encode, 0) << "only the direction searched moves";
  std::vector<ImageQuery> queries(1);
  queries[0].stored_id = "img1";
  ASSERT_TRUE(engine->SearchCaptions(queries, {}).ok());
  const EngineStats after_i2t = engine->Stats();
  EXPECT_GT(after_i2t.image_to_text.encode, 0);
  EXPECT_GT(after_i2t.image_to_text.score, 0);
  EXPECT_EQ(after_i2t.text_to_image.score, after_t2i.text_to_image.score);
}

TEST_F(RetrievalEngineTest, StatsCountHowQueriesWereRanked) {
  // CPU scorers: one model unfiltered takes the scorer's top k; filters and ensembles full scores.
  for (bool ensemble : {false, true}) {
    RetrievalEngineOptions options = Options(ensemble);
    options.data_dir += ensemble ? "_ensemble" : "_single";
    auto engine = Make(options);
    ASSERT_NE(engine, nullptr);
    ExpectAllOk(engine->UpsertImages(SomeImages(3)));
    ExpectAllOk(engine->UpsertCaptions(SomeCaptions()));
    ASSERT_TRUE(engine->SearchImages({"a dog runs", "two people", "a cat"}, {}).ok());
    SearchParams filtered;
    filtered.filter.collection = "odd";
    ASSERT_TRUE(engine->SearchImages({"a dog runs"}, filtered).ok());
    std::vector<ImageQuery> queries(2);
    queries[0].stored_id = "img1";
    queries[1].stored_id = "img2";
    ASSERT_TRUE(engine->SearchCaptions(queries, {}).ok());
    const EngineStats stats = engine->Stats();
    const RankingCounts& t2i = stats.text_to_image_ranking;
    const RankingCounts& i2t = stats.image_to_text_ranking;
    EXPECT_EQ(t2i.scorer_top_k, ensemble ? 0 : 3) << "ensemble " << ensemble;
    EXPECT_EQ(t2i.full_scores, ensemble ? 4 : 1) << "ensemble " << ensemble;
    EXPECT_EQ(t2i.top_lists, 0);
    EXPECT_EQ(i2t.scorer_top_k, ensemble ? 0 : 2) << "ensemble " << ensemble;
    EXPECT_EQ(i2t.full_scores, ensemble ? 2 : 0) << "ensemble " << ensemble;
    EXPECT_EQ(i2t.top_lists, 0);
  }
}

TEST_F(RetrievalEngineTest, SearchCaptionsByFeaturesAndByStoredIdEqualsTheOracle) {
  const RetrievalEngineOptions options = Options(/*ensemble=*/true);
  auto engine = Make(options);
  ASSERT_NE(engine, nullptr);
  const std::vector<ImageItem> images = SomeImages(3);
  ExpectAllOk(engine->UpsertImages(images));
  ExpectAllOk(engine->UpsertCaptions(SomeCaptions()));
  const FloatMatrix sims = Oracle(options, images, kCaptions, ItemKind::kCaption);

  std::vector<ImageQuery> queries(4);
  queries[0].region_features = images[0].region_features;
  queries[1].stored_id = "img1";
  queries[2].region_features = images[2].region_features;
  queries[3].stored_id = "img0";  // same image both ways: same scores
  SearchParams params;
  params.top_k = 4;
  auto results = engine->SearchCaptions(queries, params);
  ASSERT_TRUE(results.ok()) << results.status();
  const std::vector<int64_t> image_of_query = {0, 1, 2, 0};
  for (size_t q = 0; q < queries.size(); ++q) {
    const int64_t i = image_of_query[q];
    std::vector<int64_t> order(kCaptions.size());
    std::iota(order.begin(), order.end(), 0);
    std::sort(order.begin(), order.end(),
              [&](int64_t a, int64_t b) { return sims.at(i, a) > sims.at(i, b); });
    const auto& hits = (*results)[q];
    ASSERT_EQ(hits.size(), 4u);
    for (size_t r = 0; r < hits.size(); ++r) {
      EXPECT_EQ(hits[r].id, "cap" + std::to_string(order[r])) << "query " << q << " rank " << r;
      EXPECT_NEAR(hits[r].score, sims.at(i, order[r]), kScoreTol);
      EXPECT_EQ(hits[r].text, kCaptions[static_cast<size_t>(order[r])]);
    }
  }
  // Within rounding: the stored embeddings came from another encoding batch.
  for (size_t r = 0; r < 4; ++r)
    EXPECT_NEAR((*results)[0][r].score, (*results)[3][r].score, kRestartTol);
}

TEST_F(RetrievalEngineTest, SyntheticItemsAreSearchableButNeverStored) {
  RetrievalEngineOptions options = Options(/*ensemble=*/true);
  {
    auto engine = Make(options);
    ASSERT_NE(engine, nullptr);
    ExpectAllOk(engine->UpsertImages(SomeImages(3)));
    ExpectAllOk(engine->UpsertImages({RandomImage("synthetic/2", 4, 7)}));  // a real item
  }
  constexpr int64_t kImages = 40;
  options.synthetic_images = kImages;
  options.synthetic_captions = 25;
  auto engine = Make(options);
  ASSERT_NE(engine, nullptr);
  EngineStats stats = engine->Stats();
  EXPECT_EQ(stats.images, 4 + kImages - 1) << "the stored synthetic/2 wins over the synthetic one";
  EXPECT_EQ(stats.synthetic_images, kImages - 1);
  EXPECT_EQ(stats.captions, 25);
  EXPECT_EQ(stats.synthetic_captions, 25);

  // Their scores are those of the pool items: the ensemble average of each model's oracle scorer.
  auto models = LoadModels(options);
  std::vector<int64_t> dims;
  for (const auto& model : models) dims.push_back(model->config().embed_size);
  const SyntheticPool pool = MakeSyntheticPool(ItemKind::kImage, kImages, dims);
  ASSERT_EQ(pool.size(), kImages);
  std::vector<FloatMatrix> caption_queries;
  for (size_t m = 0; m < models.size(); ++m) {
    for (const FloatMatrix& item : pool.items[m]) {
      ASSERT_EQ(item.rows, kSyntheticImageRegions);
      double norm2 = 0;
      for (int64_t c = 0; c < item.cols; ++c) norm2 += item.at(0, c) * item.at(0, c);
      ASSERT_NEAR(norm2, 1.0, 1e-5) << "rows are l2-normalised";
    }
    auto ids = models[m]->CaptionToIds(kCaptions[0]);
    ASSERT_TRUE(ids.ok()) << ids.status();
    auto query = models[m]->EncodeCaption(*ids);
    ASSERT_TRUE(query.ok()) << query.status();
    caption_queries.push_back(*std::move(query));
  }
  const std::vector<float> expected =
      AveragedPoolScores(models, ItemKind::kImage, pool, kImages, caption_queries);
  ASSERT_EQ(expected.size(), static_cast<size_t>(kImages));
  SearchParams params;
  params.top_k = 100;
  params.filter.collection = kSyntheticCollection;
  auto results = engine->SearchImages({kCaptions[0]}, params);
  ASSERT_TRUE(results.ok()) << results.status();
  ASSERT_EQ((*results)[0].size(), static_cast<size_t>(kImages - 1));
  for (const ImageHit& hit : (*results)[0]) {
    ASSERT_EQ(hit.id.rfind("synthetic/", 0), 0u) << hit.id;
    const int64_t i = std::stoll(hit.id.substr(10));
    EXPECT_NE(i, 2);
    EXPECT_NEAR(hit.score, expected[i], kScoreTol) << hit.id;
    EXPECT_EQ(hit.collection, kSyntheticCollection);
  }
  ImageQuery by_features;
  by_features.region_features = RandomImage("q", 5, 3).region_features;
  auto captions = engine->SearchCaptions({by_features}, params);
  ASSERT_TRUE(captions.ok()) << captions.status();
  EXPECT_EQ((*captions)[0].size(), 25u);

  // A synthetic image queries by its id with its own values: the oracle over the caption pool.
  const SyntheticPool caption_pool = MakeSyntheticPool(ItemKind::kCaption, 25, dims);
  std::vector<FloatMatrix> image_queries;
  for (size_t m = 0; m < models.size(); ++m) {
    image_queries.push_back(pool.item(m, 7));
    for (int64_t i = 0; i < 25; ++i) {
      EXPECT_GE(caption_pool.item(m, i).rows, kSyntheticCaptionMinRows);
      EXPECT_LE(caption_pool.item(m, i).rows, kSyntheticCaptionMaxRows);
      EXPECT_EQ(caption_pool.item(m, i).rows, caption_pool.item(0, i).rows) << "models agree on lengths";
    }
  }
  const std::vector<float> expected_i2t =
      AveragedPoolScores(models, ItemKind::kCaption, caption_pool, 25, image_queries);
  ASSERT_EQ(expected_i2t.size(), 25u);
  ImageQuery by_id;
  by_id.stored_id = "synthetic/7";
  ImageQuery stored_real;
  stored_real.stored_id = "img1";
  captions = engine->SearchCaptions({by_id, stored_real}, params);
  ASSERT_TRUE(captions.ok()) << captions.status();
  ASSERT_EQ((*captions)[0].size(), 25u);
  EXPECT_EQ((*captions)[1].size(), 25u) << "a stored image next to a synthetic one";
  for (const CaptionHit& hit : (*captions)[0]) {
    const int64_t i = std::stoll(hit.id.substr(10));
    EXPECT_NEAR(hit.score, expected_i2t[i], kScoreTol) << hit.id;
    EXPECT_EQ(hit.collection, kSyntheticCollection);
  }

  // Read back from memory, said to be synthetic; the stored synthetic/2 from the store.
  auto got = engine->GetImages(std::vector<std::string>{"synthetic/7", "synthetic/2"});
  ASSERT_TRUE(got.ok()) << got.status();
  ASSERT_TRUE((*got)[0].status.ok()) << (*got)[0].status;
  EXPECT_TRUE((*got)[0].synthetic);
  EXPECT_EQ((*got)[0].item.collection, kSyntheticCollection);
  EXPECT_EQ((*got)[0].num_regions, kSyntheticImageRegions);
  ASSERT_TRUE((*got)[1].status.ok()) << (*got)[1].status;
  EXPECT_FALSE((*got)[1].synthetic);
  EXPECT_EQ((*got)[1].num_regions, 4);
  auto got_caption = engine->GetCaptions(std::vector<std::string>{"synthetic/0"});
  ASSERT_TRUE(got_caption.ok()) << got_caption.status();
  EXPECT_TRUE((*got_caption)[0].synthetic);

  // Deletable and replaceable like stored items; the store never held them.
  ExpectAllOk(engine->DeleteImages(std::vector<std::string>{"synthetic/5"}));
  by_id.stored_id = "synthetic/5";
  EXPECT_EQ(engine->SearchCaptions({by_id}, params).status().code(), absl::StatusCode::kNotFound);
  ExpectAllOk(engine->UpsertImages({RandomImage("synthetic/6", 3, 8)}));
  stats = engine->Stats();
  EXPECT_EQ(stats.images, 4 + kImages - 2);
  EXPECT_EQ(stats.synthetic_images, kImages - 3);
  engine.reset();
  options.synthetic_images = options.synthetic_captions = 0;
  engine = Make(options);
  ASSERT_NE(engine, nullptr);
  stats = engine->Stats();
  EXPECT_EQ(stats.images, 5) << "img0..2, synthetic/2 and synthetic/6: the upserted ones only";
  EXPECT_EQ(stats.synthetic_images, 0);
  EXPECT_EQ(stats.captions, 0);
  engine.reset();

  // More than the capacity fails the start, saying so.
  options.synthetic_images = 10;
  options.max_images = 8;
  auto refused = RetrievalEngine::Create(options);
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kResourceExhausted) << refused.status();
  EXPECT_NE(refused.status().message().find("synthetic"), std::string::npos) << refused.status();
  options.max_images = 1000;
  options.synthetic_images = -1;
  EXPECT_EQ(RetrievalEngine::Create(options).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(RetrievalEngineTest, FilteredTopKEqualsTheFilteredFullRanking) {
  // Filtered searches return the full ranking's passing items, in order: common and rare filters,
  // k below and above what passes, over 300 synthetic and 6 stored images. (The top-list path GPU
  // scorers take has its own tests: top_list_search_test.cc, and CudaEnsembleRanksAsTheCpuOne.)
  RetrievalEngineOptions options = Options();
  options.synthetic_images = 300;
  auto engine = Make(options);
  ASSERT_NE(engine, nullptr);
  ExpectAllOk(engine->UpsertImages(SomeImages(6)));
  SearchParams all;
  all.top_k = 306;
  auto full = engine->SearchImages(kCaptions, all);
  ASSERT_TRUE(full.ok()) << full.status();
  struct Case {
    std::string collection;
    Metadata metadata;
    int top_k;
  };
  for (const Case& c : std::vector<Case>{{"odd", {}, 2}, {"odd", {}, 3}, {"odd", {}, 10}, {"", {{"mod3", "1"}}, 2},
                                         {"synthetic", {}, 5}, {"synthetic", {}, 300}, {"nothing", {}, 4}}) {
    SearchParams params;
    params.top_k = c.top_k;
    params.filter.collection = c.collection;
    params.filter.metadata = c.metadata;
    auto got = engine->SearchImages(kCaptions, params);
    ASSERT_TRUE(got.ok()) << got.status();
    for (size_t q = 0; q < kCaptions.size(); ++q) {
      std::vector<std::string> want;
      for (const ImageHit& hit : (*full)[q]) {
        if (static_cast<int>(want.size()) == c.top_k) break;
        bool pass = c.collection.empty() || hit.collection == c.collection;
        for (const auto& [key, value] : c.metadata) {
          auto it = hit.metadata.find(key);
          pass = pass && it != hit.metadata.end() && it->second == value;
        }
        if (pass) want.push_back(hit.id);
      }
      std::vector<std::string> ids;
      for (const ImageHit& hit : (*got)[q]) ids.push_back(hit.id);
      EXPECT_EQ(ids, want) << "filter " << c.collection << " top " << c.top_k << " query " << q;
    }
  }
}

TEST_F(RetrievalEngineTest, ValidationFindsWhatSearchWouldRefuseWithoutScoring) {
  // The batcher validates each request alone before merging: every refusal a request causes by
  // itself must be found, and a valid request must pass.
  RetrievalEngineOptions options = Options();
  auto engine = Make(options);
  ASSERT_NE(engine, nullptr);
  ExpectAllOk(engine->UpsertImages(SomeImages(3)));
  std::string too_many_words;
  for (int i = 0; i < options.max_query_words; ++i) too_many_words += "dog ";
  const std::vector<std::pair<std::vector<std::string>, SearchParams>> text_cases = {
      {{"a dog"}, {.top_k = 0}},
      {{"a dog"}, {.top_k = options.max_top_k + 1}},
      {{"a dog"}, {.top_k = RetrievalLimits::kMaxExplainTopK + 1, .filter = {}, .explain = true}},
      {{"a dog", ""}, {}},
      {{"a dog", "   "}, {}},
      {{}, {}},
      {{too_many_words}, {}},
      {{std::string(RetrievalLimits::kMaxQueryBytes + 1, 'a')}, {}},
      {{"a dog"}, {.top_k = 5, .filter = {.collection = std::string(300, 'c'), .metadata = {}}}},
  };
  for (size_t i = 0; i < text_cases.size(); ++i) {
    const auto& [queries, params] = text_cases[i];
    const absl::Status searched = engine->SearchImages(queries, params).status();
    ASSERT_FALSE(searched.ok()) << i;
    EXPECT_EQ(engine->ValidateSearchImages(queries, params), searched) << i;
  }
  EXPECT_TRUE(engine->ValidateSearchImages({"a dog", "two cats"}, {.top_k = 5}).ok());

  ImageQuery unknown;
  unknown.stored_id = "nope";
  ImageQuery stored;
  stored.stored_id = SomeImages(3)[1].id;
  ImageQuery both = stored;
  both.region_features = RandomImage("q", 2, 1).region_features;
  ImageQuery wrong_dim;
  wrong_dim.region_features = FloatMatrix(2, kImgDim + 1);
  ImageQuery raw;
  raw.region_features = RandomImage("q", 4, 2).region_features;
  const std::vector<std::pair<std::vector<ImageQuery>, SearchParams>> image_cases = {
      {{raw, unknown}, {}}, {{both}, {}}, {{wrong_dim}, {}}, {{raw}, {.top_k = 0}}, {{}, {}},
  };
  for (size_t i = 0; i < image_cases.size(); ++i) {
    const auto& [queries, params] = image_cases[i];
    const absl::Status searched = engine->SearchCaptions(queries, params).status();
    ASSERT_FALSE(searched.ok()) << i;
    EXPECT_EQ(engine->ValidateSearchCaptions(queries, params), searched) << i;
  }
  EXPECT_TRUE(engine->ValidateSearchCaptions({raw, stored}, {.top_k = 5}).ok());
}

TEST_F(RetrievalEngineTest, FiltersMaskColumns) {
  const RetrievalEngineOptions options = Options();
  auto engine = Make(options);
  ASSERT_NE(engine, nullptr);
  const std::vector<ImageItem> images = SomeImages(9);
  ExpectAllOk(engine->UpsertImages(images));
  auto all = engine->SearchImages(kCaptions, {.top_k = 9});
  ASSERT_TRUE(all.ok());

  SearchParams params;
  params.top_k = 2;
  params.filter.collection = "odd";
  params.filter.metadata = {{"mod3", "0"}};  // odd i with i % 3 == 0: img3 only
  auto filtered = engine->SearchImages(kCaptions, params);
  ASSERT_TRUE(filtered.ok()) << filtered.status();
  for (size_t q = 0; q < kCaptions.size(); ++q) {
    // The filtered hits are the unfiltered ranking restricted to matching items.
    std::vector<ImageHit> expected;
    for (const ImageHit& hit : (*all)[q]) {
      if (hit.collection == "odd" && hit.metadata.at("mod3") == "0") expected.push_back(hit);
    }
    expected.resize(std::min<size_t>(expected.size(), 2));
    ASSERT_EQ((*filtered)[q].size(), expected.size());
    for (size_t r = 0; r < expected.size(); ++r) {
      EXPECT_EQ((*filtered)[q][r].id, expected[r].id);
      EXPECT_FLOAT_EQ((*filtered)[q][r].score, expected[r].score);
    }
  }
  EXPECT_EQ((*filtered)[0].size(), 1u);  // img3

  params.filter = {};
  params.filter.collection = "even";
  params.top_k = 9;
  auto even = engine->SearchImages({"a dog"}, params);
  ASSERT_TRUE(even.ok());
  EXPECT_EQ((*even)[0].size(), 5u);
  for (const ImageHit& hit : (*even)[0]) EXPECT_EQ(hit.collection, "even");

  params.filter.collection = "nobody";
  auto none = engine->SearchImages({"a dog"}, params);
  ASSERT_TRUE(none.ok());
  EXPECT_TRUE((*none)[0].empty());

  // Captions filter the same way.
  ExpectAllOk(engine->UpsertCaptions(SomeCaptions()));
  ImageQuery query;
  query.stored_id = "img0";
  SearchParams caption_params;
  caption_params.top_k = 10;
  caption_params.filter.collection = "second";
  auto captions = engine->SearchCaptions({query}, caption_params);
  ASSERT_TRUE(captions.ok());
  EXPECT_EQ((*captions)[0].size(), 3u);
  for (const CaptionHit& hit : (*captions)[0]) EXPECT_EQ(hit.collection, "second");
}

TEST_F(RetrievalEngineTest, ExplainGivesEachQueryWordItsBestRegion) {
  const RetrievalEngineOptions options = Options(/*ensemble=*/true);
  auto engine = Make(options);
  ASSERT_NE(engine, nullptr);
  std::vector<ImageItem> images = SomeImages(4);
  images[3].boxes.clear();  // explain still works without boxes, just without them
  images[3].labels.clear();
  ExpectAllOk(engine->UpsertImages(images));
  const std::string query = "A red car, in the street";
  auto results = engine->SearchImages({query}, {.top_k = 4, .filter = {}, .explain = true});
  ASSERT_TRUE(results.ok()) << results.status();
  ASSERT_EQ((*results)[0].size(), 4u);

  // The oracle: the first model's embeddings of the query and of each hit's regions.
  auto models = LoadModels(options);
  const ScanModel& first = *models[0];
  auto ids = first.CaptionToIds(query);
  ASSERT_TRUE(ids.ok());
  const std::vector<std::string> expected_words = {"<start>", "a",   "red",    "car",  ",",
                                                   "in",      "the", "street", "<end>"};
  ASSERT_EQ(ids->size(), expected_words.size());
  auto words = first.EncodeCaption(*ids);
  ASSERT_TRUE(words.ok());
  for (const ImageHit& hit : (*results)[0]) {
    const ImageItem& image = *std::find_if(images.begin(), images.end(),
                                           [&](const ImageItem& i) { return i.id == hit.id; });
    auto regions = first.EncodeRegions(image.region_features);
    ASSERT_TRUE(regions.ok());
    auto best = BestRegionPerWord(ItemView(*words), ItemView(*regions), first.config().embed_size,
                                  first.config().attention.raw_feature_norm,
                                  first.config().attention.lambda_softmax);
    ASSERT_TRUE(best.ok());
    ASSERT_EQ(hit.explanation.size(), expected_words.size()) << hit.id;
    for (size_t t = 0; t < hit.explanation.size(); ++t) {
      const WordExplanation& e = hit.explanation[t];
      EXPECT_EQ(e.word, expected_words[t]);
      ASSERT_GE(e.region, 0);
      ASSERT_LT(e.region, image.region_features.rows);
      EXPECT_EQ(e.region, (*best)[t].region) << hit.id << " word " << t;
      EXPECT_NEAR(e.attention, (*best)[t].weight, 1e-5f);
      EXPECT_GT(e.attention, 0.0f);
      EXPECT_LE(e.attention, 1.0f);
      if (image.boxes.empty()) {
        EXPECT_FALSE(e.box.has_value());
        EXPECT_EQ(e.label, "");
      } else {
        ASSERT_TRUE(e.box.has_value());
        EXPECT_EQ(e.box->x1, image.boxes[static_cast<size_t>(e.region)].x1);
        EXPECT_EQ(e.box->y2, image.boxes[static_cast<size_t>(e.region)].y2);
        EXPECT_EQ(e.label, image.labels[static_cast<size_t>(e.region)]);
      }
    }
  }
  // Without the flag, no explanation.
  auto plain = engine->SearchImages({query}, {.top_k = 4});
  ASSERT_TRUE(plain.ok());
  EXPECT_TRUE((*plain)[0][0].explanation.empty());
  // Several queries: each one's hits explained against its own words.
  auto two = engine->SearchImages({"a dog", query}, {.top_k = 4, .filter = {}, .explain = true});
  ASSERT_TRUE(two.ok()) << two.status();
  EXPECT_EQ((*two)[0][0].explanation.size(), 4u) << "<start> a dog <end>";
  ASSERT_EQ((*two)[1].size(), (*results)[0].size());
  for (size_t h = 0; h < (*two)[1].size(); ++h) {
    EXPECT_EQ((*two)[1][h].id, (*results)[0][h].id);
    ASSERT_EQ((*two)[1][h].explanation.size(), expected_words.size());
    EXPECT_EQ((*two)[1][h].explanation[3].region, (*results)[0][h].explanation[3].region);
  }
  // Explain covers at most kMaxExplainTopK hits per query: each is a record read.
  EXPECT_TRUE(engine->SearchImages({query}, {.top_k = RetrievalLimits::kMaxExplainTopK, .filter = {}, .explain = true})
                  .ok());
  const absl::Status too_many =
      engine->SearchImages({query}, {.top_k = RetrievalLimits::kMaxExplainTopK + 1, .filter = {}, .explain = true})
          .status();
  EXPECT_EQ(too_many.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(too_many.message().find("explain covers at most the top 100"), std::string::npos) << too_many;
  EXPECT_TRUE(engine->SearchImages({query}, {.top_k = 1000}).ok()) << "without explain, max_top_k";
}

TEST_F(RetrievalEngineTest, ConcurrentSearchesDuringUpsertsStayConsistent) {
  const RetrievalEngineOptions options = Options();
  auto engine = Make(options);
  ASSERT_NE(engine, nullptr);
  const std::vector<ImageItem> base = SomeImages(5);
  ExpectAllOk(engine->UpsertImages(base));
  // The base items' scores never change, whatever is added or removed around them.
  auto reference = engine->SearchImages(kCaptions, {.top_k = 5});
  ASSERT_TRUE(reference.ok());
  std::vector<std::map<std::string, float>> base_scores(kCaptions.size());
  for (size_t q = 0; q < kCaptions.size(); ++q) {
    for (const ImageHit& hit : (*reference)[q]) base_scores[q][hit.id] = hit.score;
  }

  constexpr int kSearchers = 3;
  constexpr int kSearches = 25;
  constexpr int kWrites = 12;
  std::atomic<bool> writing{true};
  std::atomic<int> failures{0};
  std::vector<std::thread> threads;
  for (int s = 0; s < kSearchers; ++s) {
    threads.emplace_back([&] {
      for (int i = 0; i < kSearches; ++i) {
        auto results = engine->SearchImages(kCaptions, {.top_k = 100});
        if (!results.ok()) {
          ++failures;
          continue;
        }
        for (size_t q = 0; q < kCaptions.size(); ++q) {
          int base_seen = 0;
          for (const ImageHit& hit : (*results)[q]) {
            auto it = base_scores[q].find(hit.id);
            if (it == base_scores[q].end()) {
              if (hit.id.rfind("new", 0) != 0) ++failures;  // only known ids
              continue;
            }
            ++base_seen;
            if (std::fabs(hit.score - it->second) > kScoreTol) ++failures;
          }
          if (base_seen != 5) ++failures;
        }
      }
    });
  }
  threads.emplace_back([&] {
    for (int i = 0; i < kWrites; ++i) {
      const std::string id = "new" + std::to_string(i);
      for (const ItemResult& r : engine->UpsertImages({RandomImage(id, 1 + i % 6, 500 + i)})) {
        if (!r.status.ok()) ++failures;
      }
      if (i % 3 == 2) {
        for (const ItemResult& r :
             engine->DeleteImages(std::vector<std::string>{"new" + std::to_string(i - 1)})) {
          if (!r.status.ok()) ++failures;
        }
      }
    }
    writing = false;
  });
  for (std::thread& t : threads) t.join();
  EXPECT_FALSE(writing);
  EXPECT_EQ(failures.load(), 0);
  EXPECT_EQ(engine->Stats().images, 5 + kWrites - kWrites / 3);
}

}  // namespace
}  // namespace retrieval_test
}  // namespace scanserve
