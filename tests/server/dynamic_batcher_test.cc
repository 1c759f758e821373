// DynamicBatcher against fake searchers: batches are formed, per-request top_k / filters / errors /
// deadlines are kept, a full queue is RESOURCE_EXHAUSTED, Stop() drains (text->image); and the
// image->text instantiation merges SearchCaptions requests the same way, its queries moved intact.
#include "server/batching/dynamic_batcher.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <future>
#include <mutex>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "absl/strings/str_cat.h"
#include "server/metrics.h"

namespace scanserve {
namespace {

using Clock = TextToImageBatcher::Clock;
constexpr auto kNoDeadline = Clock::time_point::max();

// n hits named prefix + i, scores descending.
template <typename Hit>
std::vector<Hit> RankedHits(const std::string& prefix, int n) {
  std::vector<Hit> hits(n);
  for (int i = 0; i < n; ++i) {
    hits[i].id = absl::StrCat(prefix, i);
    hits[i].score = 1.0f - 0.01f * i;
  }
  return hits;
}

// Answers each query with `stored` hits named "img<i>", scores descending; records every call.
class FakeSearcher final : public TextToImageSearcher {
 public:
  struct Call {
    std::vector<std::string> queries;
    SearchParams params;
  };

  absl::StatusOr<std::vector<std::vector<ImageHit>>> Search(const std::vector<std::string>& queries,
                                                            const SearchParams& params) const override {
    {
      std::lock_guard<std::mutex> lock(mu_);
      calls_.push_back({queries, params});
    }
    if (block_) {
      std::unique_lock<std::mutex> lock(mu_);
      unblocked_.wait(lock, [this] { return !block_; });
    }
    for (const std::string& query : queries) {
      if (query == "bad") return absl::InvalidArgumentError("bad query");
    }
    if (params.top_k < 1) return absl::InvalidArgumentError("top_k");
    std::vector<std::vector<ImageHit>> results;
    for (const std::string& query : queries) {
      results.push_back(RankedHits<ImageHit>(absl::StrCat(query, "/img"), std::min(stored, params.top_k)));
    }
    return results;
  }

  // "invalid" is caught by validation; "bad" only by Search, as an engine error found late.
  absl::Status Validate(const std::vector<std::string>& queries, const SearchParams& params) const override {
    for (const std::string& query : queries) {
      if (query == "invalid") return absl::InvalidArgumentError("invalid query");
    }
    return absl::OkStatus();
  }

