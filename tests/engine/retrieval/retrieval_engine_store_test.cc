// RetrievalEngine's stored items over tiny random models: upsert/delete semantics, the change log,
// kept region features, get/list, restarts and snapshots, updates, capacity, bad inputs, and crash
// durability (a child process killed right after its ack).
#include "engine/retrieval/retrieval_engine.h"

#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <string>
#include <vector>

#include "engine/store/in_memory_feature_store.h"
#include "engine/store/record_codec.h"

#include "tests/engine/retrieval/retrieval_engine_fixture.h"

namespace scanserve {
namespace retrieval_test {
namespace {

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
}  // namespace retrieval_test
}  // namespace scanserve
