#include "server/batching/dynamic_batcher.h"

#include <algorithm>
#include <exception>
#include <iterator>
#include <string>
#include <type_traits>
#include <utility>

#include "absl/strings/str_cat.h"
#include "server/metrics.h"

namespace scanserve {
namespace {

bool SameFilter(const SearchFilter& a, const SearchFilter& b) {
  return a.collection == b.collection && a.metadata == b.metadata;
}

using Clock = std::chrono::steady_clock;

double SecondsBetween(Clock::time_point from, Clock::time_point to) {
  return std::chrono::duration<double>(to - from).count();
}

// The metrics series of a batcher: its direction, from its query type.
template <typename Query>
constexpr SearchDirection DirectionOf() {
  return std::is_same_v<Query, std::string> ? SearchDirection::kTextToImage
                                            : SearchDirection::kImageToText;
}

// Requests merge when they share filter and explain; top_k >= 1 and a non-empty query list are
// required, so that a malformed request always runs alone and gets the engine's own error.
template <typename Query>
bool Mergeable(const std::vector<Query>& a_queries, const SearchParams& a,
               const std::vector<Query>& b_queries, const SearchParams& b) {
  return !a_queries.empty() && !b_queries.empty() && a.top_k >= 1 && b.top_k >= 1 &&
         a.explain == b.explain && SameFilter(a.filter, b.filter);
}

}  // namespace

absl::Status ValidateDynamicBatcherOptions(const DynamicBatcherOptions& options) {
  if (options.max_batch_queries < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_batch_queries must be >= 1, got ", options.max_batch_queries));
  }
  if (options.max_queue_delay_us < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_queue_delay_us must be >= 0, got ", options.max_queue_delay_us));
  }
  if (options.max_queue_size < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_queue_size must be >= 1, got ", options.max_queue_size));
  }
  if (options.num_workers < 1) {
    return absl::InvalidArgumentError(absl::StrCat("num_workers must be >= 1, got ", options.num_workers));
  }
  return absl::OkStatus();
}

template <typename Query, typename Hit>
absl::StatusOr<std::unique_ptr<DynamicBatcher<Query, Hit>>> DynamicBatcher<Query, Hit>::Create(
    const DynamicBatcherOptions& options, const Searcher* searcher, ServerMetrics* metrics) {
  if (absl::Status status = ValidateDynamicBatcherOptions(options); !status.ok()) return status;
  if (searcher == nullptr) return absl::InvalidArgumentError("DynamicBatcher needs a searcher");
  return std::unique_ptr<DynamicBatcher>(new DynamicBatcher(options, searcher, metrics));
}

template <typename Query, typename Hit>
DynamicBatcher<Query, Hit>::DynamicBatcher(const DynamicBatcherOptions& options,
                                           const Searcher* searcher, ServerMetrics* metrics)
    : options_(options), searcher_(searcher), metrics_(metrics) {
  workers_.reserve(options_.num_workers);
  for (int i = 0; i < options_.num_workers; ++i) workers_.emplace_back([this] { WorkerLoop(); });
}

template <typename Query, typename Hit>
DynamicBatcher<Query, Hit>::~DynamicBatcher() {
  Stop();
}

template <typename Query, typename Hit>
typename DynamicBatcher<Query, Hit>::Result DynamicBatcher<Query, Hit>::Search(
    std::vector<Query> queries, SearchParams params, Clock::time_point deadline,
    std::function<bool()> is_cancelled) {
  constexpr SearchDirection kDirection = DirectionOf<Query>();
  // A client's mistake, counted by the gRPC metrics as its code: not a batcher rejection.
  if (absl::Status invalid = searcher_->Validate(queries, params); !invalid.ok()) return invalid;
  auto request = std::make_unique<Request>();
  request->queries = std::move(queries);
  request->params = std::move(params);
  request->deadline = deadline;
  request->is_cancelled = std::move(is_cancelled);
  std::future<Result> answer = request->answer.get_future();
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stopping_) {
      if (metrics_ != nullptr) metrics_->batcher_rejected(kDirection, "shutdown").Increment();
      return absl::UnavailableError("the server is shutting down");
    }
    if (static_cast<int>(queue_.size()) >= options_.max_queue_size) {
      if (metrics_ != nullptr) metrics_->batcher_rejected(kDirection, "queue_full").Increment();
      return absl::ResourceExhaustedError(absl::StrCat(
          "the search queue is full (", options_.max_queue_size, " requests waiting); retry later"));
    }
    request->seq = next_seq_++;
    request->enqueued = Clock::now();
    queue_.push_back(std::move(request));
    SetQueueDepthLocked();
  }
  // All: a worker waiting out its head's delay must re-count the mergeable queries.
  cv_.notify_all();
  return answer.get();
}

