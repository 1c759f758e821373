// One driver for every FeatureStore implementation (in-memory and RocksDB): round trips, batches,
// deletes, scans, meta entries and corrupt records behave the same. RocksDB-only behaviour
// (reopen, files on disk) is at the end.
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <functional>
#include <memory>
#include <ostream>
#include <random>
#include <set>
#include <string>
#include <thread>

#include "engine/store/change_log_retention.h"
#include "engine/store/feature_store.h"
#include "engine/store/in_memory_feature_store.h"
#include "engine/store/record_codec.h"
#include "engine/store/rocksdb_feature_store.h"

namespace scanserve {
namespace {

namespace fs = std::filesystem;

// How the driver makes and pokes a store of one implementation.
struct StoreKind {
  std::string name;
  std::function<std::unique_ptr<FeatureStore>(const fs::path& dir, double change_log_retention_s)> open;
  std::function<absl::Status(FeatureStore*, const std::string& id, const std::string& value)>
      put_raw_image;
};

// gtest prints parameters in test names: the implementation's name, not the struct's bytes.
void PrintTo(const StoreKind& kind, std::ostream* os) { *os << kind.name; }

std::vector<StoreKind> AllKinds() {
  return {
      {"InMemory",
       [](const fs::path&, double retention_s) -> std::unique_ptr<FeatureStore> {
         return std::make_unique<InMemoryFeatureStore>(retention_s);
       },
       [](FeatureStore* s, const std::string& id, const std::string& value) {
         return static_cast<InMemoryFeatureStore*>(s)->PutRawImageRecordForTesting(id, value);
       }},
      {"RocksDb",
       [](const fs::path& dir, double retention_s) -> std::unique_ptr<FeatureStore> {
         auto store = RocksDbFeatureStore::Open(dir.string(), {.change_log_retention_s = retention_s});
         EXPECT_TRUE(store.ok()) << store.status();
         return store.ok() ? std::move(store).value() : nullptr;
       },
       [](FeatureStore* s, const std::string& id, const std::string& value) {
         return static_cast<RocksDbFeatureStore*>(s)->PutRawImageRecordForTesting(id, value);
       }},
  };
}

FloatMatrix RandomMatrix(int64_t rows, int64_t cols, std::mt19937& rng) {
  std::normal_distribution<float> dist;
  FloatMatrix m(rows, cols);
  for (float& v : m.data) v = dist(rng);
  return m;
}

StoredImage MakeImage(const std::string& id, int64_t regions, uint32_t seed) {
  std::mt19937 rng(seed);
  StoredImage image;
  image.id = id;
  image.collection = seed % 2 ? "odd" : "even";
  image.metadata = {{"seed", std::to_string(seed)}};
  image.num_regions = regions;
  for (int64_t r = 0; r < regions; ++r) {
    image.boxes.push_back({float(r), float(r) + 1, float(r) + 2, float(r) + 3});
    image.labels.push_back("label " + std::to_string(r));
  }
  // 36 x 1024 is what a real image stores per model: values well past the blob threshold.
  image.embeddings = {RandomMatrix(regions, 64, rng), RandomMatrix(regions, 32, rng)};
  return image;
}

StoredCaption MakeCaption(const std::string& id, int64_t tokens, uint32_t seed) {
  std::mt19937 rng(seed);
  StoredCaption caption;
  caption.id = id;
  caption.text = "caption " + id;
  caption.metadata = {{"seed", std::to_string(seed)}};
  std::vector<int64_t> ids(static_cast<size_t>(tokens));
  for (int64_t t = 0; t < tokens; ++t) ids[static_cast<size_t>(t)] = t + 1;
  caption.token_ids = {ids, ids};
  caption.embeddings = {RandomMatrix(tokens, 64, rng), RandomMatrix(tokens, 32, rng)};
  return caption;
}

void ExpectSameImage(const StoredImage& a, const StoredImage& b) {
  EXPECT_EQ(a.id, b.id);
  EXPECT_EQ(a.collection, b.collection);
  EXPECT_EQ(a.metadata, b.metadata);
  EXPECT_EQ(a.num_regions, b.num_regions);
  EXPECT_EQ(a.boxes, b.boxes);
  EXPECT_EQ(a.labels, b.labels);
  ASSERT_EQ(a.embeddings.size(), b.embeddings.size());
  for (size_t m = 0; m < a.embeddings.size(); ++m) {
    EXPECT_EQ(a.embeddings[m].rows, b.embeddings[m].rows);
    EXPECT_EQ(a.embeddings[m].data, b.embeddings[m].data) << "model " << m;
  }
}

void ExpectSameCaption(const StoredCaption& a, const StoredCaption& b) {
  EXPECT_EQ(a.id, b.id);
  EXPECT_EQ(a.text, b.text);
  EXPECT_EQ(a.metadata, b.metadata);
  EXPECT_EQ(a.token_ids, b.token_ids);
  ASSERT_EQ(a.embeddings.size(), b.embeddings.size());
  for (size_t m = 0; m < a.embeddings.size(); ++m)
    EXPECT_EQ(a.embeddings[m].data, b.embeddings[m].data);
}

class FeatureStoreTest : public ::testing::TestWithParam<StoreKind> {
 protected:
  void SetUp() override {
    std::string name = ::testing::UnitTest::GetInstance()->current_test_info()->name();
    std::replace(name.begin(), name.end(), '/', '_');  // "Case/RocksDb" must not nest directories
    dir_ = fs::temp_directory_path() /
           ("feature_store_test_" + std::to_string(::getpid()) + "_" + name);
    fs::remove_all(dir_);
    store_ = GetParam().open(dir_, /*change_log_retention_s=*/86400);
    ASSERT_NE(store_, nullptr);
  }
  void TearDown() override {
    store_.reset();
    fs::remove_all(dir_);
  }

