// DynamicBatcher: merges concurrent searches of one direction (text->image: SearchImages; image->
// text: SearchCaptions) into one engine call, the way Triton's dynamic batch scheduler merges
// inference requests. SCAN scores every query against every stored item in one pass over the
// store (on the GPU: one pass reads the device-resident store once for all queries), so scoring
// eight queries together costs far less than eight passes; the batcher trades a bounded wait
// (max_queue_delay_us) for that.
//
// Per request, the caller's semantics are kept exactly:
//  - its own deadline: a request whose deadline passed while queued is answered DEADLINE_EXCEEDED
//    without being scored (a cancelled one, CANCELLED);
//  - its own top_k / filter / explain: only requests with equal filter and explain are merged; the
//    merged call runs with the largest top_k of the group and each request gets its own prefix (the
//    engine's top-k is deterministic, ties to the smaller key, so a prefix of the top-K is the top-k);
//  - its own errors: each request is validated alone before it is queued (BatchSearcher::Validate),
//    so that a bad one is answered at once and never joins a group; and should a merged call still
//    fail, each request of the group is re-run alone, so a bad query only fails its own request.
// The queue is bounded (max_queue_size requests): a full queue answers RESOURCE_EXHAUSTED at once.
// Stop() refuses new requests (UNAVAILABLE), runs everything queued, then joins the workers.
//
// No gRPC here: the batcher depends on a BatchSearcher, which RetrievalEngine satisfies through
// EngineImageSearcher / EngineCaptionSearcher (below) and tests satisfy with fakes.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <future>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "engine/retrieval/retrieval_engine.h"

namespace scanserve {

class ServerMetrics;

// The one engine call a batcher makes, in either direction: RetrievalEngine::SearchImages' or
// SearchCaptions' contract (results[i] answers queries[i]; thread-safe).
template <typename Query, typename Hit>
class BatchSearcher {
 public:
  virtual ~BatchSearcher() = default;
  virtual absl::StatusOr<std::vector<std::vector<Hit>>> Search(const std::vector<Query>& queries,
                                                              const SearchParams& params) const = 0;
  // The errors Search would answer because of these queries and params alone, found cheaply
  // (RetrievalEngine::ValidateSearchImages / ValidateSearchCaptions); OK when nothing is checked.
  virtual absl::Status Validate(const std::vector<Query>& queries, const SearchParams& params) const {
    return absl::OkStatus();
  }
};
using TextToImageSearcher = BatchSearcher<std::string, ImageHit>;
using ImageToTextSearcher = BatchSearcher<ImageQuery, CaptionHit>;

// Adapt a RetrievalEngine (not owned; must outlive the adapter).
class EngineImageSearcher final : public TextToImageSearcher {
 public:
  explicit EngineImageSearcher(const RetrievalEngine* engine) : engine_(engine) {}
  absl::StatusOr<std::vector<std::vector<ImageHit>>> Search(const std::vector<std::string>& queries,
                                                           const SearchParams& params) const override {
    return engine_->SearchImages(queries, params);
  }
  absl::Status Validate(const std::vector<std::string>& queries, const SearchParams& params) const override {
    return engine_->ValidateSearchImages(queries, params);
  }

 private:
  const RetrievalEngine* engine_;
};

class EngineCaptionSearcher final : public ImageToTextSearcher {
 public:
  explicit EngineCaptionSearcher(const RetrievalEngine* engine) : engine_(engine) {}
  absl::StatusOr<std::vector<std::vector<CaptionHit>>> Search(const std::vector<ImageQuery>& queries,
                                                             const SearchParams& params) const override {
    return engine_->SearchCaptions(queries, params);
  }
  absl::Status Validate(const std::vector<ImageQuery>& queries, const SearchParams& params) const override {
    return engine_->ValidateSearchCaptions(queries, params);
  }