  std::vector<Call> calls() const {
    std::lock_guard<std::mutex> lock(mu_);
    return calls_;
  }
  void Block() {
    std::lock_guard<std::mutex> lock(mu_);
    block_ = true;
  }
  void Unblock() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      block_ = false;
    }
    unblocked_.notify_all();
  }
  // Waits until `n` calls have started.
  void WaitForCalls(size_t n) const {
    for (int i = 0; i < 5000 && calls().size() < n; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }

  int stored = 20;

 private:
  mutable std::mutex mu_;  // guards calls_, block_
  mutable std::condition_variable unblocked_;
  mutable std::vector<Call> calls_;
  bool block_ = false;
};

struct Options {
  int max_batch_queries = 64;
  int64_t delay_us = 200'000;  // long, so that concurrent submissions surely meet
  int max_queue_size = 64;
  int num_workers = 1;
};

std::unique_ptr<TextToImageBatcher> MakeBatcher(const FakeSearcher& searcher, const Options& o,
                                            ServerMetrics* metrics = nullptr) {
  DynamicBatcherOptions options;
  options.max_batch_queries = o.max_batch_queries;
  options.max_queue_delay_us = o.delay_us;
  options.max_queue_size = o.max_queue_size;
  options.num_workers = o.num_workers;
  absl::StatusOr<std::unique_ptr<TextToImageBatcher>> batcher =
      TextToImageBatcher::Create(options, &searcher, metrics);
  EXPECT_TRUE(batcher.ok()) << batcher.status();
  return *std::move(batcher);
}

SearchParams Params(int top_k, const std::string& collection = "", bool explain = false) {
  SearchParams params;
  params.top_k = top_k;
  params.filter.collection = collection;
  params.explain = explain;
  return params;
}

std::future<TextToImageBatcher::Result> SearchAsync(TextToImageBatcher* batcher, std::vector<std::string> queries,
                                                SearchParams params, Clock::time_point deadline = kNoDeadline) {
  return std::async(std::launch::async, [=] { return batcher->Search(queries, params, deadline); });
}

TEST(DynamicBatcherTest, ConcurrentRequestsShareOneEngineCallAndKeepTheirTopK) {
  FakeSearcher searcher;
  ServerMetrics metrics("test");
  auto batcher = MakeBatcher(searcher, {}, &metrics);
  auto a = SearchAsync(batcher.get(), {"a"}, Params(3));
  auto b = SearchAsync(batcher.get(), {"b1", "b2"}, Params(7));
  auto c = SearchAsync(batcher.get(), {"c"}, Params(1));
  auto ra = a.get(), rb = b.get(), rc = c.get();
  ASSERT_TRUE(ra.ok() && rb.ok() && rc.ok());
  ASSERT_EQ(searcher.calls().size(), 1u) << "three concurrent requests within the delay form one batch";
  EXPECT_EQ(searcher.calls()[0].queries.size(), 4u);
  EXPECT_EQ(searcher.calls()[0].params.top_k, 7) << "the merged call runs the largest top_k";
  ASSERT_EQ(ra->size(), 1u);
  EXPECT_EQ((*ra)[0].size(), 3u);
  EXPECT_EQ((*ra)[0][0].id, "a/img0");
  ASSERT_EQ(rb->size(), 2u);
  EXPECT_EQ((*rb)[1].size(), 7u);
  EXPECT_EQ((*rb)[1][6].id, "b2/img6");
  EXPECT_EQ((*rc)[0].size(), 1u);
  EXPECT_EQ((*rc)[0][0].id, "c/img0");
}

TEST(DynamicBatcherTest, BatchesAreCappedAtMaxBatchQueries) {
  FakeSearcher searcher;
  auto batcher = MakeBatcher(searcher, {/*max_batch_queries=*/4, /*delay_us=*/200'000, 64});
  std::vector<std::future<TextToImageBatcher::Result>> results;
  for (int i = 0; i < 10; ++i) results.push_back(SearchAsync(batcher.get(), {absl::StrCat("q", i)}, Params(2)));
  for (auto& r : results) ASSERT_TRUE(r.get().ok());
  size_t queries = 0;
  for (const auto& call : searcher.calls()) {
    EXPECT_LE(call.queries.size(), 4u);
    queries += call.queries.size();
  }
  EXPECT_EQ(queries, 10u);
  EXPECT_GE(searcher.calls().size(), 3u);
}

TEST(DynamicBatcherTest, AFullBatchRunsWithoutWaitingOutTheDelay) {
  FakeSearcher searcher;
  auto batcher = MakeBatcher(searcher, {/*max_batch_queries=*/2, /*delay_us=*/10'000'000, 64});
  const auto start = Clock::now();
  auto a = SearchAsync(batcher.get(), {"a"}, Params(1));
  auto b = SearchAsync(batcher.get(), {"b"}, Params(1));
  ASSERT_TRUE(a.get().ok());
  ASSERT_TRUE(b.get().ok());
  EXPECT_LT(Clock::now() - start, std::chrono::seconds(5));
}

TEST(DynamicBatcherTest, DifferentFiltersOrExplainAreNotMerged) {
  FakeSearcher searcher;
  auto batcher = MakeBatcher(searcher, {});
  auto a = SearchAsync(batcher.get(), {"a"}, Params(2, "x"));
  auto b = SearchAsync(batcher.get(), {"b"}, Params(2, "y"));
  auto c = SearchAsync(batcher.get(), {"c"}, Params(2, "x", /*explain=*/true));
  ASSERT_TRUE(a.get().ok() && b.get().ok() && c.get().ok());
  const auto calls = searcher.calls();
  ASSERT_EQ(calls.size(), 3u);
  for (const auto& call : calls) EXPECT_EQ(call.queries.size(), 1u);
}

TEST(DynamicBatcherTest, ABadRequestFailsAloneWhenItsBatchFails) {
  FakeSearcher searcher;
  auto batcher = MakeBatcher(searcher, {});
  auto good = SearchAsync(batcher.get(), {"good"}, Params(2));
  auto bad = SearchAsync(batcher.get(), {"bad"}, Params(2));
  auto bad_k = SearchAsync(batcher.get(), {"fine"}, Params(-1));
  const auto rg = good.get(), rb = bad.get(), rk = bad_k.get();
  ASSERT_TRUE(rg.ok()) << rg.status();
  EXPECT_EQ((*rg)[0].size(), 2u);
  EXPECT_EQ(rb.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(rk.status().code(), absl::StatusCode::kInvalidArgument) << "top_k -1 is never merged away";
}

TEST(DynamicBatcherTest, ARequestThatFailsValidationNeverJoinsABatch) {
  // Otherwise its group's merged call fails and every request of the group runs alone: one bad
  // request per batch would cost a pass over the store per request.
  FakeSearcher searcher;
  auto batcher = MakeBatcher(searcher, {});
  auto first = SearchAsync(batcher.get(), {"first"}, Params(2));
  auto invalid = SearchAsync(batcher.get(), {"fine", "invalid"}, Params(2));
  auto second = SearchAsync(batcher.get(), {"second"}, Params(2));
  const auto rf = first.get(), ri = invalid.get(), rs = second.get();
  ASSERT_TRUE(rf.ok() && rs.ok());
  EXPECT_EQ(ri.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ri.status().message(), "invalid query");
  const auto calls = searcher.calls();
  ASSERT_EQ(calls.size(), 1u) << "the two valid requests in one call, not re-run alone";
  std::vector<std::string> merged = calls[0].queries;
  std::sort(merged.begin(), merged.end());  // the two threads may arrive in either order
  EXPECT_EQ(merged, (std::vector<std::string>{"first", "second"}));
}

TEST(DynamicBatcherTest, ExpiredRequestsAreAnsweredDeadlineExceededWithoutScoring) {
  FakeSearcher searcher;
  auto batcher = MakeBatcher(searcher, {64, /*delay_us=*/0, 64});
  searcher.Block();
  auto first = SearchAsync(batcher.get(), {"first"}, Params(1));  // occupies the worker
  searcher.WaitForCalls(1);
  auto late = SearchAsync(batcher.get(), {"late"}, Params(1), Clock::now() + std::chrono::milliseconds(20));
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  searcher.Unblock();
  EXPECT_TRUE(first.get().ok());
  EXPECT_EQ(late.get().status().code(), absl::StatusCode::kDeadlineExceeded);
  for (const auto& call : searcher.calls()) {
    for (const auto& q : call.queries) EXPECT_NE(q, "late") << "an expired request must not be scored";
  }
}

TEST(DynamicBatcherTest, ADeadlineShorterThanTheDelayIsAnsweredPromptly) {
  FakeSearcher searcher;
  auto batcher = MakeBatcher(searcher, {64, /*delay_us=*/5'000'000, 64});
  const auto start = Clock::now();
  auto r = batcher->Search({"q"}, Params(1), start + std::chrono::milliseconds(50));
  EXPECT_EQ(r.status().code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_LT(Clock::now() - start, std::chrono::seconds(2));
}

TEST(DynamicBatcherTest, CancelledRequestsAreNotScored) {
  FakeSearcher searcher;
  auto batcher = MakeBatcher(searcher, {64, 0, 64});
  auto r = batcher->Search({"q"}, Params(1), kNoDeadline, [] { return true; });
  EXPECT_EQ(r.status().code(), absl::StatusCode::kCancelled);
  EXPECT_TRUE(searcher.calls().empty());
}

TEST(DynamicBatcherTest, AFullQueueIsResourceExhausted) {
  FakeSearcher searcher;
  ServerMetrics metrics("test");
  auto batcher = MakeBatcher(searcher, {64, /*delay_us=*/0, /*max_queue_size=*/2}, &metrics);
  searcher.Block();
  auto running = SearchAsync(batcher.get(), {"running"}, Params(1));
  searcher.WaitForCalls(1);
  auto q1 = SearchAsync(batcher.get(), {"q1"}, Params(1));
  auto q2 = SearchAsync(batcher.get(), {"q2"}, Params(1));
  for (int i = 0; i < 1000 && metrics.queue_depth(SearchDirection::kTextToImage).Value() < 2; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  ASSERT_EQ(metrics.queue_depth(SearchDirection::kTextToImage).Value(), 2);
  const auto refused = batcher->Search({"q3"}, Params(1), kNoDeadline);
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kResourceExhausted);
  searcher.Unblock();
  EXPECT_TRUE(running.get().ok());
  EXPECT_TRUE(q1.get().ok());
  EXPECT_TRUE(q2.get().ok());
  EXPECT_EQ(metrics.batcher_rejected(SearchDirection::kTextToImage, "queue_full").Value(), 1);
}

TEST(DynamicBatcherTest, StopAnswersEverythingQueuedThenRefusesNewRequests) {
  for (const int workers : {1, 2}) {
    SCOPED_TRACE(absl::StrCat(workers, " worker(s)"));
    FakeSearcher searcher;
    auto batcher = MakeBatcher(searcher, {64, /*delay_us=*/10'000'000, 64, workers});
    std::vector<std::future<TextToImageBatcher::Result>> queued;
    for (int i = 0; i < 5; ++i) queued.push_back(SearchAsync(batcher.get(), {absl::StrCat("q", i)}, Params(1, absl::StrCat("c", i))));
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    const auto start = Clock::now();
    batcher->Stop();  // must not wait out the 10 s delay
    EXPECT_LT(Clock::now() - start, std::chrono::seconds(5));
    for (auto& r : queued) EXPECT_TRUE(r.get().ok());
    EXPECT_EQ(searcher.calls().size(), 5u) << "each request scored once";
    EXPECT_EQ(batcher->Search({"after"}, Params(1), kNoDeadline).status().code(), absl::StatusCode::kUnavailable);
  }
}

// With several workers a second batch runs while the first is still on the engine (the GPU
// serving setup: one batch encodes while another is scored).
TEST(DynamicBatcherTest, EachWorkerRunsItsOwnBatchAtOnce) {
  for (const int workers : {1, 2}) {
    SCOPED_TRACE(absl::StrCat(workers, " worker(s)"));
    FakeSearcher searcher;
    auto batcher = MakeBatcher(searcher, {64, /*delay_us=*/0, 64, workers});
    searcher.Block();
    auto first = SearchAsync(batcher.get(), {"first"}, Params(2));
    searcher.WaitForCalls(1);
    auto second = SearchAsync(batcher.get(), {"second"}, Params(3));
    if (workers == 1) {
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
      EXPECT_EQ(searcher.calls().size(), 1u) << "one worker runs one batch at a time";
    } else {
      searcher.WaitForCalls(2);
      EXPECT_EQ(searcher.calls().size(), 2u) << "the idle worker takes the next batch";
    }
    searcher.Unblock();
    const auto r1 = first.get(), r2 = second.get();
    ASSERT_TRUE(r1.ok() && r2.ok());
    EXPECT_EQ((*r1)[0].size(), 2u);
    EXPECT_EQ((*r1)[0][0].id, "first/img0");
    EXPECT_EQ((*r2)[0].size(), 3u);
    EXPECT_EQ((*r2)[0][2].id, "second/img2");
  }
}

TEST(DynamicBatcherTest, OptionsAreValidated) {
  FakeSearcher searcher;
  DynamicBatcherOptions options;
  options.max_batch_queries = 0;
  EXPECT_EQ(TextToImageBatcher::Create(options, &searcher, nullptr).status().code(), absl::StatusCode::kInvalidArgument);
  options = DynamicBatcherOptions();
  options.max_queue_size = 0;
  EXPECT_EQ(TextToImageBatcher::Create(options, &searcher, nullptr).status().code(), absl::StatusCode::kInvalidArgument);
  options = DynamicBatcherOptions();
  options.max_queue_delay_us = -1;
  EXPECT_EQ(TextToImageBatcher::Create(options, &searcher, nullptr).status().code(), absl::StatusCode::kInvalidArgument);
  options = DynamicBatcherOptions();
  options.num_workers = 0;
  EXPECT_EQ(TextToImageBatcher::Create(options, &searcher, nullptr).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(DynamicBatcherTest, ManyConcurrentClientsAllGetTheirOwnAnswers) {
  for (const int workers : {1, 4}) {
    SCOPED_TRACE(absl::StrCat(workers, " worker(s)"));
    FakeSearcher searcher;
    auto batcher = MakeBatcher(searcher, {8, /*delay_us=*/500, 256, workers});
    std::vector<std::future<TextToImageBatcher::Result>> results;
    for (int i = 0; i < 100; ++i) {
      results.push_back(SearchAsync(batcher.get(), {absl::StrCat("q", i)}, Params(1 + i % 5)));
    }
    for (int i = 0; i < 100; ++i) {
      auto r = results[i].get();
      ASSERT_TRUE(r.ok()) << r.status();
      ASSERT_EQ(r->size(), 1u);
      ASSERT_EQ((*r)[0].size(), static_cast<size_t>(1 + i % 5));
      EXPECT_EQ((*r)[0][0].id, absl::StrCat("q", i, "/img0"));
    }
    size_t scored = 0;
    for (const auto& call : searcher.calls()) scored += call.queries.size();
    EXPECT_EQ(scored, 100u) << "each query scored exactly once";
    EXPECT_LT(searcher.calls().size(), 100u) << "some requests were merged";
  }
}

// ---- image->text (SearchCaptions) ----

// Answers each image query with hits named "<stored id or kxd>/cap<i>"; an unknown stored id
// ("missing") fails the whole call, as the engine's NOT_FOUND does.
class FakeCaptionSearcher final : public ImageToTextSearcher {
 public:
  absl::StatusOr<std::vector<std::vector<CaptionHit>>> Search(const std::vector<ImageQuery>& queries,
                                                              const SearchParams& params) const override {
    {
      std::lock_guard<std::mutex> lock(mu_);
      calls_.push_back(queries.size());
    }
    std::vector<std::vector<CaptionHit>> results;
    for (const ImageQuery& query : queries) {
      if (query.stored_id == "missing") return absl::NotFoundError("no stored image 'missing'");
      const std::string name = query.stored_id.empty()
                                   ? absl::StrCat(query.region_features.rows, "x",
                                                  query.region_features.cols, ":",
                                                  query.region_features.data.empty()
                                                      ? 0.0f
                                                      : query.region_features.data.back())
                                   : query.stored_id;
      results.push_back(RankedHits<CaptionHit>(absl::StrCat(name, "/cap"), params.top_k));
    }
    return results;
  }
  std::vector<size_t> calls() const {
    std::lock_guard<std::mutex> lock(mu_);
    return calls_;
  }

 private:
  mutable std::mutex mu_;
  mutable std::vector<size_t> calls_;  // queries per engine call
};

ImageQuery StoredImage(const std::string& id) {
  ImageQuery q;
  q.stored_id = id;
  return q;
}

ImageQuery Features(int rows, float last) {
  ImageQuery q;
  q.region_features = FloatMatrix(rows, 2048);
  q.region_features.data.back() = last;
  return q;
}

std::future<ImageToTextBatcher::Result> CaptionSearchAsync(ImageToTextBatcher* batcher,
                                                           std::vector<ImageQuery> queries,
                                                           SearchParams params) {
  return std::async(std::launch::async, [=] { return batcher->Search(queries, params, kNoDeadline); });
}

TEST(DynamicBatcherTest, ImageToTextRequestsShareOneEngineCall) {
  FakeCaptionSearcher searcher;
  ServerMetrics metrics("test");
  DynamicBatcherOptions options;
  options.max_queue_delay_us = 200'000;
  auto batcher = ImageToTextBatcher::Create(options, &searcher, &metrics);
  ASSERT_TRUE(batcher.ok()) << batcher.status();
  auto a = CaptionSearchAsync(batcher->get(), {StoredImage("img1")}, Params(2));
  auto b = CaptionSearchAsync(batcher->get(), {Features(36, 0.5f), StoredImage("img2")}, Params(4));
  const auto ra = a.get(), rb = b.get();
  ASSERT_TRUE(ra.ok() && rb.ok());
  ASSERT_EQ(searcher.calls(), std::vector<size_t>{3}) << "both requests in one engine call";
  ASSERT_EQ(ra->size(), 1u);
  ASSERT_EQ((*ra)[0].size(), 2u) << "each request keeps its own top_k";
  EXPECT_EQ((*ra)[0][0].id, "img1/cap0");
  ASSERT_EQ(rb->size(), 2u);
  EXPECT_EQ((*rb)[0][3].id, "36x2048:0.5/cap3") << "the features arrive intact";
  EXPECT_EQ((*rb)[1][0].id, "img2/cap0");
  EXPECT_EQ(metrics.batch_size(SearchDirection::kImageToText).Collect().histogram.sample_sum, 3);
  EXPECT_EQ(metrics.batch_size(SearchDirection::kTextToImage).Collect().histogram.sample_count, 0u);
}

TEST(DynamicBatcherTest, ImageToTextUnknownIdFailsOnlyItsRequest) {
  // The merged call fails (NOT_FOUND); each request then runs alone with its queries restored.
  FakeCaptionSearcher searcher;
  DynamicBatcherOptions options;
  options.max_queue_delay_us = 200'000;
  auto batcher = ImageToTextBatcher::Create(options, &searcher, nullptr);
  ASSERT_TRUE(batcher.ok()) << batcher.status();
  auto good = CaptionSearchAsync(batcher->get(), {Features(10, 2.0f)}, Params(1));
  auto bad = CaptionSearchAsync(batcher->get(), {StoredImage("missing")}, Params(1));
  const auto rg = good.get(), rb = bad.get();
  ASSERT_TRUE(rg.ok()) << rg.status();
  EXPECT_EQ((*rg)[0][0].id, "10x2048:2/cap0");
  EXPECT_EQ(rb.status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(searcher.calls().size(), 3u) << "the merged call, then each alone";
}

}  // namespace
}  // namespace scanserve
