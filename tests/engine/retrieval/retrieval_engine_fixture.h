// The retrieval engine tests' shared pieces: two tiny random models (one t2i LogSumExp, one i2t
// Mean), random images and captions, the offline similarity oracle (engine/eval/similarity.h), and
// the fixture that writes the models into a fresh directory per test. Included by
// retrieval_engine_search_test.cc, retrieval_engine_store_test.cc and retrieval_engine_cuda_test.cc
// (which tests/cuda_emulation also builds against the emulated device).
#pragma once

#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <memory>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "engine/eval/similarity.h"
#include "engine/model/scan_model.h"
#include "engine/retrieval/retrieval_engine.h"
#include "engine/retrieval/synthetic_items.h"
#include "engine/scoring/reference_scorer.h"
#include "tests/engine/test_util/tiny_model.h"

namespace scanserve {
namespace retrieval_test {

namespace fs = std::filesystem;

inline constexpr float kScoreTol = 1e-5f;    // engine vs the offline oracle
inline constexpr float kRestartTol = 1e-6f;  // the same engine state before and after a restart
inline constexpr int64_t kImgDim = 10;
inline constexpr char kCrashChildEnv[] = "SCANSERVE_RETRIEVAL_CRASH_CHILD_DIR";

inline const std::vector<std::string> kWords = {"a",   "dog",   "runs", "on",  "the", "grass",
                                         ".",   "cat",   "sits", "red", "car", "street",
                                         "man", "rides", "bike", "in"};
inline const std::vector<std::string> kCaptions = {"a dog runs on the grass .",
                                            "a cat sits on a red car",
                                            "a man rides a bike in the street",
                                            "the red car",
                                            "a dog",
                                            "a man in the grass ."};

inline test_util::TinyModelOptions ModelA() {
  test_util::TinyModelOptions o;
  o.words = kWords;
  o.seed = 11;
  return o;  // t2i LogSumExp 9 / 6
}

inline test_util::TinyModelOptions ModelB() {
  test_util::TinyModelOptions o;
  o.words = kWords;
  o.seed = 23;
  o.attention.cross_attn = CrossAttention::kImageToText;
  o.attention.pooling = Pooling::kMean;
  o.attention.lambda_softmax = 4.0f;
  return o;
}

inline ImageItem RandomImage(const std::string& id, int64_t regions, uint32_t seed) {
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

inline std::vector<ImageItem> SomeImages(int n, uint32_t seed = 100) {
  std::vector<ImageItem> images;
  for (int i = 0; i < n; ++i) {
    images.push_back(RandomImage("img" + std::to_string(i), 1 + (i * 3) % 8, seed + i));
    images.back().collection = i % 2 ? "odd" : "even";
    images.back().metadata = {{"mod3", std::to_string(i % 3)}};
  }
  return images;
}

inline std::vector<CaptionItem> SomeCaptions() {
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

inline void ExpectAllOk(const std::vector<ItemResult>& results) {
  for (const ItemResult& r : results) EXPECT_TRUE(r.status.ok()) << r.id << ": " << r.status;
}

// Each model's oracle (ReferenceScorer) scores of queries[m] against the first n items of a
// synthetic pool, averaged over the models (an ensemble's scores).
inline std::vector<float> AveragedPoolScores(const std::vector<std::unique_ptr<ScanModel>>& models,
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

}  // namespace retrieval_test
}  // namespace scanserve