  fs::path dir_;
  std::unique_ptr<FeatureStore> store_;
};

TEST_P(FeatureStoreTest, EmptyStore) {
  auto image = store_->GetImage("nope");
  EXPECT_EQ(image.status().code(), absl::StatusCode::kNotFound);
  int visited = 0;
  ASSERT_TRUE(store_
                  ->ScanImages([&](StoredImage&) {
                    ++visited;
                    return absl::OkStatus();
                  })
                  .ok());
  ASSERT_TRUE(store_
                  ->ScanCaptions([&](StoredCaption&) {
                    ++visited;
                    return absl::OkStatus();
                  })
                  .ok());
  EXPECT_EQ(visited, 0);
  auto meta = store_->GetMeta("fingerprint");
  ASSERT_TRUE(meta.ok()) << meta.status();
  EXPECT_FALSE(meta->has_value());
  // Empty batches are no-ops.
  EXPECT_TRUE(store_->PutImages({}).ok());
  EXPECT_TRUE(store_->DeleteCaptions({}).ok());
}

TEST_P(FeatureStoreTest, RoundTripBatchesExactly) {
  std::vector<StoredImage> images;
  for (int i = 0; i < 5; ++i) images.push_back(MakeImage("img" + std::to_string(i), 1 + i * 9, i));
  ASSERT_TRUE(store_->PutImages(images).ok());
  std::vector<StoredCaption> captions = {MakeCaption("c0", 1, 10), MakeCaption("c1", 12, 11)};
  ASSERT_TRUE(store_->PutCaptions(captions).ok());

  const std::vector<std::string> ids = {"img3", "missing", "img0"};
  auto got = store_->GetImages(ids);
  ASSERT_TRUE(got.ok()) << got.status();
  ASSERT_EQ(got->size(), 3u);
  ASSERT_TRUE((*got)[0].has_value());
  ExpectSameImage(*(*got)[0], images[3]);
  EXPECT_FALSE((*got)[1].has_value());
  ExpectSameImage(*(*got)[2], images[0]);

  auto caption = store_->GetCaption("c1");
  ASSERT_TRUE(caption.ok()) << caption.status();
  ExpectSameCaption(*caption, captions[1]);

  // A scan visits every record once, in id order.
  std::vector<std::string> scanned;
  ASSERT_TRUE(store_
                  ->ScanImages([&](StoredImage& image) {
                    const int i = image.id.back() - '0';
                    ExpectSameImage(image, images[static_cast<size_t>(i)]);
                    scanned.push_back(image.id);
                    return absl::OkStatus();
                  })
                  .ok());
  EXPECT_EQ(scanned, (std::vector<std::string>{"img0", "img1", "img2", "img3", "img4"}));
}

TEST_P(FeatureStoreTest, PutReplacesAndDeleteRemoves) {
  ASSERT_TRUE(store_->PutImages({MakeImage("a", 3, 1), MakeImage("b", 3, 2)}).ok());
  const StoredImage replacement = MakeImage("a", 7, 99);
  ASSERT_TRUE(store_->PutImages({replacement}).ok());
  auto a = store_->GetImage("a");
  ASSERT_TRUE(a.ok());
  ExpectSameImage(*a, replacement);

  const std::vector<std::string> gone = {"b", "never-stored"};  // absent ids are fine
  ASSERT_TRUE(store_->DeleteImages(gone).ok());
  EXPECT_EQ(store_->GetImage("b").status().code(), absl::StatusCode::kNotFound);
  int count = 0;
  ASSERT_TRUE(store_
                  ->ScanImages([&](StoredImage&) {
                    ++count;
                    return absl::OkStatus();
                  })
                  .ok());
  EXPECT_EQ(count, 1);

  ASSERT_TRUE(store_->PutCaptions({MakeCaption("x", 4, 1)}).ok());
  const std::vector<std::string> x = {"x"};
  ASSERT_TRUE(store_->DeleteCaptions(x).ok());
  EXPECT_EQ(store_->GetCaption("x").status().code(), absl::StatusCode::kNotFound);
}

// Region features live apart from the records: only GetImageRegionFeatures reads them; a record
// written again with its flag keeps them, a replacement without them drops them, a delete too.
TEST_P(FeatureStoreTest, RegionFeaturesFollowTheirImage) {
  std::mt19937 rng(8);
  StoredImage kept = MakeImage("kept", 4, 1);
  kept.region_features = RandomMatrix(4, 48, rng);
  const FloatMatrix features = kept.region_features;
  ASSERT_TRUE(store_->PutImages({kept, MakeImage("plain", 3, 2)}).ok());
  const std::vector<std::string> ids = {"kept", "plain", "absent"};

  auto read = store_->GetImageRegionFeatures(ids);
  ASSERT_TRUE(read.ok()) << read.status();
  ASSERT_TRUE((*read)[0].has_value());
  EXPECT_EQ((*read)[0]->rows, 4);
  EXPECT_EQ((*read)[0]->cols, 48);
  EXPECT_EQ((*read)[0]->data, features.data);  // bit for bit
  EXPECT_FALSE((*read)[1].has_value());
  EXPECT_FALSE((*read)[2].has_value());

  auto record = store_->GetImage("kept");
  ASSERT_TRUE(record.ok()) << record.status();
  EXPECT_TRUE(record->has_region_features);
  EXPECT_TRUE(record->region_features.data.empty()) << "records never carry the features";
  int scanned = 0;
  ASSERT_TRUE(store_
                  ->ScanImages([&](StoredImage& image) {
                    EXPECT_TRUE(image.region_features.data.empty());
                    EXPECT_EQ(image.has_region_features, image.id == "kept");
                    ++scanned;
                    return absl::OkStatus();
                  })
                  .ok());
  EXPECT_EQ(scanned, 2);

  // Written again as read (a metadata update): the features stay.
  record->metadata["tag"] = "beach";
  ASSERT_TRUE(store_->PutImages({*record}).ok());
  read = store_->GetImageRegionFeatures(ids);
  ASSERT_TRUE(read.ok() && (*read)[0].has_value());
  EXPECT_EQ((*read)[0]->data, features.data);
  EXPECT_EQ(store_->GetImage("kept")->metadata.at("tag"), "beach");

  // Replaced by an image without features: none are left behind.
  ASSERT_TRUE(store_->PutImages({MakeImage("kept", 2, 3)}).ok());
  read = store_->GetImageRegionFeatures(ids);
  ASSERT_TRUE(read.ok());
  EXPECT_FALSE((*read)[0].has_value());
  EXPECT_FALSE(store_->GetImage("kept")->has_region_features);

  // A delete takes them with the record.
  ASSERT_TRUE(store_->PutImages({kept}).ok());
  ASSERT_TRUE(store_->DeleteImages(std::vector<std::string>{"kept"}).ok());
  read = store_->GetImageRegionFeatures(ids);
  ASSERT_TRUE(read.ok());
  EXPECT_FALSE((*read)[0].has_value());

  StoredImage wrong = MakeImage("wrong", 3, 4);
  wrong.region_features = RandomMatrix(2, 48, rng);  // not one row per region
  EXPECT_EQ(store_->PutImages({wrong}).code(), absl::StatusCode::kInvalidArgument);
}

TEST_P(FeatureStoreTest, ImagesAndCaptionsAreSeparateNamespaces) {
  ASSERT_TRUE(store_->PutImages({MakeImage("same", 2, 1)}).ok());
  ASSERT_TRUE(store_->PutCaptions({MakeCaption("same", 3, 2)}).ok());
  EXPECT_TRUE(store_->GetImage("same").ok());
  EXPECT_TRUE(store_->GetCaption("same").ok());
  const std::vector<std::string> same = {"same"};
  ASSERT_TRUE(store_->DeleteImages(same).ok());
  EXPECT_TRUE(store_->GetCaption("same").ok());
}

TEST_P(FeatureStoreTest, MetaEntries) {
  ASSERT_TRUE(store_->SetMeta("fingerprint", "abc").ok());
  ASSERT_TRUE(store_->SetMeta("fingerprint", "def").ok());
  auto meta = store_->GetMeta("fingerprint");
  ASSERT_TRUE(meta.ok());
  EXPECT_EQ(meta->value_or(""), "def");
}

TEST_P(FeatureStoreTest, CorruptRecordIsDataLossNamingTheId) {
  ASSERT_TRUE(store_->PutImages({MakeImage("good", 2, 1)}).ok());
  std::string bad = *EncodeImageRecord(MakeImage("bad-one", 2, 2));
  bad[bad.size() / 2] = static_cast<char>(bad[bad.size() / 2] ^ 1);
  ASSERT_TRUE(GetParam().put_raw_image(store_.get(), "bad-one", bad).ok());

  auto got = store_->GetImage("bad-one");
  EXPECT_EQ(got.status().code(), absl::StatusCode::kDataLoss) << got.status();
  EXPECT_NE(got.status().message().find("bad-one"), std::string::npos) << got.status();
  // The scan stops at it with the same error; the good record is still readable alone.
  auto scan = store_->ScanImages([](StoredImage&) { return absl::OkStatus(); });
  EXPECT_EQ(scan.code(), absl::StatusCode::kDataLoss) << scan;
  EXPECT_TRUE(store_->GetImage("good").ok());
}

TEST_P(FeatureStoreTest, VisitorErrorStopsTheScan) {
  ASSERT_TRUE(store_->PutImages({MakeImage("a", 1, 1), MakeImage("b", 1, 2)}).ok());
  int visited = 0;
  auto status = store_->ScanImages([&](StoredImage&) {
    ++visited;
    return absl::CancelledError("stop");
  });
  EXPECT_EQ(status.code(), absl::StatusCode::kCancelled);
  EXPECT_EQ(visited, 1);
}

TEST_P(FeatureStoreTest, ClosedStoreIsFailedPrecondition) {
  ASSERT_TRUE(store_->Close().ok());
  ASSERT_TRUE(store_->Close().ok());  // idempotent
  EXPECT_EQ(store_->PutImages({MakeImage("a", 1, 1)}).code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(store_->GetImage("a").status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(store_->GetMeta("k").status().code(), absl::StatusCode::kFailedPrecondition);
}

TEST_P(FeatureStoreTest, ConcurrentWritersAndReaders) {
  constexpr int kThreads = 4;
  constexpr int kPerThread = 20;
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kPerThread; ++i) {
        const std::string id = "t" + std::to_string(t) + "_" + std::to_string(i);
        EXPECT_TRUE(store_->PutImages({MakeImage(id, 2, static_cast<uint32_t>(i))}).ok());
        EXPECT_TRUE(store_->GetImage(id).ok());
      }
    });
  }
  for (std::thread& t : threads) t.join();
  int count = 0;
  ASSERT_TRUE(store_
                  ->ScanImages([&](StoredImage&) {
                    ++count;
                    return absl::OkStatus();
                  })
                  .ok());
  EXPECT_EQ(count, kThreads * kPerThread);
  // One change per write, numbered in a single increasing order.
  auto changes = store_->ListChanges(0, 1000);
  ASSERT_TRUE(changes.ok()) << changes.status();
  ASSERT_EQ(changes->changes.size(), static_cast<size_t>(kThreads * kPerThread));
  std::set<std::string> ids;
  for (size_t i = 0; i < changes->changes.size(); ++i) {
    if (i > 0) EXPECT_GT(changes->changes[i].sequence, changes->changes[i - 1].sequence);
    ids.insert(changes->changes[i].id);
  }
  EXPECT_EQ(ids.size(), static_cast<size_t>(kThreads * kPerThread));
  EXPECT_EQ(changes->last_sequence, changes->changes.back().sequence);
}

