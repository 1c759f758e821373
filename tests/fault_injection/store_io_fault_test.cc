// RocksDbFeatureStore when its disk fails (EIO on writes or syncs, io_faults.h): writes stop with
// UNAVAILABLE, reads go on, and the store reopens itself once the disk works again.
#include <gtest/gtest.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <string>
#include <thread>
#include <vector>

#include "engine/store/rocksdb_feature_store.h"
#include "tests/fault_injection/io_faults.h"

namespace scanserve {
namespace {

namespace fs = std::filesystem;

StoredImage MakeImage(const std::string& id, float value) {
  StoredImage image;
  image.id = id;
  image.num_regions = 2;
  FloatMatrix embedding(2, 4);
  for (float& v : embedding.data) v = value;
  image.embeddings.push_back(embedding);
  return image;
}

class StoreIoFaultTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::weakly_canonical(fs::temp_directory_path()) /
           ("store_io_fault_test_" + std::to_string(::getpid()) + "_" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
  }
  void TearDown() override {
    ScanserveIoFaultsArm("", kScanserveIoFaultsOff);
    fs::remove_all(dir_);
  }
  std::unique_ptr<RocksDbFeatureStore> Open() {
    auto store = RocksDbFeatureStore::Open(dir_.string());
    EXPECT_TRUE(store.ok()) << store.status();
    return store.ok() ? std::move(store).value() : nullptr;
  }
  void Arm(ScanserveIoFaultMode mode) { ScanserveIoFaultsArm(dir_.c_str(), mode); }
  void Disarm() { ScanserveIoFaultsArm("", kScanserveIoFaultsOff); }
  // RecoverWrites until it succeeds (its retries are spaced by a backoff); false after 10 s.
  static bool Recover(RocksDbFeatureStore& store) {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    while (std::chrono::steady_clock::now() < deadline) {
      if (store.RecoverWrites().ok()) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    return false;
  }
  static bool Has(const RocksDbFeatureStore& store, const std::string& id) {
    auto got = store.GetImages(std::vector<std::string>{id});
    EXPECT_TRUE(got.ok()) << got.status();
    return got.ok() && (*got)[0].has_value();
  }
  fs::path dir_;
};

TEST_F(StoreIoFaultTest, FailedLogWriteStopsWritesUntilTheStoreReopensItself) {
  auto store = Open();
  ASSERT_NE(store, nullptr);
  ASSERT_TRUE(store->PutImages({MakeImage("acked", 1)}).ok());

  Arm(kScanserveIoFaultsAll);
  const absl::Status failed = store->PutImages({MakeImage("failed", 2)});
  EXPECT_EQ(failed.code(), absl::StatusCode::kUnavailable) << failed;
  EXPECT_NE(failed.message().find("Input/output error"), absl::string_view::npos) << failed;
  EXPECT_GT(ScanserveIoFaultsInjected(), 0);
  FeatureStoreStats stats = store->Stats();
  EXPECT_TRUE(stats.writes_stopped);
  EXPECT_EQ(stats.failed_writes, 1);
  EXPECT_EQ(stats.reopens, 0);
  // Reads go on until a write tries to reopen.
  EXPECT_TRUE(Has(*store, "acked"));

  // While the disk keeps failing, the reopen fails too; every write is refused.
  const absl::Status refused = store->DeleteImages(std::vector<std::string>{"acked"});
  EXPECT_EQ(refused.code(), absl::StatusCode::kUnavailable) << refused;
  EXPECT_NE(refused.message().find("stopped taking writes after an I/O error"),
            absl::string_view::npos)
      << refused;
  EXPECT_EQ(store->SetMeta("k", "v").code(), absl::StatusCode::kUnavailable);
  EXPECT_TRUE(store->Stats().writes_stopped);

  Disarm();
  ASSERT_TRUE(Recover(*store));
  stats = store->Stats();
  EXPECT_FALSE(stats.writes_stopped);
  EXPECT_EQ(stats.reopens, 1);
  ASSERT_TRUE(store->PutImages({MakeImage("after", 3)}).ok());
  EXPECT_TRUE(Has(*store, "acked")) << "the refused delete did not happen";
  EXPECT_TRUE(Has(*store, "after"));

  // A fresh open sees the same: every acked write.
  ASSERT_TRUE(store->Close().ok());
  store = Open();
  ASSERT_NE(store, nullptr);
  EXPECT_TRUE(Has(*store, "acked"));
  EXPECT_TRUE(Has(*store, "after"));
  EXPECT_FALSE(store->Stats().writes_stopped);
}

TEST_F(StoreIoFaultTest, AFailedSyncLeavesTheWriteToTheReplay) {
  // Why callers must read back a failed write (RecoverWrites' contract): the log's bytes reached
  // the page cache, the reopen replays them, and the write that failed is stored after all.
  auto store = Open();
  ASSERT_NE(store, nullptr);
  Arm(kScanserveIoFaultsSync);
  const absl::Status failed = store->PutImages({MakeImage("unsure", 2)});
  EXPECT_EQ(failed.code(), absl::StatusCode::kUnavailable) << failed;
  EXPECT_TRUE(store->Stats().writes_stopped);
  Disarm();
  ASSERT_TRUE(Recover(*store));
  EXPECT_TRUE(Has(*store, "unsure"));
}

TEST_F(StoreIoFaultTest, ACheckpointWhoseFlushFailsStopsWritesToo) {
  auto store = Open();
  ASSERT_NE(store, nullptr);
  ASSERT_TRUE(store->PutImages({MakeImage("in-the-write-buffer", 1)}).ok());
  Arm(kScanserveIoFaultsAll);
  const fs::path copy = dir_.string() + "_checkpoint";
  const absl::Status failed = store->Checkpoint(copy.string());
  EXPECT_EQ(failed.code(), absl::StatusCode::kUnavailable) << failed;
  // Said at once, not at the next write: the metrics and the health poll's reopen see it.
  EXPECT_TRUE(store->WritesStopped());
  Disarm();
  ASSERT_TRUE(Recover(*store));
  EXPECT_TRUE(Has(*store, "in-the-write-buffer"));
  fs::remove_all(copy);
  EXPECT_TRUE(store->Checkpoint(copy.string()).ok());
  fs::remove_all(copy);
}

TEST_F(StoreIoFaultTest, CloseAfterAFailedReopenIsClean) {
  auto store = Open();
  ASSERT_NE(store, nullptr);
  Arm(kScanserveIoFaultsAll);
  EXPECT_FALSE(store->PutImages({MakeImage("failed", 2)}).ok());
  EXPECT_EQ(store->RecoverWrites().code(), absl::StatusCode::kUnavailable);
  // The database is closed now (its reopen failed): reads say so, and Close still succeeds.
  auto read = store->GetImages(std::vector<std::string>{"failed"});
  EXPECT_EQ(read.status().code(), absl::StatusCode::kUnavailable) << read.status();
  Disarm();
  EXPECT_TRUE(store->Close().ok());
  EXPECT_EQ(store->PutImages({MakeImage("x", 1)}).code(), absl::StatusCode::kFailedPrecondition);
  store = Open();
  ASSERT_NE(store, nullptr);
}

}  // namespace
}  // namespace scanserve