template <typename Query, typename Hit>
void DynamicBatcher<Query, Hit>::Stop() {
  std::lock_guard<std::mutex> stop_lock(stop_mu_);
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  for (std::thread& worker : workers_) worker.join();
  workers_.clear();
}

template <typename Query, typename Hit>
void DynamicBatcher<Query, Hit>::WorkerLoop() {
  constexpr SearchDirection kDirection = DirectionOf<Query>();
  const auto delay = std::chrono::microseconds(options_.max_queue_delay_us);
  for (;;) {
    std::vector<RequestPtr> batch;
    std::vector<RequestPtr> expired;
    {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait(lock, [this] { return stopping_ || !queue_.empty(); });
      if (queue_.empty()) return;  // stopping, and everything queued has been answered
      if (!stopping_ && delay.count() > 0) {
        // Let the batch led by the oldest request fill up, until its delay (or deadline) is over.
        const Request& head = *queue_.front();
        const uint64_t head_seq = head.seq;
        const Clock::time_point until = std::min(head.enqueued + delay, head.deadline);
        cv_.wait_until(lock, until, [&] {
          return stopping_ || queue_.empty() || queue_.front()->seq != head_seq ||
                 MergeableQueriesLocked(*queue_.front()) >= options_.max_batch_queries;
        });
        // Another worker took the head: start over with the new one.
        if (queue_.empty() || (queue_.front()->seq != head_seq && !stopping_)) continue;
      }
      TakeBatchLocked(Clock::now(), &batch, &expired);
      SetQueueDepthLocked();
    }
    for (RequestPtr& request : expired) {
      const bool cancelled = request->deadline > Clock::now();
      if (metrics_ != nullptr) {
        metrics_->batcher_rejected(kDirection, cancelled ? "cancelled" : "deadline").Increment();
      }
      Answer(*request, cancelled ? absl::CancelledError("the call was cancelled while queued")
                                 : absl::DeadlineExceededError("the deadline passed while the search was queued"));
    }
    if (!batch.empty()) RunBatch(std::move(batch));
  }
}

template <typename Query, typename Hit>
int DynamicBatcher<Query, Hit>::MergeableQueriesLocked(const Request& head) const {
  int queries = static_cast<int>(head.queries.size());
  for (const RequestPtr& request : queue_) {
    if (request->seq == head.seq) continue;
    if (Mergeable(head.queries, head.params, request->queries, request->params)) {
      queries += static_cast<int>(request->queries.size());
    }
  }
  return queries;
}

template <typename Query, typename Hit>
void DynamicBatcher<Query, Hit>::TakeBatchLocked(Clock::time_point now,
                                                 std::vector<RequestPtr>* batch,
                                                 std::vector<RequestPtr>* expired) {
  std::deque<RequestPtr> kept;
  int batch_queries = 0;
  for (RequestPtr& request : queue_) {
    if (request->deadline <= now || (request->is_cancelled && request->is_cancelled())) {
      expired->push_back(std::move(request));
      continue;
    }
    const int n = static_cast<int>(request->queries.size());
    bool take = false;
    if (batch->empty()) {
      take = true;  // the oldest live request leads, whatever its size
    } else {
      const Request& head = *batch->front();
      take = batch_queries + n <= options_.max_batch_queries &&
             Mergeable(head.queries, head.params, request->queries, request->params);
    }
    if (take) {
      batch_queries += n;
      if (metrics_ != nullptr) {
        metrics_->queue_wait_seconds(DirectionOf<Query>())
            .Observe(SecondsBetween(request->enqueued, now));
      }
      batch->push_back(std::move(request));
    } else {
      kept.push_back(std::move(request));
    }
  }
  queue_.swap(kept);
}