// Every put and delete is logged, oldest first, with its kind and time; pages resume after a
// sequence; the log says which item changed whether or not it existed.
TEST_P(FeatureStoreTest, ChangeLogRecordsEveryWriteInOrder) {
  auto empty = store_->ListChanges(0, 10);
  ASSERT_TRUE(empty.ok()) << empty.status();
  EXPECT_TRUE(empty->changes.empty());
  EXPECT_EQ(empty->last_sequence, 0u);
  const int64_t before = UnixMicrosNow();
  ASSERT_TRUE(store_->PutImages({MakeImage("a", 2, 1), MakeImage("b", 2, 2)}).ok());
  ASSERT_TRUE(store_->PutCaptions({MakeCaption("x", 3, 1)}).ok());
  ASSERT_TRUE(store_->DeleteImages(std::vector<std::string>{"a", "never-stored"}).ok());
  ASSERT_TRUE(store_->DeleteCaptions(std::vector<std::string>{"x"}).ok());
  ASSERT_TRUE(store_->SetMeta("fingerprint", "v1").ok());  // not an item: not logged
  ASSERT_TRUE(store_->PutImages({MakeImage("b", 3, 5)}).ok());
  const int64_t after = UnixMicrosNow();

  struct Expected {
    bool is_caption;
    bool deleted;
    std::string id;
  };
  const std::vector<Expected> expected = {{false, false, "a"}, {false, false, "b"}, {true, false, "x"},
                                          {false, true, "a"},  {false, true, "never-stored"},
                                          {true, true, "x"},   {false, false, "b"}};
  auto all = store_->ListChanges(0, 100);
  ASSERT_TRUE(all.ok()) << all.status();
  ASSERT_EQ(all->changes.size(), expected.size());
  for (size_t i = 0; i < expected.size(); ++i) {
    const ItemChange& change = all->changes[i];
    EXPECT_EQ(change.is_caption, expected[i].is_caption) << i;
    EXPECT_EQ(change.deleted, expected[i].deleted) << i;
    EXPECT_EQ(change.id, expected[i].id) << i;
    EXPECT_GE(change.unix_micros, before) << i;
    EXPECT_LE(change.unix_micros, after) << i;
    if (i > 0) EXPECT_GT(change.sequence, all->changes[i - 1].sequence) << i;
  }
  EXPECT_EQ(all->last_sequence, all->changes.back().sequence);
  EXPECT_EQ(store_->Stats().last_change_sequence, all->last_sequence);
  EXPECT_EQ(store_->Stats().changes_trimmed_through, 0u);

  auto page = store_->ListChanges(all->changes[2].sequence, 2);
  ASSERT_TRUE(page.ok()) << page.status();
  ASSERT_EQ(page->changes.size(), 2u);
  EXPECT_EQ(page->changes[0].sequence, all->changes[3].sequence);
  EXPECT_EQ(page->changes[1].sequence, all->changes[4].sequence);
  auto none = store_->ListChanges(all->last_sequence, 10);
  ASSERT_TRUE(none.ok());
  EXPECT_TRUE(none->changes.empty());
  // Beyond the newest change: the reader was following another log.
  EXPECT_EQ(store_->ListChanges(all->last_sequence + 1, 10).status().code(), absl::StatusCode::kOutOfRange);
  EXPECT_EQ(store_->ListChanges(UINT64_MAX, 10).status().code(), absl::StatusCode::kOutOfRange);
  EXPECT_EQ(all->log_id.size(), 32u);
  EXPECT_EQ(page->log_id, all->log_id);
  EXPECT_EQ(store_->Stats().change_log_id, all->log_id);
  EXPECT_EQ(store_->ListChanges(0, 0).status().code(), absl::StatusCode::kInvalidArgument);
}

