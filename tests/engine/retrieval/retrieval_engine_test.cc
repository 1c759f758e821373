// RetrievalEngine over tiny random models: search results equal the offline similarity matrix
// (engine/eval/similarity.h, the oracle), ensemble averaging, upsert/delete semantics, restarts,
// crash durability (a child process killed right after its ack), capacity, bad inputs, filters,
// explain, and searches running during upserts.
#include "engine/retrieval/retrieval_engine.h"

#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <numeric>
#include <random>
#include <string>
#include <thread>

#include "engine/eval/similarity.h"
#include "engine/model/scan_model.h"
#include "engine/retrieval/synthetic_items.h"
#include "engine/scoring/reference_scorer.h"
#include "engine/scoring/attention_explain.h"
#include "engine/store/in_memory_feature_store.h"
#include "engine/store/record_codec.h"
#include "tests/engine/test_util/tiny_model.h"
#ifdef SCANSERVE_CUDA_EMULATION
#include "scanserve_emu/faults.h"  // injected device failures
#endif

namespace scanserve {
namespace {

namespace fs = std::filesystem;

constexpr float kScoreTol = 1e-5f;    // engine vs the offline oracle
constexpr float kRestartTol = 1e-6f;  // the same engine state before and after a restart
constexpr int64_t kImgDim = 10;
constexpr char kCrashChildEnv[] = "SCANSERVE_RETRIEVAL_CRASH_CHILD_DIR";

const std::vector<std::string> kWords = {"a",   "dog",   "runs", "on",  "the", "grass",
                                         ".",   "cat",   "sits", "red", "car", "street",
                                         "man", "rides", "bike", "in"};
const std::vector<std::string> kCaptions = {"a dog runs on the grass .",
                                            "a cat sits on a red car",
                                            "a man rides a bike in the street",
                                            "the red car",
                                            "a dog",
                                            "a man in the grass ."};

test_util::TinyModelOptions ModelA() {
  test_util::TinyModelOptions o;
  o.words = kWords;
  o.seed = 11;
  return o;  // t2i LogSumExp 9 / 6
}

test_util::TinyModelOptions ModelB() {
  test_util::TinyModelOptions o;
  o.words = kWords;
  o.seed = 23;
  o.attention.cross_attn = CrossAttention::kImageToText;
  o.attention.pooling = Pooling::kMean;
  o.attention.lambda_softmax = 4.0f;
  return o;
}

ImageItem RandomImage(const std::string& id, int64_t regions, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist;
  ImageItem item;
  item.id = id;
  item.region_features = FloatMatrix(regions, kImgDim);
  for (float& v : item.region_features.data) v = std::fabs(dist(rng));  // pool5 features are >= 0
  for (int64_t r = 0; r < regions; ++r) {
    item.boxes.push_back(Box{float(r), float(2 * r), float(r + 10), float(2 * r + 10)});
    item.labels.push_back("label " + std::to_string(r));
  }
  return item;
}

std::vector<ImageItem> SomeImages(int n, uint32_t seed = 100) {
  std::vector<ImageItem> images;
  for (int i = 0; i < n; ++i) {
    images.push_back(RandomImage("img" + std::to_string(i), 1 + (i * 3) % 8, seed + i));
    images.back().collection = i % 2 ? "odd" : "even";
    images.back().metadata = {{"mod3", std::to_string(i % 3)}};
  }
  return images;
}

std::vector<CaptionItem> SomeCaptions() {
  std::vector<CaptionItem> captions;
  for (size_t i = 0; i < kCaptions.size(); ++i) {
    CaptionItem c;
    c.id = "cap" + std::to_string(i);
    c.text = kCaptions[i];
    c.collection = i < 3 ? "first" : "second";
    c.metadata = {{"n", std::to_string(i)}};
    captions.push_back(c);
  }
  return captions;
}

void ExpectAllOk(const std::vector<ItemResult>& results) {
  for (const ItemResult& r : results) EXPECT_TRUE(r.status.ok()) << r.id << ": " << r.status;
}

// Each model's oracle (ReferenceScorer) scores of queries[m] against the first n items of a
// synthetic pool, averaged over the models (an ensemble's scores).
std::vector<float> AveragedPoolScores(const std::vector<std::unique_ptr<ScanModel>>& models,
                                      ItemKind stored, const SyntheticPool& pool, int64_t n,
                                      const std::vector<FloatMatrix>& queries) {
  std::vector<float> average(static_cast<size_t>(n), 0.0f);
  for (size_t m = 0; m < models.size(); ++m) {
    ScorerConfig config;
    config.dim = models[m]->config().embed_size;
    config.stored_kind = stored;
    config.attention = models[m]->config().attention;
    auto oracle = ReferenceScorer::Create(config);
    EXPECT_TRUE(oracle.ok()) << oracle.status();
    if (!oracle.ok()) return {};
    std::vector<int64_t> keys;
    std::vector<ItemView> views;
    for (int64_t i = 0; i < n; ++i) {
      keys.push_back(i);
      views.emplace_back(pool.item(m, i));
    }
    EXPECT_TRUE((*oracle)->Add(keys, views).ok());
    FloatMatrix scores;
    EXPECT_TRUE((*oracle)->ScoreAll({ItemView(queries[m])}, &scores).ok());
    for (int64_t i = 0; i < n && scores.rows == 1; ++i) average[i] += scores.at(0, i) / models.size();
  }
  return average;
}

class RetrievalEngineTest : public ::testing::Test {
 protected:
  void SetUp() override {
    base_ = fs::temp_directory_path() /
            ("retrieval_engine_test_" + std::to_string(::getpid()) + "_" +
             ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(base_);
    ASSERT_FALSE(test_util::WriteTinyModel(base_ / "model_a", ModelA()).empty());
    ASSERT_FALSE(test_util::WriteTinyModel(base_ / "model_b", ModelB()).empty());
  }
  void TearDown() override { fs::remove_all(base_); }

  RetrievalEngineOptions Options(bool ensemble = false) const {
    RetrievalEngineOptions o;
    o.model_dirs = {(base_ / "model_a").string()};
    if (ensemble) o.model_dirs.push_back((base_ / "model_b").string());
    o.data_dir = (base_ / "data").string();
    o.num_threads = 2;
    return o;
  }
  std::unique_ptr<RetrievalEngine> Make(const RetrievalEngineOptions& options) {
    auto engine = RetrievalEngine::Create(options);
    EXPECT_TRUE(engine.ok()) << engine.status();
    return engine.ok() ? std::move(engine).value() : nullptr;
  }
  std::vector<std::unique_ptr<ScanModel>> LoadModels(const RetrievalEngineOptions& options) {
    std::vector<std::unique_ptr<ScanModel>> models;
    for (const std::string& dir : options.model_dirs) {
      auto model = ScanModel::Load(dir);
      EXPECT_TRUE(model.ok()) << model.status();
      models.push_back(std::move(model).value());
    }
    return models;
  }
  // The oracle: n_images x n_captions (ensemble-averaged) similarities.
  FloatMatrix Oracle(const RetrievalEngineOptions& options, const std::vector<ImageItem>& images,
                     const std::vector<std::string>& captions, ItemKind stored) {
    auto models = LoadModels(options);
    std::vector<const ScanModel*> raw;
    for (const auto& m : models) raw.push_back(m.get());
    std::vector<RegionFeaturesView> views;
    for (const ImageItem& image : images) {
      views.push_back({image.region_features.data.data(), image.region_features.rows, kImgDim});
    }
    SimilarityOptions so;
    so.stored = stored;
    so.num_threads = 2;
    auto sims = ComputeSimilarities(raw, views, captions, so);
    EXPECT_TRUE(sims.ok()) << sims.status();
    return sims.ok() ? *std::move(sims) : FloatMatrix();
  }

  // Text->image hits for every caption equal the oracle's ranking, best first.
  void ExpectImageSearchMatchesOracle(const RetrievalEngine& engine,
                                      const RetrievalEngineOptions& options,
                                      const std::vector<ImageItem>& images, int top_k) {
    const FloatMatrix sims = Oracle(options, images, kCaptions, ItemKind::kImage);
    SearchParams params;
    params.top_k = top_k;
    auto results = engine.SearchImages(kCaptions, params);
    ASSERT_TRUE(results.ok()) << results.status();
    ASSERT_EQ(results->size(), kCaptions.size());
    for (size_t q = 0; q < kCaptions.size(); ++q) {
      std::vector<size_t> order(images.size());
      std::iota(order.begin(), order.end(), 0);
      std::sort(order.begin(), order.end(), [&](size_t a, size_t b) {
        return sims.at(static_cast<int64_t>(a), static_cast<int64_t>(q)) >
               sims.at(static_cast<int64_t>(b), static_cast<int64_t>(q));
      });
      const auto& hits = (*results)[q];
      ASSERT_EQ(hits.size(), std::min<size_t>(top_k, images.size())) << "query " << q;
      for (size_t r = 0; r < hits.size(); ++r) {
        EXPECT_EQ(hits[r].id, images[order[r]].id) << "query " << q << " rank " << r;
        EXPECT_NEAR(hits[r].score, sims.at(static_cast<int64_t>(order[r]), static_cast<int64_t>(q)),
                    kScoreTol)
            << "query " << q << " rank " << r;
        EXPECT_EQ(hits[r].collection, images[order[r]].collection);
        EXPECT_EQ(hits[r].metadata, images[order[r]].metadata);
      }
    }
  }

  fs::path base_;
};

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

TEST_F(RetrievalEngineTest, UpsertReplacesAndDeleteRemoves) {
  const RetrievalEngineOptions options = Options();
  auto engine = Make(options);
  ASSERT_NE(engine, nullptr);
  std::vector<ImageItem> images = SomeImages(4);
  ExpectAllOk(engine->UpsertImages(images));
  // Replace img2 with other features (and other metadata): it scores as the new one.
  images[2] = RandomImage("img2", 5, 999);
  images[2].collection = "replaced";
  ExpectAllOk(engine->UpsertImages({images[2]}));
  EXPECT_EQ(engine->Stats().images, 4);
  ExpectImageSearchMatchesOracle(*engine, options, images, 4);

  const std::vector<std::string> gone = {"img1", "img1", "never"};
  const std::vector<ItemResult> deleted = engine->DeleteImages(gone);
  ASSERT_EQ(deleted.size(), 3u);
  EXPECT_TRUE(deleted[0].status.ok());
  EXPECT_TRUE(deleted[1].status.ok()) << deleted[1].status;  // a repeat reports like the first
  EXPECT_EQ(deleted[2].status.code(), absl::StatusCode::kNotFound);
  images.erase(images.begin() + 1);
  EXPECT_EQ(engine->Stats().images, 3);
  ExpectImageSearchMatchesOracle(*engine, options, images, 4);
  // Deleting again is NOT_FOUND; searching by the deleted id too.
  EXPECT_EQ(engine->DeleteImages(std::vector<std::string>{"img1"})[0].status.code(),
            absl::StatusCode::kNotFound);
  ImageQuery query;
  query.stored_id = "img1";
  EXPECT_EQ(engine->SearchCaptions({query}, {}).status().code(), absl::StatusCode::kNotFound);

  ExpectAllOk(engine->UpsertCaptions(SomeCaptions()));
  const std::vector<ItemResult> caption_deleted =
      engine->DeleteCaptions(std::vector<std::string>{"cap0"});
  EXPECT_TRUE(caption_deleted[0].status.ok());
  query.stored_id = "img0";
  auto hits = engine->SearchCaptions({query}, {.top_k = 10});
  ASSERT_TRUE(hits.ok());
  EXPECT_EQ((*hits)[0].size(), kCaptions.size() - 1);
  for (const CaptionHit& hit : (*hits)[0]) EXPECT_NE(hit.id, "cap0");
}

void ExpectSameImage(const StoredImageInfo& got, const ImageItem& sent) {
  ASSERT_TRUE(got.status.ok()) << sent.id << ": " << got.status;
  EXPECT_EQ(got.item.id, sent.id);
  EXPECT_EQ(got.item.collection, sent.collection);
  EXPECT_EQ(got.item.metadata, sent.metadata);
  EXPECT_EQ(got.num_regions, sent.region_features.rows);
  ASSERT_EQ(got.item.boxes.size(), sent.boxes.size());
  for (size_t r = 0; r < sent.boxes.size(); ++r) {
    EXPECT_EQ(got.item.boxes[r].x1, sent.boxes[r].x1);
    EXPECT_EQ(got.item.boxes[r].y2, sent.boxes[r].y2);
  }
  EXPECT_EQ(got.item.labels, sent.labels);
  EXPECT_TRUE(got.item.region_features.data.empty()) << "features are not read back";
  EXPECT_FALSE(got.has_region_features) << "the engine keeps no features by default";
  EXPECT_FALSE(got.synthetic);
}

// With keep_region_features the store holds each image's input, bit for bit, across updates and
// restarts, and another model encodes what is read back exactly as it would the original: the
// way a collection moves to retrained weights without the detector.
// Every stored write reaches the change log in the order it was made (a metadata update is a put;
// an upsert refused for its input is not logged); synthetic items are never stored, so never
// logged; the log and its numbering survive a restart.
TEST_F(RetrievalEngineTest, ChangeLogListsEveryStoredWriteInOrder) {
  RetrievalEngineOptions options = Options();
  options.synthetic_images = 3;
  const std::vector<ImageItem> images = SomeImages(2);
  uint64_t last = 0;
  {
    auto engine = Make(options);
    ASSERT_NE(engine, nullptr);
    ExpectAllOk(engine->UpsertImages(images));
    ImageItem bad = images[0];
    bad.id = "bad";
    bad.region_features = FloatMatrix(2, 3);  // wrong width: refused before the store
    EXPECT_FALSE(engine->UpsertImages({bad})[0].status.ok());
    ItemUpdate update;
    update.id = images[1].id;
    update.set_metadata = {{"tag", "x"}};
    ExpectAllOk(engine->UpdateImages({update}));
    ExpectAllOk(engine->DeleteImages(std::vector<std::string>{images[0].id}));
    auto page = engine->ListChanges(0, 100);
    ASSERT_TRUE(page.ok()) << page.status();
    ASSERT_EQ(page->changes.size(), 4u);
    const std::vector<std::pair<std::string, bool>> expected = {
        {images[0].id, false}, {images[1].id, false}, {images[1].id, false}, {images[0].id, true}};
    for (size_t i = 0; i < expected.size(); ++i) {
      EXPECT_EQ(page->changes[i].id, expected[i].first) << i;
      EXPECT_EQ(page->changes[i].deleted, expected[i].second) << i;
      EXPECT_FALSE(page->changes[i].is_caption) << i;
    }
    last = page->last_sequence;
    EXPECT_EQ(engine->Stats().last_change_sequence, last);
    EXPECT_EQ(engine->ListChanges(0, 0).status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_EQ(engine->ListChanges(0, RetrievalLimits::kMaxChangesPage + 1).status().code(),
              absl::StatusCode::kInvalidArgument);
  }
  auto engine = Make(options);
  ASSERT_NE(engine, nullptr);
  ExpectAllOk(engine->DeleteImages(std::vector<std::string>{images[1].id}));
  auto page = engine->ListChanges(last, 100);
  ASSERT_TRUE(page.ok()) << page.status();
  ASSERT_EQ(page->changes.size(), 1u);
  EXPECT_GT(page->changes[0].sequence, last);
  EXPECT_EQ(page->changes[0].id, images[1].id);
  EXPECT_TRUE(page->changes[0].deleted);
}

TEST_F(RetrievalEngineTest, KeptRegionFeaturesReadBackExactlyForOtherModels) {
  const std::vector<ImageItem> before_keeping = SomeImages(2, /*seed=*/7);
  std::vector<ImageItem> images = SomeImages(5);
  for (ImageItem& image : images) image.id = "kept/" + image.id;
  {
    auto engine = Make(Options());  // a store that kept nothing at first
    ASSERT_NE(engine, nullptr);
    ExpectAllOk(engine->UpsertImages(before_keeping));
  }
  RetrievalEngineOptions keeping = Options();
  keeping.keep_region_features = true;
  std::vector<std::string> ids;
  for (const ImageItem& image : images) ids.push_back(image.id);
  for (int restart = 0; restart < 2; ++restart) {
    auto engine = Make(keeping);
    ASSERT_NE(engine, nullptr);
    if (restart == 0) {
      ExpectAllOk(engine->UpsertImages(images));
      ItemUpdate update;  // rewrites the record: the features must stay
      update.id = images[2].id;
      update.set_metadata = {{"tag", "beach"}};
      ExpectAllOk(engine->UpdateImages({update}));
      images[2].metadata["tag"] = "beach";
    }
    auto got = engine->GetImages(ids, /*with_region_features=*/true);
    ASSERT_TRUE(got.ok()) << got.status();
    for (size_t i = 0; i < images.size(); ++i) {
      const StoredImageInfo& info = (*got)[i];
      ASSERT_TRUE(info.status.ok()) << info.status;
      EXPECT_TRUE(info.has_region_features);
      EXPECT_EQ(info.item.metadata, images[i].metadata);
      EXPECT_EQ(info.item.region_features.rows, images[i].region_features.rows);
      EXPECT_EQ(info.item.region_features.cols, images[i].region_features.cols);
      EXPECT_EQ(info.item.region_features.data, images[i].region_features.data) << images[i].id;
    }
    // Without asking: flagged, not sent. Images stored before keeping have none.
    auto plain = engine->GetImages(ids);
    ASSERT_TRUE(plain.ok()) << plain.status();
    EXPECT_TRUE((*plain)[0].has_region_features);
    EXPECT_TRUE((*plain)[0].item.region_features.data.empty());
    auto old = engine->GetImages(std::vector<std::string>{before_keeping[0].id}, true);
    ASSERT_TRUE(old.ok()) << old.status();
    EXPECT_FALSE((*old)[0].has_region_features);
    EXPECT_TRUE((*old)[0].item.region_features.data.empty());

    const std::vector<std::string> too_many(RetrievalLimits::kMaxGetIdsWithRegionFeatures + 1,
                                            ids[0]);
    EXPECT_EQ(engine->GetImages(too_many, true).status().code(),
              absl::StatusCode::kInvalidArgument);
    EXPECT_TRUE(engine->GetImages(too_many).ok()) << "the smaller bound is for features only";
  }

  // Another model, fed what was read back, ranks as the oracle does on the originals.
  std::vector<ImageItem> copied;
  {
    auto engine = Make(keeping);
    ASSERT_NE(engine, nullptr);
    auto got = engine->GetImages(ids, true);
    ASSERT_TRUE(got.ok()) << got.status();
    for (const StoredImageInfo& info : *got) copied.push_back(info.item);
  }
  RetrievalEngineOptions other = Options();
  other.model_dirs = {(base_ / "model_b").string()};
  other.data_dir = (base_ / "other").string();
  auto target = Make(other);
  ASSERT_NE(target, nullptr);
  ExpectAllOk(target->UpsertImages(copied));
  ExpectImageSearchMatchesOracle(*target, other, images, /*top_k=*/5);
}

TEST_F(RetrievalEngineTest, GetReadsBackWhatWasSentAcrossARestart) {
  const RetrievalEngineOptions options = Options(/*ensemble=*/true);
  std::vector<ImageItem> images = SomeImages(5);
  images[1].boxes.clear();  // stored without boxes and labels
  images[1].labels.clear();
  const std::vector<CaptionItem> captions = SomeCaptions();
  for (int restart = 0; restart < 2; ++restart) {
    auto engine = Make(options);
    ASSERT_NE(engine, nullptr);
    if (restart == 0) {
      ExpectAllOk(engine->UpsertImages(images));
      ExpectAllOk(engine->UpsertCaptions(captions));
    }
    const std::vector<std::string> ids = {"img3", "nope", "img1", "", "img3"};
    auto got = engine->GetImages(ids);
    ASSERT_TRUE(got.ok()) << got.status();
    ASSERT_EQ(got->size(), ids.size());
    ExpectSameImage((*got)[0], images[3]);
    EXPECT_EQ((*got)[1].status.code(), absl::StatusCode::kNotFound) << (*got)[1].status;
    EXPECT_EQ((*got)[1].item.id, "nope");
    ExpectSameImage((*got)[2], images[1]);
    EXPECT_EQ((*got)[3].status.code(), absl::StatusCode::kInvalidArgument);
    ExpectSameImage((*got)[4], images[3]);

    auto caps = engine->GetCaptions(std::vector<std::string>{"cap2", "img0"});
    ASSERT_TRUE(caps.ok()) << caps.status();
    ASSERT_TRUE((*caps)[0].status.ok()) << (*caps)[0].status;
    EXPECT_EQ((*caps)[0].item.text, captions[2].text);
    EXPECT_EQ((*caps)[0].item.collection, captions[2].collection);
    EXPECT_EQ((*caps)[0].item.metadata, captions[2].metadata);
    EXPECT_EQ((*caps)[1].status.code(), absl::StatusCode::kNotFound) << "an image id is no caption";
  }
  auto engine = Make(options);
  ASSERT_NE(engine, nullptr);
  // A replaced item reads back as the new one; a deleted one is NOT_FOUND.
  ImageItem replaced = RandomImage("img3", 2, 77);
  replaced.collection = "new";
  ExpectAllOk(engine->UpsertImages({replaced}));
  ExpectAllOk(engine->DeleteImages(std::vector<std::string>{"img4"}));
  auto got = engine->GetImages(std::vector<std::string>{"img3", "img4"});
  ASSERT_TRUE(got.ok()) << got.status();
  ExpectSameImage((*got)[0], replaced);
  EXPECT_EQ((*got)[1].status.code(), absl::StatusCode::kNotFound);

  const std::vector<std::string> too_many(RetrievalLimits::kMaxGetIds + 1, "img0");
  EXPECT_EQ(engine->GetImages(too_many).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(engine->GetCaptions(too_many).status().code(), absl::StatusCode::kInvalidArgument);
  ASSERT_TRUE(engine->Close().ok());
  EXPECT_EQ(engine->GetImages(std::vector<std::string>{"img0"}).status().code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(engine->ListImages({}).status().code(), absl::StatusCode::kFailedPrecondition);
}

// Every id of `kind` by pages of `page_size`, following the tokens; fails the test on an error.
std::vector<std::string> ListAll(const RetrievalEngine& engine, ItemKind kind, int64_t page_size,
                                 const std::string& collection = "") {
  std::vector<std::string> all;
  ListParams params;
  params.page_size = page_size;
  params.collection = collection;
  for (int pages = 0; pages < 1000; ++pages) {
    auto page = kind == ItemKind::kImage ? engine.ListImages(params) : engine.ListCaptions(params);
    EXPECT_TRUE(page.ok()) << page.status();
    if (!page.ok()) break;
    EXPECT_LE(static_cast<int64_t>(page->ids.size()), page_size);
    all.insert(all.end(), page->ids.begin(), page->ids.end());
    if (page->next_page_token.empty()) break;
    params.page_token = page->next_page_token;
  }
  return all;
}

TEST_F(RetrievalEngineTest, ListPagesThroughIdsInOrderAndByCollection) {
  RetrievalEngineOptions options = Options();
  options.synthetic_captions = 3;
  auto engine = Make(options);
  ASSERT_NE(engine, nullptr);
  EXPECT_TRUE(ListAll(*engine, ItemKind::kImage, 10).empty());
  std::vector<ImageItem> images = SomeImages(13);
  ExpectAllOk(engine->UpsertImages(images));
  std::vector<std::string> expected, even;
  for (const ImageItem& image : images) {
    expected.push_back(image.id);
    if (image.collection == "even") even.push_back(image.id);
  }
  std::sort(expected.begin(), expected.end());  // byte order: img0, img1, img10, ...
  std::sort(even.begin(), even.end());
  for (int64_t page_size : {1, 4, 13, 100}) {
    EXPECT_EQ(ListAll(*engine, ItemKind::kImage, page_size), expected) << page_size;
    EXPECT_EQ(ListAll(*engine, ItemKind::kImage, page_size, "even"), even) << page_size;
  }
  EXPECT_TRUE(ListAll(*engine, ItemKind::kImage, 5, "nothing here").empty());
  // Captions list separately, synthetic ones included (searches see them).
  ExpectAllOk(engine->UpsertCaptions(SomeCaptions()));
  const std::vector<std::string> captions = ListAll(*engine, ItemKind::kCaption, 4);
  EXPECT_EQ(captions.size(), kCaptions.size() + 3);
  EXPECT_TRUE(std::is_sorted(captions.begin(), captions.end()));
  EXPECT_EQ(captions.back(), "synthetic/2");

  // Writes between pages: the next page resumes after the last id given, so an item deleted
  // behind the cursor is not missed twice and one inserted ahead of it shows.
  ListParams params;
  params.page_size = 5;
  auto first = engine->ListImages(params);
  ASSERT_TRUE(first.ok()) << first.status();
  ASSERT_EQ(first->ids.size(), 5u);
  ExpectAllOk(engine->DeleteImages(std::vector<std::string>{first->ids[1]}));
  ExpectAllOk(engine->UpsertImages({RandomImage("img99", 2, 5)}));
  params.page_token = first->next_page_token;
  params.page_size = 100;
  auto rest = engine->ListImages(params);
  ASSERT_TRUE(rest.ok()) << rest.status();
  std::vector<std::string> listed = first->ids;
  listed.insert(listed.end(), rest->ids.begin(), rest->ids.end());
  std::vector<std::string> want = expected;
  want.push_back("img99");
  std::sort(want.begin(), want.end());
  EXPECT_EQ(listed, want);
  EXPECT_TRUE(rest->next_page_token.empty());

  for (int64_t bad : {int64_t{0}, int64_t{-1}, RetrievalLimits::kMaxListPageSize + 1}) {
    ListParams p;
    p.page_size = bad;
    EXPECT_EQ(engine->ListImages(p).status().code(), absl::StatusCode::kInvalidArgument) << bad;
  }
  ListParams long_token;
  long_token.page_token = std::string(RetrievalLimits::kMaxIdBytes + 1, 'x');
  EXPECT_EQ(engine->ListCaptions(long_token).status().code(), absl::StatusCode::kInvalidArgument);
  ListParams long_collection;
  long_collection.collection = std::string(RetrievalLimits::kMaxCollectionBytes + 1, 'c');
  EXPECT_EQ(engine->ListImages(long_collection).status().code(), absl::StatusCode::kInvalidArgument);
}

// A filter that matches little of a large catalog: pages end after kMaxListScan ids looked at,
// with a token, and following the tokens still finds every match once.
TEST_F(RetrievalEngineTest, ListLooksAtABoundedNumberOfIdsPerPage) {
  RetrievalEngineOptions options = Options();
  options.synthetic_captions = RetrievalLimits::kMaxListScan + 5000;  // "synthetic/N", sorted after "cap*"
  auto engine = Make(options);
  ASSERT_NE(engine, nullptr);
  ExpectAllOk(engine->UpsertCaptions(SomeCaptions()));  // cap0..cap2 in "first"
  CaptionItem last;
  last.id = "zzz";
  last.text = "a dog";
  last.collection = "rare";
  ExpectAllOk(engine->UpsertCaptions({last}));

  ListParams params;
  params.page_size = 10;
  params.collection = "rare";
  auto first = engine->ListCaptions(params);
  ASSERT_TRUE(first.ok()) << first.status();
  EXPECT_TRUE(first->ids.empty());
  ASSERT_FALSE(first->next_page_token.empty()) << "the scan stopped early: a next page";
  params.page_token = first->next_page_token;
  auto second = engine->ListCaptions(params);
  ASSERT_TRUE(second.ok()) << second.status();
  EXPECT_EQ(second->ids, std::vector<std::string>{"zzz"});
  EXPECT_TRUE(second->next_page_token.empty());
  EXPECT_EQ(ListAll(*engine, ItemKind::kCaption, 10, "first"),
            (std::vector<std::string>{"cap0", "cap1", "cap2"}));
  EXPECT_EQ(ListAll(*engine, ItemKind::kCaption, RetrievalLimits::kMaxListPageSize).size(),
            static_cast<size_t>(options.synthetic_captions) + kCaptions.size() + 1);
}

// Every search result of `engine` for a fixed set of queries, for comparisons across restarts.
struct Snapshot {
  std::vector<std::vector<ImageHit>> images;
  std::vector<std::vector<CaptionHit>> captions;
};

Snapshot TakeSnapshot(const RetrievalEngine& engine) {
  Snapshot s;
  auto images = engine.SearchImages(kCaptions, {.top_k = 50, .filter = {}, .explain = true});
  EXPECT_TRUE(images.ok()) << images.status();
  if (images.ok()) s.images = *images;
  std::vector<ImageQuery> queries(2);
  queries[0].stored_id = "img0";
  queries[1].region_features = RandomImage("q", 4, 5).region_features;
  auto captions = engine.SearchCaptions(queries, {.top_k = 50});
  EXPECT_TRUE(captions.ok()) << captions.status();
  if (captions.ok()) s.captions = *captions;
  return s;
}

void ExpectSameSnapshot(const Snapshot& a, const Snapshot& b) {
  ASSERT_EQ(a.images.size(), b.images.size());
  for (size_t q = 0; q < a.images.size(); ++q) {
    ASSERT_EQ(a.images[q].size(), b.images[q].size());
    for (size_t r = 0; r < a.images[q].size(); ++r) {
      const ImageHit& x = a.images[q][r];
      const ImageHit& y = b.images[q][r];
      EXPECT_EQ(x.id, y.id);
      EXPECT_NEAR(x.score, y.score, kRestartTol);
      EXPECT_EQ(x.collection, y.collection);
      EXPECT_EQ(x.metadata, y.metadata);
      ASSERT_EQ(x.explanation.size(), y.explanation.size());
      for (size_t t = 0; t < x.explanation.size(); ++t) {
        EXPECT_EQ(x.explanation[t].region, y.explanation[t].region);
        EXPECT_EQ(x.explanation[t].label, y.explanation[t].label);
      }
    }
  }
  ASSERT_EQ(a.captions.size(), b.captions.size());
  for (size_t q = 0; q < a.captions.size(); ++q) {
    ASSERT_EQ(a.captions[q].size(), b.captions[q].size());
    for (size_t r = 0; r < a.captions[q].size(); ++r) {
      EXPECT_EQ(a.captions[q][r].id, b.captions[q][r].id);
      EXPECT_NEAR(a.captions[q][r].score, b.captions[q][r].score, kRestartTol);
      EXPECT_EQ(a.captions[q][r].text, b.captions[q][r].text);
    }
  }
}

TEST_F(RetrievalEngineTest, RestartReloadsEverythingWithIdenticalResults) {
  const RetrievalEngineOptions options = Options(/*ensemble=*/true);
  Snapshot before;
  EngineStats stats_before;
  {
    auto engine = Make(options);
    ASSERT_NE(engine, nullptr);
    ExpectAllOk(engine->UpsertImages(SomeImages(9)));
    ExpectAllOk(engine->UpsertCaptions(SomeCaptions()));
    ExpectAllOk(engine->DeleteImages(std::vector<std::string>{"img4"}));
    ExpectAllOk(engine->UpsertImages({RandomImage("img2", 3, 77)}));  // a replaced one
    before = TakeSnapshot(*engine);
    stats_before = engine->Stats();
    ASSERT_TRUE(engine->Close().ok());
    EXPECT_EQ(engine->SearchImages({"a dog"}, {}).status().code(),
              absl::StatusCode::kFailedPrecondition);
    EXPECT_EQ(engine->UpsertImages({RandomImage("x", 1, 1)})[0].status.code(),
              absl::StatusCode::kFailedPrecondition);
  }
  auto engine = Make(options);
  ASSERT_NE(engine, nullptr);
  const EngineStats stats = engine->Stats();
  EXPECT_EQ(stats.images, 8);
  EXPECT_EQ(stats.captions, static_cast<int64_t>(kCaptions.size()));
  EXPECT_GT(stats.feature_bytes, 0);
  EXPECT_GE(stats_before.store_synced_writes, 4);
  ExpectSameSnapshot(before, TakeSnapshot(*engine));
  // And the reloaded engine keeps working.
  ExpectAllOk(engine->UpsertImages({RandomImage("new", 2, 3)}));
  EXPECT_EQ(engine->Stats().images, 9);
}

// Collection and metadata changes: filters see them at once, a restart keeps them, scores and the
// rest of the item do not change, and bad updates fail alone.
TEST_F(RetrievalEngineTest, UpdatesChangeCollectionsAndMetadataOnly) {
  RetrievalEngineOptions options = Options();
  options.synthetic_images = 2;
  std::vector<ImageItem> images = SomeImages(4);  // even/odd collections, metadata mod3
  Snapshot before;
  {
    auto engine = Make(options);
    ASSERT_NE(engine, nullptr);
    ExpectAllOk(engine->UpsertImages(images));
    ExpectAllOk(engine->UpsertCaptions(SomeCaptions()));
    before = TakeSnapshot(*engine);

    std::vector<ItemUpdate> updates(6);
    updates[0].id = "img1";
    updates[0].collection = "even";                      // odd -> even
    updates[0].set_metadata = {{"tag", "beach"}};
    updates[0].remove_metadata = {"mod3", "absent-key"};
    updates[1].id = "nope";
    updates[2].id = "img2";
    updates[2].set_metadata = {{"mod3", "x"}};
    updates[2].remove_metadata = {"mod3"};               // both set and removed
    updates[3].id = "img1";                              // repeated
    updates[4].id = "synthetic/0";
    updates[4].collection = "x";
    updates[5].id = "img3";
    for (int k = 0; k < static_cast<int>(RetrievalLimits::kMaxMetadataEntries); ++k) {
      updates[5].set_metadata["k" + std::to_string(k)] = "v";  // one more than the limit with mod3
    }
    const std::vector<ItemResult> results = engine->UpdateImages(updates);
    ASSERT_EQ(results.size(), updates.size());
    EXPECT_TRUE(results[0].status.ok()) << results[0].status;
    EXPECT_EQ(results[1].status.code(), absl::StatusCode::kNotFound);
    EXPECT_EQ(results[2].status.code(), absl::StatusCode::kInvalidArgument);
    EXPECT_EQ(results[3].status.code(), absl::StatusCode::kInvalidArgument);
    EXPECT_EQ(results[4].status.code(), absl::StatusCode::kFailedPrecondition) << results[4].status;
    EXPECT_EQ(results[5].status.code(), absl::StatusCode::kInvalidArgument) << results[5].status;

    // The filters see it at once.
    SearchParams params;
    params.top_k = 10;
    params.filter.collection = "even";
    auto hits = engine->SearchImages({kCaptions[0]}, params);
    ASSERT_TRUE(hits.ok()) << hits.status();
    std::vector<std::string> ids;
    for (const ImageHit& hit : (*hits)[0]) ids.push_back(hit.id);
    std::sort(ids.begin(), ids.end());
    EXPECT_EQ(ids, (std::vector<std::string>{"img0", "img1", "img2"}));
    params.filter = {};
    params.filter.metadata = {{"tag", "beach"}};
    hits = engine->SearchImages({kCaptions[0]}, params);
    ASSERT_TRUE(hits.ok());
    ASSERT_EQ((*hits)[0].size(), 1u);
    EXPECT_EQ((*hits)[0][0].id, "img1");
    EXPECT_EQ((*hits)[0][0].metadata, (Metadata{{"tag", "beach"}}));
    std::vector<ItemUpdate> caption_update(1);
    caption_update[0].id = "cap1";
    caption_update[0].collection = "";
    EXPECT_TRUE(engine->UpdateCaptions(caption_update)[0].status.ok());
  }
  // After a restart (the same synthetic images again): the same, and everything else as before.
  auto engine = Make(options);
  ASSERT_NE(engine, nullptr);
  auto got = engine->GetImages(std::vector<std::string>{"img1", "img3"});
  ASSERT_TRUE(got.ok()) << got.status();
  images[1].collection = "even";
  images[1].metadata = {{"tag", "beach"}};
  ExpectSameImage((*got)[0], images[1]);
  ExpectSameImage((*got)[1], images[3]);  // its failed update changed nothing
  auto caption = engine->GetCaptions(std::vector<std::string>{"cap1"});
  ASSERT_TRUE(caption.ok());
  EXPECT_EQ((*caption)[0].item.collection, "");
  EXPECT_EQ((*caption)[0].item.text, kCaptions[1]);
  Snapshot after = TakeSnapshot(*engine);
  // Scores and order are those of before; only img1's hit metadata changed.
  for (auto& hits : before.images) {
    for (ImageHit& hit : hits) {
      if (hit.id == "img1") {
        hit.collection = "even";
        hit.metadata = {{"tag", "beach"}};
      }
    }
  }
  ExpectSameSnapshot(after, before);
}

// A snapshot is the store as it was: an engine opened on it answers exactly as the live one did
// then, while the live one moves on; synthetic items are not in it.
TEST_F(RetrievalEngineTest, SnapshotRestoresTheStoreAsItWas) {
  RetrievalEngineOptions options = Options(/*ensemble=*/true);
  options.synthetic_captions = 4;
  auto engine = Make(options);
  ASSERT_NE(engine, nullptr);
  ExpectAllOk(engine->UpsertImages(SomeImages(6)));
  ExpectAllOk(engine->UpsertCaptions(SomeCaptions()));
  const Snapshot then = TakeSnapshot(*engine);
  const std::string dir = (base_ / "snap1").string();
  auto info = engine->CreateSnapshot(dir);
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(info->data_dir, dir);
  EXPECT_EQ(info->images, 6);
  EXPECT_EQ(info->captions, static_cast<int64_t>(kCaptions.size())) << "synthetic captions are not stored";
  EXPECT_GE(info->seconds, 0.0);
  EXPECT_EQ(engine->CreateSnapshot(dir).status().code(), absl::StatusCode::kAlreadyExists);
  EXPECT_EQ(engine->CreateSnapshot((base_ / "no" / "parent").string()).status().code(),
            absl::StatusCode::kNotFound);
  // The live engine moves on.
  ExpectAllOk(engine->DeleteImages(std::vector<std::string>{"img1"}));
  ExpectAllOk(engine->UpsertImages({RandomImage("img9", 3, 9)}));

  RetrievalEngineOptions restored_options = options;
  restored_options.data_dir = dir;
  restored_options.synthetic_captions = 0;
  auto restored = Make(restored_options);
  ASSERT_NE(restored, nullptr);
  EXPECT_EQ(restored->Stats().images, 6);
  EXPECT_EQ(restored->Stats().captions, static_cast<int64_t>(kCaptions.size()));
  // The live one had 4 synthetic captions then; compare against them removed.
  Snapshot expected = then;
  for (auto& hits : expected.captions) {
    hits.erase(std::remove_if(hits.begin(), hits.end(),
                              [](const CaptionHit& h) { return h.collection == kSyntheticCollection; }),
               hits.end());
  }
  ExpectSameSnapshot(TakeSnapshot(*restored), expected);
  auto got = restored->GetImages(std::vector<std::string>{"img1", "img9"});
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_TRUE((*got)[0].status.ok()) << "deleted after the snapshot";
  EXPECT_EQ((*got)[1].status.code(), absl::StatusCode::kNotFound) << "added after the snapshot";

  ASSERT_TRUE(engine->Close().ok());
  EXPECT_EQ(engine->CreateSnapshot((base_ / "snap2").string()).status().code(),
            absl::StatusCode::kFailedPrecondition);
  auto in_memory = RetrievalEngine::CreateWithStore(options, std::make_unique<InMemoryFeatureStore>());
  ASSERT_TRUE(in_memory.ok()) << in_memory.status();
  EXPECT_EQ((*in_memory)->CreateSnapshot((base_ / "snap3").string()).status().code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_FALSE(fs::exists(base_ / "snap3")) << "no half snapshot left behind";
}

TEST_F(RetrievalEngineTest, StoreBuiltWithOtherModelsIsFailedPrecondition) {
  {
    auto engine = Make(Options());
    ASSERT_NE(engine, nullptr);
    ExpectAllOk(engine->UpsertImages(SomeImages(2)));
  }
  RetrievalEngineOptions other = Options();
  other.model_dirs = {(base_ / "model_b").string()};
  auto engine = RetrievalEngine::Create(other);
  ASSERT_FALSE(engine.ok());
  EXPECT_EQ(engine.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(engine.status().message().find("other models"), std::string::npos) << engine.status();
  EXPECT_NE(engine.status().message().find("model_a"), std::string::npos) << engine.status();
  // Adding a model to the ensemble is a different model list too.
  auto ensemble = RetrievalEngine::Create(Options(/*ensemble=*/true));
  EXPECT_EQ(ensemble.status().code(), absl::StatusCode::kFailedPrecondition);
  // A byte-identical copy of the model directory is the same model.
  fs::copy(base_ / "model_a", base_ / "model_a_copy");
  RetrievalEngineOptions copy = Options();
  copy.model_dirs = {(base_ / "model_a_copy").string()};
  auto same = RetrievalEngine::Create(copy);
  ASSERT_TRUE(same.ok()) << same.status();
  EXPECT_EQ((*same)->Stats().images, 2);
}

TEST_F(RetrievalEngineTest, CorruptStoredRecordIsDataLossAtLoad) {
  auto store = std::make_unique<InMemoryFeatureStore>();
  std::string bad =
      *EncodeImageRecord(StoredImage{"broken", "", {}, 1, {}, {}, {FloatMatrix(1, 8)}});
  bad[5] ^= 0x10;
  ASSERT_TRUE(store->PutRawImageRecordForTesting("broken", bad).ok());
  auto engine = RetrievalEngine::CreateWithStore(Options(), std::move(store));
  ASSERT_FALSE(engine.ok());
  EXPECT_EQ(engine.status().code(), absl::StatusCode::kDataLoss) << engine.status();
  EXPECT_NE(engine.status().message().find("broken"), std::string::npos) << engine.status();
}

TEST_F(RetrievalEngineTest, InMemoryStoreWorksTheSame) {
  const RetrievalEngineOptions options = Options();
  auto engine = RetrievalEngine::CreateWithStore(options, std::make_unique<InMemoryFeatureStore>());
  ASSERT_TRUE(engine.ok()) << engine.status();
  const std::vector<ImageItem> images = SomeImages(5);
  ExpectAllOk((*engine)->UpsertImages(images));
  ExpectImageSearchMatchesOracle(**engine, options, images, 5);
}

TEST_F(RetrievalEngineTest, CapacityIsResourceExhaustedPerItem) {
  RetrievalEngineOptions options = Options();
  options.max_images = 2;
  options.max_captions = 1;
  auto engine = Make(options);
  ASSERT_NE(engine, nullptr);
  const std::vector<ImageItem> images = SomeImages(3);
  const std::vector<ItemResult> results = engine->UpsertImages(images);
  EXPECT_TRUE(results[0].status.ok());
  EXPECT_TRUE(results[1].status.ok());
  EXPECT_EQ(results[2].status.code(), absl::StatusCode::kResourceExhausted) << results[2].status;
  EXPECT_EQ(engine->Stats().images, 2);
  // Replacing a stored item needs no new slot.
  ExpectAllOk(engine->UpsertImages({images[1]}));
  // A refused item was never stored: it is not found and does not come back after a restart.
  EXPECT_EQ(engine->DeleteImages(std::vector<std::string>{"img2"})[0].status.code(),
            absl::StatusCode::kNotFound);
  const std::vector<ItemResult> captions = engine->UpsertCaptions(SomeCaptions());
  EXPECT_TRUE(captions[0].status.ok());
  EXPECT_EQ(captions[1].status.code(), absl::StatusCode::kResourceExhausted);
  engine.reset();
  engine = Make(options);
  ASSERT_NE(engine, nullptr);
  EXPECT_EQ(engine->Stats().images, 2);
  EXPECT_EQ(engine->Stats().captions, 1);

  // Scorer memory: room for roughly one small image.
  RetrievalEngineOptions tight = Options();
  tight.data_dir = (base_ / "tight").string();
  tight.max_feature_bytes = 600;
  auto small = Make(tight);
  ASSERT_NE(small, nullptr);
  const std::vector<ItemResult> fits =
      small->UpsertImages({RandomImage("one", 2, 1), RandomImage("big", 30, 2)});
  EXPECT_TRUE(fits[0].status.ok()) << fits[0].status;
  EXPECT_EQ(fits[1].status.code(), absl::StatusCode::kResourceExhausted) << fits[1].status;
  EXPECT_NE(fits[1].status.message().find("max_feature_bytes"), std::string::npos);
}

TEST_F(RetrievalEngineTest, StoreBeyondTheScorerMemoryLimitRefusesToStart) {
  // A restart with a limit below what is stored must not serve part of the acked items: start-up
  // fails with RESOURCE_EXHAUSTED, saying what to change, and the store is left intact.
  RetrievalEngineOptions options = Options();
  int64_t stored_bytes = 0;
  {
    auto engine = Make(options);
    ASSERT_NE(engine, nullptr);
    ExpectAllOk(engine->UpsertImages(SomeImages(6)));
    ExpectAllOk(engine->UpsertCaptions(SomeCaptions()));
    stored_bytes = engine->Stats().feature_bytes;
  }
  ASSERT_GT(stored_bytes, 0);
  {
    auto engine = Make(options);
    ASSERT_NE(engine, nullptr);
    const EngineStats stats = engine->Stats();
    EXPECT_EQ(stats.feature_bytes_limit, options.max_feature_bytes) << "CPU: the configured limit";
    EXPECT_GT(stats.feature_bytes_committed, 0);
    EXPECT_LE(stats.feature_bytes_committed, 2 * stored_bytes) << "the estimate is close to the bytes";
  }
  RetrievalEngineOptions tight = options;
  tight.max_feature_bytes = stored_bytes / 2;
  auto refused = RetrievalEngine::Create(tight);
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kResourceExhausted) << refused.status();
  EXPECT_NE(refused.status().message().find("max-feature-bytes"), std::string::npos)
      << refused.status();
  // With room again (the limit counts estimates, within 2x of the scorers' bytes), nothing was
  // lost.
  RetrievalEngineOptions roomy = options;
  roomy.max_feature_bytes = stored_bytes * 2;
  auto engine = Make(roomy);
  ASSERT_NE(engine, nullptr);
  EXPECT_EQ(engine->Stats().images, 6);
  EXPECT_EQ(engine->Stats().captions, static_cast<int64_t>(kCaptions.size()));
  EXPECT_EQ(engine->Stats().feature_bytes, stored_bytes);
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

TEST_F(RetrievalEngineTest, CudaEnsembleRanksAsTheCpuOne) {
  // The CUDA backend answers ensembles and filters from the models' device top lists
  // (top_list_search.h): its hits are the CPU engine's full ranking, to rounding.
  RetrievalEngineOptions cpu_options = Options(/*ensemble=*/true);
  cpu_options.synthetic_images = 300;
  RetrievalEngineOptions cuda_options = cpu_options;
  cuda_options.backend = ScorerBackend::kCuda;
  cuda_options.data_dir = (base_ / "data_cuda").string();
  auto cuda = RetrievalEngine::Create(cuda_options);
  if (!cuda.ok() && (cuda.status().code() == absl::StatusCode::kFailedPrecondition ||
                     cuda.status().code() == absl::StatusCode::kUnimplemented)) {
    GTEST_SKIP() << "no CUDA scorer here: " << cuda.status().message();
  }
  ASSERT_TRUE(cuda.ok()) << cuda.status();
  auto cpu = Make(cpu_options);
  ASSERT_NE(cpu, nullptr);
  ExpectAllOk(cpu->UpsertImages(SomeImages(6)));
  ExpectAllOk((*cuda)->UpsertImages(SomeImages(6)));
  SearchParams all;
  all.top_k = 306;
  auto full = cpu->SearchImages(kCaptions, all);
  ASSERT_TRUE(full.ok()) << full.status();
  constexpr float kTol = 1e-4f;
  for (const auto& [collection, top_k] : std::vector<std::pair<std::string, int>>{
           {"", 1}, {"", 10}, {"odd", 3}, {"synthetic", 5}, {"nothing", 4}}) {
    SearchParams params;
    params.top_k = top_k;
    params.filter.collection = collection;
    auto want = cpu->SearchImages(kCaptions, params);
    auto got = (*cuda)->SearchImages(kCaptions, params);
    ASSERT_TRUE(want.ok() && got.ok()) << want.status() << " " << got.status();
    for (size_t q = 0; q < kCaptions.size(); ++q) {
      const std::string where = "filter '" + collection + "' top " + std::to_string(top_k) +
                                " query " + std::to_string(q);
      ASSERT_EQ((*got)[q].size(), (*want)[q].size()) << where;
      for (size_t r = 0; r < (*want)[q].size(); ++r) {
        const ImageHit& hit = (*got)[q][r];
        EXPECT_NEAR(hit.score, (*want)[q][r].score, kTol) << where << " rank " << r;
        // A different id only where two scores tie to rounding: its CPU score must be the same.
        const auto cpu_hit = std::find_if((*full)[q].begin(), (*full)[q].end(),
                                          [&](const ImageHit& h) { return h.id == hit.id; });
        ASSERT_NE(cpu_hit, (*full)[q].end()) << where << ": " << hit.id;
        EXPECT_NEAR(cpu_hit->score, hit.score, kTol) << where << " rank " << r;
        EXPECT_TRUE(collection.empty() || hit.collection == collection) << where;
      }
    }
  }
  const RankingCounts ranked = (*cuda)->Stats().text_to_image_ranking;
  EXPECT_EQ(ranked.scorer_top_k, 0);
  EXPECT_GT(ranked.top_lists, 0) << "the related tiny models' lists decide some queries";
  EXPECT_EQ(ranked.top_lists + ranked.full_scores, 5 * static_cast<int64_t>(kCaptions.size()));
}

#ifdef SCANSERVE_CUDA_EMULATION
// Device failures, injected on the emulated device (tests/cuda_emulation), while a committed
// delete is applied to the scorers: a broken device copy, or no device memory for the
// compaction. The engine neither crashes nor serves what the store no longer holds: it turns
// unhealthy and refuses work until a restart, which reloads exactly what the store holds.
TEST_F(RetrievalEngineTest, CudaDeviceFaultsStopTheEngineUntilARestart) {
  for (scanserve_emu::FaultPoint fault :
       {scanserve_emu::FaultPoint::kCopyOnDevice, scanserve_emu::FaultPoint::kMalloc}) {
    const std::string when = fault == scanserve_emu::FaultPoint::kMalloc ? "malloc" : "copy";
    RetrievalEngineOptions options = Options();
    options.backend = ScorerBackend::kCuda;
    options.data_dir = (base_ / ("data_" + when)).string();
    auto engine = Make(options);
    ASSERT_NE(engine, nullptr);
    ExpectAllOk(engine->UpsertImages(SomeImages(12)));
    scanserve_emu::InjectFault(fault, 1);
    const std::vector<ItemResult> deleted = engine->DeleteImages({"img1", "img5"});
    scanserve_emu::ClearFaults();
    ExpectAllOk(deleted);  // durable: the store has committed them
    EXPECT_EQ(engine->Health().code(), absl::StatusCode::kInternal) << when;
    EXPECT_EQ(engine->SearchImages(kCaptions, {}).status().code(), absl::StatusCode::kInternal) << when;
    ImageQuery query;
    query.stored_id = "img2";
    EXPECT_EQ(engine->SearchCaptions({query}, {}).status().code(), absl::StatusCode::kInternal) << when;
    for (const ItemResult& r : engine->UpsertImages(SomeImages(1, 900))) {
      EXPECT_EQ(r.status.code(), absl::StatusCode::kInternal) << when;
    }
    for (const ItemResult& r : engine->DeleteImages({"img2"})) {
      EXPECT_EQ(r.status.code(), absl::StatusCode::kInternal) << when;
    }
    ASSERT_TRUE(engine->Close().ok());
    engine.reset();

    auto restarted = Make(options);
    ASSERT_NE(restarted, nullptr);
    EXPECT_TRUE(restarted->Health().ok()) << restarted->Health();
    EXPECT_EQ(restarted->Stats().images, 10) << when;
    auto hits = restarted->SearchImages({"a dog"}, {.top_k = 20});
    ASSERT_TRUE(hits.ok()) << hits.status();
    EXPECT_EQ((*hits)[0].size(), 10u);
    for (const ImageHit& hit : (*hits)[0]) {
      EXPECT_NE(hit.id, "img1");
      EXPECT_NE(hit.id, "img5");
    }
  }
}
#endif  // SCANSERVE_CUDA_EMULATION

TEST_F(RetrievalEngineTest, LargeUpsertIsCommittedInBoundedBatches) {
  auto engine = Make(Options());
  ASSERT_NE(engine, nullptr);
  std::vector<ImageItem> images;
  for (int i = 0; i < 1100; ++i) images.push_back(RandomImage("i" + std::to_string(i), 1, i));
  const int64_t writes_before = engine->Stats().store_synced_writes;
  ExpectAllOk(engine->UpsertImages(images));
  const EngineStats stats = engine->Stats();
  EXPECT_EQ(stats.images, 1100);
  EXPECT_EQ(stats.store_synced_writes - writes_before, 2);  // 1024 + 76 items, one fsync each
  auto hits = engine->SearchImages({"a dog"}, {.top_k = 1000});
  ASSERT_TRUE(hits.ok());
  EXPECT_EQ((*hits)[0].size(), 1000u);
}

TEST_F(RetrievalEngineTest, BadItemsAreInvalidArgumentAndDoNotStopTheOthers) {
  RetrievalEngineOptions options = Options();
  auto engine = Make(options);
  ASSERT_NE(engine, nullptr);
  std::vector<ImageItem> items;
  items.push_back(RandomImage("good", 3, 1));
  items.push_back(RandomImage("", 3, 2));                     // empty id
  items.push_back(RandomImage(std::string(257, 'x'), 3, 3));  // id too long
  items.push_back(RandomImage("wrong-dim", 3, 4));
  items.back().region_features = FloatMatrix(3, kImgDim + 1);
  items.push_back(RandomImage("nan", 3, 5));
  items.back().region_features.data[4] = std::nanf("");
  items.push_back(RandomImage("boxes", 3, 6));
  items.back().boxes.pop_back();
  items.push_back(RandomImage("labels", 3, 7));
  items.back().labels.push_back("extra");
  items.push_back(RandomImage("no-regions", 3, 8));
  items.back().region_features = FloatMatrix(0, kImgDim);
  items.push_back(RandomImage("good", 2, 9));  // duplicate id
  items.push_back(RandomImage("meta", 1, 10));
  items.back().metadata[std::string(300, 'k')] = "v";
  items.push_back(RandomImage("no-boxes-is-fine", 2, 11));
  items.back().boxes.clear();
  items.back().labels.clear();
  const std::vector<ItemResult> results = engine->UpsertImages(items);
  ASSERT_EQ(results.size(), items.size());
  EXPECT_TRUE(results[0].status.ok()) << results[0].status;
  for (size_t i = 1; i + 1 < results.size(); ++i) {
    EXPECT_EQ(results[i].status.code(), absl::StatusCode::kInvalidArgument)
        << i << ": " << results[i].status;
    EXPECT_EQ(results[i].id, items[i].id);
  }
  EXPECT_TRUE(results.back().status.ok()) << results.back().status;
  EXPECT_EQ(engine->Stats().images, 2);

  std::vector<CaptionItem> captions(4);
  captions[0].id = "ok";
  captions[0].text = "a dog";
  captions[1].id = "empty";
  captions[2].id = "blank";
  captions[2].text = "   ";
  captions[3].text = "no id";
  const std::vector<ItemResult> caption_results = engine->UpsertCaptions(captions);
  EXPECT_TRUE(caption_results[0].status.ok());
  for (size_t i = 1; i < 4; ++i) {
    EXPECT_EQ(caption_results[i].status.code(), absl::StatusCode::kInvalidArgument) << i;
  }

  // Searches.
  auto code = [](const absl::Status& s) { return s.code(); };
  EXPECT_EQ(code(engine->SearchImages({"a dog"}, {.top_k = 0}).status()),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(code(engine->SearchImages({"a dog"}, {.top_k = options.max_top_k + 1}).status()),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(code(engine->SearchImages({"a dog", ""}, {}).status()),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(code(engine->SearchImages({}, {}).status()), absl::StatusCode::kInvalidArgument);
  std::string long_query;
  for (int i = 0; i < options.max_query_words; ++i) long_query += "dog ";
  const absl::Status too_long = engine->SearchImages({long_query}, {}).status();
  EXPECT_EQ(too_long.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(too_long.message().find("tokens"), std::string::npos) << too_long;
  // A query longer than any caption is refused on its length, before it is tokenised: one word
  // repeated over 64 MiB would otherwise take seconds to find over max_query_words.
  const std::string longest(RetrievalLimits::kMaxQueryBytes, 'a');  // one (unknown) word: allowed
  EXPECT_TRUE(engine->SearchImages({longest}, {}).ok());
  const absl::Status too_many_bytes = engine->SearchImages({"a dog", longest + "a"}, {}).status();
  EXPECT_EQ(too_many_bytes.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(too_many_bytes.message().find("query 1 has 65537 bytes"), std::string::npos) << too_many_bytes;
  ImageQuery unknown;
  unknown.stored_id = "nope";
  EXPECT_EQ(code(engine->SearchCaptions({unknown}, {}).status()), absl::StatusCode::kNotFound);
  ImageQuery both;
  both.stored_id = "good";
  both.region_features = RandomImage("q", 2, 1).region_features;
  EXPECT_EQ(code(engine->SearchCaptions({both}, {}).status()), absl::StatusCode::kInvalidArgument);
  ImageQuery bad_dim;
  bad_dim.region_features = FloatMatrix(2, 3);
  EXPECT_EQ(code(engine->SearchCaptions({bad_dim}, {}).status()),
            absl::StatusCode::kInvalidArgument);
  ImageQuery empty;
  EXPECT_EQ(code(engine->SearchCaptions({empty}, {}).status()), absl::StatusCode::kInvalidArgument);
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

// ---- Crash durability: a child process acks, then dies by SIGKILL ------------------------------

// Runs only in the child process the test below starts (it is disabled in normal runs).
TEST(RetrievalEngineCrashChild, DISABLED_UpsertDeleteThenSigkill) {
  const char* dir = std::getenv(kCrashChildEnv);
  if (dir == nullptr) GTEST_SKIP() << "only run by RetrievalEngineTest.AckedWritesSurviveSigkill";
  RetrievalEngineOptions options;
  options.model_dirs = {(fs::path(dir) / "model_a").string()};
  options.data_dir = (fs::path(dir) / "data").string();
  options.num_threads = 1;
  auto engine = RetrievalEngine::Create(options);
  if (!engine.ok()) _exit(3);
  for (const ItemResult& r :
       (*engine)->UpsertImages({RandomImage("survivor", 4, 1), RandomImage("doomed", 2, 2)})) {
    if (!r.status.ok()) _exit(4);
  }
  CaptionItem caption;
  caption.id = "caption-survivor";
  caption.text = "a dog runs";
  if (!(*engine)->UpsertCaptions({caption})[0].status.ok()) _exit(5);
  if (!(*engine)->DeleteImages(std::vector<std::string>{"doomed"})[0].status.ok()) _exit(6);
  // Acked: die at once, with no destructor, flush or close.
  raise(SIGKILL);
  _exit(7);
}

TEST_F(RetrievalEngineTest, AckedWritesSurviveSigkill) {
  // The child execs a fresh copy of this binary (threads and OpenMP state do not survive fork);
  // everything it needs is built before fork, as only async-signal-safe calls may follow it.
  const std::string env = std::string(kCrashChildEnv) + "=" + base_.string();
  char* const argv[] = {
      const_cast<char*>("retrieval_tests"),
      const_cast<char*>(
          "--gtest_filter=RetrievalEngineCrashChild.DISABLED_UpsertDeleteThenSigkill"),
      const_cast<char*>("--gtest_also_run_disabled_tests"), nullptr};
  char* const envp[] = {const_cast<char*>(env.c_str()), nullptr};
  const pid_t child = fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    execve("/proc/self/exe", argv, envp);
    _exit(127);
  }
  int wstatus = 0;
  ASSERT_EQ(waitpid(child, &wstatus, 0), child);
  ASSERT_TRUE(WIFSIGNALED(wstatus))
      << "the child exited with " << WEXITSTATUS(wstatus) << " before its ack";
  ASSERT_EQ(WTERMSIG(wstatus), SIGKILL);

  auto engine = Make(Options());
  ASSERT_NE(engine, nullptr);
  EXPECT_EQ(engine->Stats().images, 1);
  EXPECT_EQ(engine->Stats().captions, 1);
  auto hits = engine->SearchImages({"a dog"}, {.top_k = 10});
  ASSERT_TRUE(hits.ok());
  ASSERT_EQ((*hits)[0].size(), 1u);
  EXPECT_EQ((*hits)[0][0].id, "survivor");  // the deleted one never comes back
  ImageQuery query;
  query.stored_id = "survivor";
  auto captions = engine->SearchCaptions({query}, {});
  ASSERT_TRUE(captions.ok()) << captions.status();
  ASSERT_EQ((*captions)[0].size(), 1u);
  EXPECT_EQ((*captions)[0][0].text, "a dog runs");
}

}  // namespace
}  // namespace scanserve