 private:
  const RetrievalEngine* engine_;
};

struct DynamicBatcherOptions {
  // Most queries (captions, or images) in one engine call; a single larger request still runs
  // (alone).
  int max_batch_queries = 64;
  // Longest a request waits for others to join its batch, microseconds (0 = run what is queued).
  int64_t max_queue_delay_us = 1000;
  // Requests waiting at most; beyond it Search() is RESOURCE_EXHAUSTED.
  int max_queue_size = 256;
  // Threads forming and running batches (the engine parallelises each call internally).
  int num_workers = 1;
};

// INVALID_ARGUMENT unless every field is in range (sizes >= 1, delay >= 0).
absl::Status ValidateDynamicBatcherOptions(const DynamicBatcherOptions& options);

// The batcher of one search direction: Query/Hit are std::string/ImageHit (text->image) or
// ImageQuery/CaptionHit (image->text); instantiated for those two in dynamic_batcher.cc.
template <typename Query, typename Hit>
class DynamicBatcher {
 public:
  using Clock = std::chrono::steady_clock;
  using Result = absl::StatusOr<std::vector<std::vector<Hit>>>;
  using Searcher = BatchSearcher<Query, Hit>;

  // `searcher` must outlive the batcher; `metrics` may be null (else this direction's series are
  // filled). Starts the workers.
  static absl::StatusOr<std::unique_ptr<DynamicBatcher>> Create(const DynamicBatcherOptions& options,
                                                                const Searcher* searcher,
                                                                ServerMetrics* metrics);
  ~DynamicBatcher();  // Stop()
  DynamicBatcher(const DynamicBatcher&) = delete;
  DynamicBatcher& operator=(const DynamicBatcher&) = delete;

  // Validates the request (on the calling thread; its error is the answer), queues it and blocks
  // until it is answered: results[i] for queries[i], or its error.
  // `deadline` = Clock::time_point::max() for none. `is_cancelled`, if set, is polled (from a worker
  // thread) before the request is scored.
  Result Search(std::vector<Query> queries, SearchParams params, Clock::time_point deadline,
                std::function<bool()> is_cancelled = nullptr);

  // Refuses new requests with UNAVAILABLE, answers every queued one (scored as usual, no delay), and
  // joins the workers. Idempotent; thread-safe.
  void Stop();

  const DynamicBatcherOptions& options() const { return options_; }

 private:
  struct Request {
    uint64_t seq = 0;  // arrival number, to recognise the head of the queue across waits
    std::vector<Query> queries;
    SearchParams params;
    Clock::time_point deadline;
    Clock::time_point enqueued;
    std::function<bool()> is_cancelled;
    std::promise<Result> answer;
  };
  using RequestPtr = std::unique_ptr<Request>;

  DynamicBatcher(const DynamicBatcherOptions& options, const Searcher* searcher,
                 ServerMetrics* metrics);

  void WorkerLoop();
  // With mu_ held: the queries queued that could join a batch led by `head`.
  int MergeableQueriesLocked(const Request& head) const;
  // With mu_ held: removes a batch from the queue (led by the oldest request) and the requests that
  // must be answered without scoring (deadline passed, cancelled).
  void TakeBatchLocked(Clock::time_point now, std::vector<RequestPtr>* batch,
                       std::vector<RequestPtr>* expired);
  void RunBatch(std::vector<RequestPtr> batch);
  // One engine call, timed; results checked against the query count.
  // `requests` = how many requests the call serves (for the batch metrics).
  Result CallEngine(const std::vector<Query>& queries, const SearchParams& params, int requests);
  void Answer(Request& request, Result result);
  void SetQueueDepthLocked();

  const DynamicBatcherOptions options_;
  const Searcher* const searcher_;  // not owned
  ServerMetrics* const metrics_;               // not owned; may be null

  std::mutex mu_;  // guards queue_, next_seq_, stopping_
  std::condition_variable cv_;  // signalled on a new request and on Stop()
  std::deque<RequestPtr> queue_;  // oldest first
  uint64_t next_seq_ = 0;
  bool stopping_ = false;

  std::mutex stop_mu_;  // serialises Stop() (joining workers_)
  std::vector<std::thread> workers_;
};

using TextToImageBatcher = DynamicBatcher<std::string, ImageHit>;
using ImageToTextBatcher = DynamicBatcher<ImageQuery, CaptionHit>;

}  // namespace scanserve