// Changes older than the retention go with a later write; a reader behind them is OUT_OF_RANGE
// rather than silently missing them, and one after the trim still reads the rest.
TEST_P(FeatureStoreTest, ChangeLogTrimsPastItsRetention) {
  store_ = GetParam().open(dir_ / "short", /*change_log_retention_s=*/0.2);
  ASSERT_NE(store_, nullptr);
  ASSERT_TRUE(store_->PutImages({MakeImage("old", 2, 1)}).ok());
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  ASSERT_TRUE(store_->PutImages({MakeImage("new", 2, 2)}).ok());
  const FeatureStoreStats stats = store_->Stats();
  EXPECT_EQ(stats.changes_trimmed_through, 1u);
  EXPECT_EQ(stats.last_change_sequence, 2u);
  EXPECT_EQ(store_->ListChanges(0, 10).status().code(), absl::StatusCode::kOutOfRange);
  auto rest = store_->ListChanges(1, 10);
  ASSERT_TRUE(rest.ok()) << rest.status();
  ASSERT_EQ(rest->changes.size(), 1u);
  EXPECT_EQ(rest->changes[0].id, "new");
  EXPECT_TRUE(store_->GetImage("old").ok()) << "trimming the log leaves the items";
}

INSTANTIATE_TEST_SUITE_P(AllStores, FeatureStoreTest, ::testing::ValuesIn(AllKinds()),
                         [](const ::testing::TestParamInfo<StoreKind>& info) {
                           return info.param.name;
                         });

