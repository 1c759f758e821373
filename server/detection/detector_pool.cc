#include "server/detection/detector_pool.h"

#include <algorithm>
#include <exception>
#include <utility>

#include "absl/strings/str_cat.h"
#include "server/metrics.h"

namespace scanserve {
namespace {

// How often a waiting caller checks whether its call was cancelled.
constexpr auto kCancelPollInterval = std::chrono::milliseconds(50);

double SecondsBetween(DetectorPool::Clock::time_point from, DetectorPool::Clock::time_point to) {
  return std::chrono::duration<double>(to - from).count();
}

absl::Status DeadlineError() {
  return absl::DeadlineExceededError("the deadline passed while the image waited for the detector");
}

absl::Status CancelledError() {
  return absl::CancelledError("the call was cancelled while the image waited for the detector");
}

absl::Status ShutdownError() {
  return absl::UnavailableError("the server is shutting down; the image was not processed");
}

}  // namespace

absl::Status ValidateDetectorPoolOptions(const DetectorPoolOptions& options) {
  if (options.num_workers < 1 || options.num_workers > 256) {
    return absl::InvalidArgumentError(absl::StrCat("detector num_workers must be in 1..256, got ", options.num_workers));
  }
  if (options.max_queue_images < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("detector max_queue_images must be >= 1, got ", options.max_queue_images));
  }
  if (options.max_batch_images < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("detector max_batch_images must be >= 1, got ", options.max_batch_images));
  }
  if (options.max_image_bytes < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_image_bytes must be >= 1, got ", options.max_image_bytes));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<DetectorPool>> DetectorPool::Create(const DetectorPoolOptions& options,
                                                                   const RegionDetector* detector,
                                                                   ServerMetrics* metrics) {
  if (absl::Status status = ValidateDetectorPoolOptions(options); !status.ok()) return status;
  if (detector == nullptr) return absl::InvalidArgumentError("DetectorPool needs a detector");
  return std::unique_ptr<DetectorPool>(new DetectorPool(options, detector, metrics));
}

DetectorPool::DetectorPool(const DetectorPoolOptions& options, const RegionDetector* detector,
                           ServerMetrics* metrics)
    : options_(options), detector_(detector), metrics_(metrics), info_(detector->Info()) {
  SetQueueDepthLocked();  // no other thread yet
  workers_.reserve(options_.num_workers);
  for (int i = 0; i < options_.num_workers; ++i) workers_.emplace_back([this] { WorkerLoop(); });
}

DetectorPool::~DetectorPool() { Stop(Clock::now()); }

std::vector<DetectorPool::Result> DetectorPool::Detect(absl::Span<const std::string_view> images,
                                                       Clock::time_point deadline,
                                                       std::function<bool()> is_cancelled) {
  auto call = std::make_shared<Call>();
  call->deadline = deadline;
  call->is_cancelled = std::move(is_cancelled);
  call->results.assign(images.size(), Result(absl::InternalError("the detector pool left this image unanswered")));
  if (images.empty()) return {};

  // Refused at once: oversized payloads (before they take a queue slot).
  std::vector<size_t> runnable;
  for (size_t i = 0; i < images.size(); ++i) {
    if (static_cast<int64_t>(images[i].size()) > options_.max_image_bytes) {
      call->results[i] = absl::InvalidArgumentError(absl::StrCat(
          "the image is ", images[i].size(), " bytes; at most ", options_.max_image_bytes, " are accepted"));
      CountResult(call->results[i]);
    } else {
      runnable.push_back(i);
    }
  }

  size_t admitted = 0;
  {
    std::lock_guard<std::mutex> lock(mu_);
    absl::Status refusal = absl::OkStatus();
    if (stopping_) {
      refusal = ShutdownError();
    } else if (Clock::now() >= deadline) {
      refusal = DeadlineError();
    } else if (call->is_cancelled && call->is_cancelled()) {
      refusal = CancelledError();
    } else {
      const int64_t room = queued_images_ == 0
                               ? static_cast<int64_t>(runnable.size())
                               : std::max<int64_t>(0, options_.max_queue_images - queued_images_);
      admitted = static_cast<size_t>(std::min<int64_t>(room, static_cast<int64_t>(runnable.size())));
      if (admitted < runnable.size()) {
        refusal = absl::ResourceExhaustedError(
            absl::StrCat("the detector queue is full (", queued_images_, " images waiting, at most ",
                         options_.max_queue_images, "); retry later"));
      }
    }
    // Admitted images, in chunks of up to max_batch_images.
    const Clock::time_point now = Clock::now();
    call->pending = admitted;
    for (size_t begin = 0; begin < admitted; begin += static_cast<size_t>(options_.max_batch_images)) {
      const size_t end = std::min(admitted, begin + static_cast<size_t>(options_.max_batch_images));
      Chunk chunk;
      chunk.call = call;
      chunk.enqueued = now;
      for (size_t j = begin; j < end; ++j) {
        chunk.indices.push_back(runnable[j]);
        chunk.images.push_back(images[runnable[j]]);
      }
      queued_images_ += static_cast<int64_t>(chunk.images.size());
      queue_.push_back(std::move(chunk));
    }
    SetQueueDepthLocked();
    // The images not admitted (call->mu: workers may answer the admitted ones once mu_ is free).
    if (!refusal.ok()) {
      std::lock_guard<std::mutex> call_lock(call->mu);
      for (size_t j = admitted; j < runnable.size(); ++j) {
        call->results[runnable[j]] = refusal;
        CountResult(call->results[runnable[j]]);
      }
    }
  }
  if (admitted == 0) return std::move(call->results);
  work_.notify_all();

  std::unique_lock<std::mutex> lock(call->mu);
  while (call->pending > 0) {
    const bool polls = static_cast<bool>(call->is_cancelled);
    if (!polls && deadline == Clock::time_point::max()) {
      call->done.wait(lock, [&] { return call->pending == 0; });
      break;
    }
    const Clock::time_point until = polls ? std::min(deadline, Clock::now() + kCancelPollInterval) : deadline;
    if (call->done.wait_until(lock, until, [&] { return call->pending == 0; })) break;
    const bool expired = Clock::now() >= deadline;
    const bool cancelled = !expired && polls && call->is_cancelled();
    if (!expired && !cancelled) continue;
    // Withdraw what is still queued; what a worker has started finishes (its bytes must stay alive).
    lock.unlock();
    {
      std::lock_guard<std::mutex> pool_lock(mu_);
      WithdrawLocked(call, expired ? DeadlineError() : CancelledError());
    }
    drained_.notify_all();
    lock.lock();
    call->done.wait(lock, [&] { return call->pending == 0; });
  }
  return std::move(call->results);
}

