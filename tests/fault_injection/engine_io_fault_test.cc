// The retrieval engine when its store's disk fails (io_faults.h): writes are refused while it
// does, and afterwards the engine serves exactly what the store holds, which is what a restart
// loads, even for writes whose failure left their outcome unknown.
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "engine/retrieval/retrieval_engine.h"
#include "tests/engine/test_util/tiny_model.h"
#include "tests/fault_injection/io_faults.h"

namespace scanserve {
namespace {

namespace fs = std::filesystem;

constexpr int64_t kImgDim = 10;  // TinyModelOptions' default

ImageItem RandomImage(const std::string& id, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist;
  ImageItem item;
  item.id = id;
  item.region_features = FloatMatrix(3, kImgDim);
  for (float& v : item.region_features.data) v = std::fabs(dist(rng));
  return item;
}

class EngineIoFaultTest : public ::testing::Test {
 protected:
  void SetUp() override {
    base_ = fs::weakly_canonical(fs::temp_directory_path()) /
            ("engine_io_fault_test_" + std::to_string(::getpid()) + "_" +
             ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(base_);
    ASSERT_FALSE(test_util::WriteTinyModel(base_ / "model", {}).empty());
    options_.model_dirs = {(base_ / "model").string()};
    options_.data_dir = (base_ / "data").string();
    options_.num_threads = 2;
  }
  void TearDown() override {
    ScanserveIoFaultsArm("", kScanserveIoFaultsOff);
    fs::remove_all(base_);
  }
  std::unique_ptr<RetrievalEngine> Make() {
    auto engine = RetrievalEngine::Create(options_);
    EXPECT_TRUE(engine.ok()) << engine.status();
    return engine.ok() ? std::move(engine).value() : nullptr;
  }
  void Arm(ScanserveIoFaultMode mode) { ScanserveIoFaultsArm(options_.data_dir.c_str(), mode); }
  void Disarm() { ScanserveIoFaultsArm("", kScanserveIoFaultsOff); }

  absl::Status Upsert(RetrievalEngine& engine, const std::string& id, uint32_t seed) {
    return engine.UpsertImages({RandomImage(id, seed)})[0].status;
  }
  // Upserts until one succeeds (the store's reopen is retried with a backoff); false after 10 s.
  bool UpsertOnceRecovered(RetrievalEngine& engine, const std::string& id, uint32_t seed) {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    while (std::chrono::steady_clock::now() < deadline) {
      if (Upsert(engine, id, seed).ok()) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    return false;
  }
  // Ids served: listed, and found by a search over everything.
  static std::vector<std::string> Served(const RetrievalEngine& engine) {
    auto page = engine.ListImages({});
    EXPECT_TRUE(page.ok()) << page.status();
    if (!page.ok()) return {};
    SearchParams params;
    params.top_k = 100;
    auto hits = engine.SearchImages({"a dog runs on the grass"}, params);
    EXPECT_TRUE(hits.ok()) << hits.status();
    std::vector<std::string> found;
    if (hits.ok()) {
      for (const ImageHit& hit : (*hits)[0]) found.push_back(hit.id);
    }
    std::sort(found.begin(), found.end());
    EXPECT_EQ(found, page->ids) << "a listed id is not searched, or the other way round";
    return page->ids;
  }

  fs::path base_;
  RetrievalEngineOptions options_;
};

TEST_F(EngineIoFaultTest, AWriteWhoseSyncFailedIsServedOnceTheReopenFindsItStored) {
  auto engine = Make();
  ASSERT_NE(engine, nullptr);
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(Upsert(*engine, "img" + std::to_string(i), i).ok());

  Arm(kScanserveIoFaultsSync);
  const absl::Status failed = Upsert(*engine, "unsure", 10);
  EXPECT_EQ(failed.code(), absl::StatusCode::kUnavailable) << failed;
  const std::vector<ItemResult> deleted = engine->DeleteImages(std::vector<std::string>{"img0"});
  EXPECT_EQ(deleted[0].status.code(), absl::StatusCode::kUnavailable) << deleted[0].status;
  EXPECT_EQ(engine->Stats().images, 3) << "nothing failed is served yet";
  // Searches go on meanwhile.
  EXPECT_EQ(Served(*engine), (std::vector<std::string>{"img0", "img1", "img2"}));

  Disarm();
  ASSERT_TRUE(UpsertOnceRecovered(*engine, "after", 11));
  // The failed sync's bytes were replayed: "unsure" is stored, so it is served; the refused
  // delete never reached the store.
  const std::vector<std::string> served = Served(*engine);
  EXPECT_EQ(served, (std::vector<std::string>{"after", "img0", "img1", "img2", "unsure"}));
  auto got = engine->GetImages(std::vector<std::string>{"unsure"});
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_TRUE((*got)[0].status.ok()) << (*got)[0].status;
  EXPECT_TRUE(engine->Health().ok()) << engine->Health();

  // A restart loads the same.
  ASSERT_TRUE(engine->Close().ok());
  engine.reset();
  engine = Make();
  ASSERT_NE(engine, nullptr);
  EXPECT_EQ(Served(*engine), served);
}

TEST_F(EngineIoFaultTest, WhatIsServedEqualsWhatARestartLoadsAfterFailedWrites) {
  auto engine = Make();
  ASSERT_NE(engine, nullptr);
  for (int i = 0; i < 4; ++i) ASSERT_TRUE(Upsert(*engine, "img" + std::to_string(i), i).ok());

  Arm(kScanserveIoFaultsAll);
  EXPECT_EQ(Upsert(*engine, "img1", 99).code(), absl::StatusCode::kUnavailable);  // a replace
  EXPECT_EQ(engine->DeleteImages(std::vector<std::string>{"img2"})[0].status.code(),
            absl::StatusCode::kUnavailable);
  ItemUpdate update;
  update.id = "img3";
  update.collection = "moved";
  EXPECT_EQ(engine->UpdateImages({update})[0].status.code(), absl::StatusCode::kUnavailable);
  Disarm();
  ASSERT_TRUE(UpsertOnceRecovered(*engine, "after", 11));

  const std::vector<std::string> served = Served(*engine);
  for (const std::string id : {"img0", "img3", "after"}) {
    EXPECT_NE(std::find(served.begin(), served.end(), id), served.end()) << id;
  }
  auto img3 = engine->GetImages(std::vector<std::string>{"img3"});
  ASSERT_TRUE(img3.ok());
  EXPECT_EQ((*img3)[0].item.collection, "") << "the refused update changed nothing";
  SearchParams params;
  params.top_k = 100;
  auto before = engine->SearchImages({"the dog"}, params);
  ASSERT_TRUE(before.ok());

  ASSERT_TRUE(engine->Close().ok());
  engine.reset();
  engine = Make();
  ASSERT_NE(engine, nullptr);
  EXPECT_EQ(Served(*engine), served);
  auto after = engine->SearchImages({"the dog"}, params);
  ASSERT_TRUE(after.ok());
  ASSERT_EQ((*after)[0].size(), (*before)[0].size());
  for (size_t r = 0; r < (*after)[0].size(); ++r) {
    EXPECT_EQ((*after)[0][r].id, (*before)[0][r].id) << "rank " << r;
    EXPECT_FLOAT_EQ((*after)[0][r].score, (*before)[0][r].score) << "rank " << r;
  }
}

}  // namespace
}  // namespace scanserve