// RocksDB only: what survives closing and reopening.
class RocksDbFeatureStoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() /
           ("rocksdb_store_test_" + std::to_string(::getpid()) + "_" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  fs::path dir_;
};

TEST_F(RocksDbFeatureStoreTest, ReopenAfterCloseKeepsEverythingAndNoDeletedItem) {
  std::vector<StoredImage> images;
  for (int i = 0; i < 20; ++i) images.push_back(MakeImage("img" + std::to_string(i), 36, i));
  std::mt19937 rng(5);
  for (int i : {2, 7}) images[static_cast<size_t>(i)].region_features = RandomMatrix(36, 2048, rng);
  {
    auto store = RocksDbFeatureStore::Open(dir_.string());
    ASSERT_TRUE(store.ok()) << store.status();
    ASSERT_TRUE((*store)->PutImages(images).ok());
    ASSERT_TRUE((*store)->PutCaptions({MakeCaption("c", 5, 1)}).ok());
    ASSERT_TRUE((*store)->SetMeta("fingerprint", "models-v1").ok());
    const std::vector<std::string> gone = {"img7"};
    ASSERT_TRUE((*store)->DeleteImages(gone).ok());
    const FeatureStoreStats stats = (*store)->Stats();
    EXPECT_EQ(stats.synced_writes, 4);
    EXPECT_GT(stats.disk_bytes, 0);
    EXPECT_EQ(stats.failed_writes, 0);
    // The free space of the store's file system, which other processes move meanwhile
    // (test_server_disk_full.py fills one).
    EXPECT_GT(stats.disk_free_bytes, 0);
    EXPECT_NEAR(static_cast<double>(stats.disk_free_bytes),
                static_cast<double>(fs::space(dir_).available), 256.0 * (1 << 20));
    ASSERT_TRUE((*store)->Close().ok());
  }
  auto store = RocksDbFeatureStore::Open(dir_.string(), {.create_if_missing = false});
  ASSERT_TRUE(store.ok()) << store.status();
  int count = 0;
  ASSERT_TRUE((*store)
                  ->ScanImages([&](StoredImage& image) {
                    EXPECT_NE(image.id, "img7");
                    const int i = std::stoi(image.id.substr(3));
                    ExpectSameImage(image, images[static_cast<size_t>(i)]);
                    ++count;
                    return absl::OkStatus();
                  })
                  .ok());
  EXPECT_EQ(count, 19);
  auto features = (*store)->GetImageRegionFeatures(std::vector<std::string>{"img2", "img7", "img3"});
  ASSERT_TRUE(features.ok()) << features.status();
  ASSERT_TRUE((*features)[0].has_value());
  EXPECT_EQ((*features)[0]->data, images[2].region_features.data);
  EXPECT_FALSE((*features)[1].has_value()) << "deleted with its image";
  EXPECT_FALSE((*features)[2].has_value()) << "stored without";
  EXPECT_TRUE((*store)->GetCaption("c").ok());
  EXPECT_EQ((*store)->GetMeta("fingerprint")->value_or(""), "models-v1");
}