template <typename Query, typename Hit>
void DynamicBatcher<Query, Hit>::RunBatch(std::vector<RequestPtr> batch) {
  if (batch.size() == 1) {
    Request& request = *batch.front();
    Answer(request, CallEngine(request.queries, request.params, 1));
    return;
  }
  // The queries move into the merged call (image queries carry k x 2048 features) and move back
  // if it fails.
  std::vector<Query> queries;
  SearchParams params = batch.front()->params;
  for (const RequestPtr& request : batch) {
    std::move(request->queries.begin(), request->queries.end(), std::back_inserter(queries));
    params.top_k = std::max(params.top_k, request->params.top_k);
  }
  Result merged = CallEngine(queries, params, static_cast<int>(batch.size()));
  if (!merged.ok()) {
    // Attribute the failure: each request alone gets its own answer (or error).
    size_t back = 0;
    for (RequestPtr& request : batch) {
      for (Query& query : request->queries) query = std::move(queries[back++]);
    }
    for (RequestPtr& request : batch) {
      if (request->deadline <= Clock::now()) {
        if (metrics_ != nullptr) {
          metrics_->batcher_rejected(DirectionOf<Query>(), "deadline").Increment();
        }
        Answer(*request, absl::DeadlineExceededError("the deadline passed while the search was queued"));
        continue;
      }
      Answer(*request, CallEngine(request->queries, request->params, 1));
    }
    return;
  }
  size_t offset = 0;
  for (RequestPtr& request : batch) {
    std::vector<std::vector<Hit>> own;
    own.reserve(request->queries.size());
    for (size_t i = 0; i < request->queries.size(); ++i) {
      std::vector<Hit>& hits = (*merged)[offset + i];
      if (static_cast<int>(hits.size()) > request->params.top_k) hits.resize(request->params.top_k);
      own.push_back(std::move(hits));
    }
    offset += request->queries.size();
    Answer(*request, std::move(own));
  }
}

template <typename Query, typename Hit>
typename DynamicBatcher<Query, Hit>::Result DynamicBatcher<Query, Hit>::CallEngine(
    const std::vector<Query>& queries, const SearchParams& params, int requests) {
  constexpr SearchDirection kDirection = DirectionOf<Query>();
  const Clock::time_point start = Clock::now();
  Result result = absl::InternalError("unset");
  try {
    result = searcher_->Search(queries, params);
  } catch (const std::exception& e) {  // e.g. std::bad_alloc: answer, never leave callers hanging
    result = absl::InternalError(absl::StrCat("search failed: ", e.what()));
  }
  if (metrics_ != nullptr) {
    metrics_->engine_search_seconds(kDirection).Observe(SecondsBetween(start, Clock::now()));
    metrics_->batch_size(kDirection).Observe(static_cast<double>(queries.size()));
    metrics_->batch_requests(kDirection).Observe(requests);
  }
  if (result.ok() && result->size() != queries.size()) {
    return absl::InternalError(absl::StrCat("the engine answered ", result->size(), " result lists for ",
                                            queries.size(), " queries"));
  }
  return result;
}

template <typename Query, typename Hit>
void DynamicBatcher<Query, Hit>::Answer(Request& request, Result result) {
  request.answer.set_value(std::move(result));
}

template <typename Query, typename Hit>
void DynamicBatcher<Query, Hit>::SetQueueDepthLocked() {
  if (metrics_ != nullptr) {
    metrics_->queue_depth(DirectionOf<Query>()).Set(static_cast<double>(queue_.size()));
  }
}

template class DynamicBatcher<std::string, ImageHit>;
template class DynamicBatcher<ImageQuery, CaptionHit>;

}  // namespace scanserve