void DetectorPool::Stop(Clock::time_point deadline) {
  std::lock_guard<std::mutex> stop_lock(stop_mu_);
  {
    std::unique_lock<std::mutex> lock(mu_);
    stopping_ = true;
    // Let the workers drain the queue until the deadline; then answer what is left.
    if (deadline == Clock::time_point::max()) {
      drained_.wait(lock, [this] { return queue_.empty(); });
    } else {
      drained_.wait_until(lock, deadline, [this] { return queue_.empty(); });
    }
    while (!queue_.empty()) {
      Chunk chunk = std::move(queue_.front());
      queue_.pop_front();
      queued_images_ -= static_cast<int64_t>(chunk.images.size());
      AnswerAll(chunk, ShutdownError());
    }
    exiting_ = true;
    SetQueueDepthLocked();
  }
  work_.notify_all();
  for (std::thread& worker : workers_) worker.join();
  workers_.clear();
}

bool DetectorPool::stopping() const {
  std::lock_guard<std::mutex> lock(mu_);
  return stopping_;
}

void DetectorPool::WorkerLoop() {
  for (;;) {
    Chunk chunk;
    {
      std::unique_lock<std::mutex> lock(mu_);
      work_.wait(lock, [this] { return exiting_ || !queue_.empty(); });
      if (queue_.empty()) return;  // exiting, and nothing is left
      chunk = std::move(queue_.front());
      queue_.pop_front();
      queued_images_ -= static_cast<int64_t>(chunk.images.size());
      SetQueueDepthLocked();
    }
    drained_.notify_all();
    Run(chunk);
  }
}

void DetectorPool::Run(Chunk& chunk) {
  const Clock::time_point start = Clock::now();
  Call& call = *chunk.call;
  if (start >= call.deadline) {
    AnswerAll(chunk, DeadlineError());
    return;
  }
  if (call.is_cancelled && call.is_cancelled()) {
    AnswerAll(chunk, CancelledError());
    return;
  }
  if (metrics_ != nullptr) metrics_->detector_queue_wait_seconds().Observe(SecondsBetween(chunk.enqueued, start));
  std::vector<Result> results;
  try {
    if (chunk.images.size() == 1) {
      results.push_back(detector_->Detect(chunk.images.front()));
    } else {
      results = detector_->DetectBatch(chunk.images);
    }
  } catch (const std::exception& e) {  // e.g. std::bad_alloc: answer, never leave callers hanging
    AnswerAll(chunk, absl::InternalError(absl::StrCat("the detector failed: ", e.what())));
    return;
  }
  if (metrics_ != nullptr) {
    metrics_->detector_seconds().Observe(SecondsBetween(start, Clock::now()));
    metrics_->detector_batch_size().Observe(static_cast<double>(chunk.images.size()));
  }
  if (results.size() != chunk.images.size()) {
    AnswerAll(chunk, absl::InternalError(absl::StrCat("the detector answered ", results.size(), " results for ",
                                                      chunk.images.size(), " images")));
    return;
  }
  for (size_t i = 0; i < results.size(); ++i) Answer(call, chunk.indices[i], std::move(results[i]));
}

void DetectorPool::AnswerAll(Chunk& chunk, const absl::Status& status) {
  for (size_t index : chunk.indices) Answer(*chunk.call, index, status);
}

void DetectorPool::Answer(Call& call, size_t index, Result result) {
  CountResult(result);
  std::lock_guard<std::mutex> lock(call.mu);
  call.results[index] = std::move(result);
  if (--call.pending == 0) call.done.notify_all();
}

void DetectorPool::WithdrawLocked(const std::shared_ptr<Call>& call, const absl::Status& status) {
  std::deque<Chunk> kept;
  for (Chunk& chunk : queue_) {
    if (chunk.call == call) {
      queued_images_ -= static_cast<int64_t>(chunk.images.size());
      AnswerAll(chunk, status);
    } else {
      kept.push_back(std::move(chunk));
    }
  }
  queue_.swap(kept);
  SetQueueDepthLocked();
}

void DetectorPool::SetQueueDepthLocked() {
  if (metrics_ != nullptr) metrics_->detector_queue_depth().Set(static_cast<double>(queued_images_));
}

void DetectorPool::CountResult(const Result& result) {
  if (metrics_ != nullptr) metrics_->detector_images(result.status().code()).Increment();
}

}  // namespace scanserve