// The log's sequence and trim mark survive a reopen: new writes number on, and a reader behind the
// trim is still refused.
TEST_F(RocksDbFeatureStoreTest, ChangeLogSequenceAndTrimSurviveReopen) {
  std::string log_id;
  {
    auto store = RocksDbFeatureStore::Open(dir_.string(), {.change_log_retention_s = 0.2});
    ASSERT_TRUE(store.ok()) << store.status();
    ASSERT_TRUE((*store)->PutImages({MakeImage("a", 2, 1), MakeImage("b", 2, 2)}).ok());
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
    ASSERT_TRUE((*store)->DeleteImages(std::vector<std::string>{"a"}).ok());  // trims a and b's puts
    EXPECT_EQ((*store)->Stats().changes_trimmed_through, 2u);
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
    ASSERT_TRUE((*store)->PutCaptions({MakeCaption("c", 3, 1)}).ok());  // trims the delete: log empty but c
    log_id = (*store)->Stats().change_log_id;
    ASSERT_TRUE((*store)->Close().ok());
  }
  auto store = RocksDbFeatureStore::Open(dir_.string(), {.create_if_missing = false});
  ASSERT_TRUE(store.ok()) << store.status();
  EXPECT_EQ((*store)->Stats().last_change_sequence, 4u);
  EXPECT_EQ((*store)->Stats().changes_trimmed_through, 3u);
  EXPECT_EQ((*store)->Stats().change_log_id, log_id) << "a reopen keeps the log's id";
  EXPECT_EQ((*store)->ListChanges(2, 10).status().code(), absl::StatusCode::kOutOfRange);
  ASSERT_TRUE((*store)->PutImages({MakeImage("d", 2, 3)}).ok());
  auto changes = (*store)->ListChanges(3, 10);
  ASSERT_TRUE(changes.ok()) << changes.status();
  ASSERT_EQ(changes->changes.size(), 2u);
  EXPECT_EQ(changes->changes[0].sequence, 4u);
  EXPECT_EQ(changes->changes[0].id, "c");
  EXPECT_EQ(changes->changes[1].sequence, 5u);
  EXPECT_EQ(changes->changes[1].id, "d");
}

// A checkpoint holds what was acked when it was taken, opens as a store of its own, and later
// writes to either store do not reach the other.
TEST_F(RocksDbFeatureStoreTest, CheckpointIsAConsistentIndependentCopy) {
  std::vector<StoredImage> images;
  for (int i = 0; i < 12; ++i) images.push_back(MakeImage("img" + std::to_string(i), 36, i));  // blob-sized
  auto store = RocksDbFeatureStore::Open((dir_ / "live").string());
  ASSERT_TRUE(store.ok()) << store.status();
  ASSERT_TRUE((*store)->PutImages(images).ok());
  ASSERT_TRUE((*store)->PutCaptions({MakeCaption("c", 5, 1)}).ok());
  ASSERT_TRUE((*store)->SetMeta("fingerprint", "models-v1").ok());
  ASSERT_TRUE((*store)->DeleteImages(std::vector<std::string>{"img3"}).ok());
  const std::string snapshot = (dir_ / "snap").string();
  ASSERT_TRUE((*store)->Checkpoint(snapshot).ok());
  EXPECT_EQ((*store)->Checkpoint(snapshot).code(), absl::StatusCode::kAlreadyExists);
  EXPECT_EQ((*store)->Checkpoint((dir_ / "no" / "such" / "parent").string()).code(),
            absl::StatusCode::kNotFound);
  // Written after the checkpoint: only in the live store.
  ASSERT_TRUE((*store)->PutImages({MakeImage("later", 2, 50)}).ok());
  ASSERT_TRUE((*store)->DeleteImages(std::vector<std::string>{"img0"}).ok());

  auto copy = RocksDbFeatureStore::Open(snapshot, {.create_if_missing = false});
  ASSERT_TRUE(copy.ok()) << copy.status();
  int count = 0;
  ASSERT_TRUE((*copy)
                  ->ScanImages([&](StoredImage& image) {
                    EXPECT_NE(image.id, "img3");
                    EXPECT_NE(image.id, "later");
                    ExpectSameImage(image, images[static_cast<size_t>(std::stoi(image.id.substr(3)))]);
                    ++count;
                    return absl::OkStatus();
                  })
                  .ok());
  EXPECT_EQ(count, 11) << "img0 is still in the snapshot";
  // The snapshot's change log holds the changes up to it, under an id of its own: its next writes
  // reuse sequence numbers the live store used after the checkpoint.
  const FeatureStoreStats live_stats = (*store)->Stats();
  const FeatureStoreStats copy_stats = (*copy)->Stats();
  EXPECT_EQ(live_stats.last_change_sequence, 16u);
  EXPECT_EQ(copy_stats.last_change_sequence, 14u);
  EXPECT_EQ(copy_stats.change_log_id.size(), 32u);
  EXPECT_NE(copy_stats.change_log_id, live_stats.change_log_id);
  auto copy_changes = (*copy)->ListChanges(13, 10);
  ASSERT_TRUE(copy_changes.ok()) << copy_changes.status();
  EXPECT_EQ(copy_changes->log_id, copy_stats.change_log_id);
  ASSERT_EQ(copy_changes->changes.size(), 1u);
  EXPECT_EQ(copy_changes->changes[0].id, "img3");
  EXPECT_EQ((*copy)->ListChanges(15, 10).status().code(), absl::StatusCode::kOutOfRange)
      << "a reader of the live log is ahead of the snapshot's";
  EXPECT_TRUE((*copy)->GetCaption("c").ok());
  EXPECT_EQ((*copy)->GetMeta("fingerprint")->value_or(""), "models-v1");
  ASSERT_TRUE((*copy)->PutImages({MakeImage("only-in-copy", 2, 51)}).ok());
  EXPECT_EQ((*store)->GetImage("only-in-copy").status().code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE((*store)->GetImage("later").ok());
  ASSERT_TRUE((*store)->Close().ok());
  EXPECT_EQ((*store)->Checkpoint((dir_ / "after-close").string()).code(),
            absl::StatusCode::kFailedPrecondition);
}

TEST_F(RocksDbFeatureStoreTest, MissingStoreWithoutCreateIsNotFound) {
  auto store = RocksDbFeatureStore::Open(dir_.string(), {.create_if_missing = false});
  EXPECT_EQ(store.status().code(), absl::StatusCode::kNotFound) << store.status();
}

TEST_F(RocksDbFeatureStoreTest, SecondOpenOfTheSameDirectoryIsUnavailable) {
  auto first = RocksDbFeatureStore::Open(dir_.string());
  ASSERT_TRUE(first.ok()) << first.status();
  auto second = RocksDbFeatureStore::Open(dir_.string());
  EXPECT_EQ(second.status().code(), absl::StatusCode::kUnavailable) << second.status();
}

TEST_F(RocksDbFeatureStoreTest, CorruptionSurvivesReopenAsDataLoss) {
  {
    auto store = RocksDbFeatureStore::Open(dir_.string());
    ASSERT_TRUE(store.ok());
    ASSERT_TRUE((*store)->PutRawImageRecordForTesting("broken", "not a record").ok());
  }
  auto store = RocksDbFeatureStore::Open(dir_.string());
  ASSERT_TRUE(store.ok());
  auto scan = (*store)->ScanImages([](StoredImage&) { return absl::OkStatus(); });
  EXPECT_EQ(scan.code(), absl::StatusCode::kDataLoss) << scan;
  EXPECT_NE(scan.message().find("broken"), std::string::npos);
}

}  // namespace
}  // namespace scanserve
