// DetectorPool: runs the region detector (engine/detector/region_detector.h) for the RPC handlers,
// off their threads, on a few worker threads behind a bounded queue. A bottom-up detection takes
// seconds on a CPU and uses several intra-op threads itself, so the pool is small (default one
// worker) and the queue is what absorbs bursts.
//
// Per call (one RPC's images), the caller's semantics are kept:
//  - batching: the images of one call that arrive together go through RegionDetector::DetectBatch
//    in chunks of up to max_batch_images (its res5 head runs over all their proposals at once);
//    chunks of one call may run on different workers;
//  - admission: the queue holds at most max_queue_images images waiting to start. A call's images
//    are admitted in order while there is room; the rest are RESOURCE_EXHAUSTED at once. A call
//    that finds the queue empty is admitted whole, so one large request is never refused by an
//    idle server (the queue then holds at most max_queue_images - 1 + one call's images);
//  - deadlines and cancellation: an image whose call's deadline passed (or that was cancelled)
//    before a worker started it is not run: DEADLINE_EXCEEDED (CANCELLED). The waiting caller
//    withdraws its queued images as soon as that happens; a detection already running finishes;
//  - errors: each image gets its own result (a bad image fails only itself; the detector's
//    INVALID_ARGUMENT message is kept).
// Stop(deadline) refuses new calls (UNAVAILABLE), runs what is queued until the deadline, answers
// what is still queued then with UNAVAILABLE, and joins the workers.
//
// No gRPC here: the pool depends on the RegionDetector interface only (tests use a fake).
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <string_view>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "engine/detector/region_detector.h"

namespace scanserve {

class ServerMetrics;

struct DetectorPoolOptions {
  // Threads running detections (each detection already runs several intra-op threads).
  int num_workers = 1;
  // Images admitted and not yet started, at most; beyond it images are RESOURCE_EXHAUSTED.
  int max_queue_images = 32;
  // Most images of one call per DetectBatch.
  int max_batch_images = 8;
  // Encoded images above this many bytes are INVALID_ARGUMENT before they are queued (the
  // detector checks it again, with its own decoding limits).
  int64_t max_image_bytes = 32LL << 20;
};

// INVALID_ARGUMENT naming the first field out of range.
absl::Status ValidateDetectorPoolOptions(const DetectorPoolOptions& options);

class DetectorPool {
 public:
  using Clock = std::chrono::steady_clock;
  using Result = absl::StatusOr<DetectedRegions>;

  // `detector` (required) and `metrics` (may be null) must outlive the pool. Starts the workers.
  static absl::StatusOr<std::unique_ptr<DetectorPool>> Create(const DetectorPoolOptions& options,
                                                              const RegionDetector* detector,
                                                              ServerMetrics* metrics);
  ~DetectorPool();  // Stop(now)
  DetectorPool(const DetectorPool&) = delete;
  DetectorPool& operator=(const DetectorPool&) = delete;

  // Detects `images` (encoded bytes; they must stay alive until this returns) and blocks until
  // every one is answered: result[i] answers images[i]. `deadline` = Clock::time_point::max() for
  // none; `is_cancelled`, if set, is polled while the call waits. Thread-safe.
  std::vector<Result> Detect(absl::Span<const std::string_view> images, Clock::time_point deadline,
                             std::function<bool()> is_cancelled = nullptr);

  // See the file comment. Idempotent; thread-safe.
  void Stop(Clock::time_point deadline);

  // Whether Stop() was called (new calls are then UNAVAILABLE).
  bool stopping() const;

  // The detector's description (DetectorInfo::summary etc.).
  DetectorInfo info() const { return info_; }
  const DetectorPoolOptions& options() const { return options_; }

 private:
  // One caller's wait: the results of all its images, and how many are still unanswered.
  struct Call {
    Clock::time_point deadline;
    std::function<bool()> is_cancelled;  // may be empty
    std::mutex mu;  // guards results, pending
    std::condition_variable done;  // pending reached 0
    std::vector<Result> results;   // results[i] answers the call's images[i]
    size_t pending = 0;            // admitted images not answered yet
  };
  // Up to max_batch_images admitted images of one call, in order: one DetectBatch.
  struct Chunk {
    std::shared_ptr<Call> call;
    std::vector<size_t> indices;             // into call->results
    std::vector<std::string_view> images;    // the caller's bytes (alive until it returns)
    Clock::time_point enqueued;
  };

  DetectorPool(const DetectorPoolOptions& options, const RegionDetector* detector, ServerMetrics* metrics);

  void WorkerLoop();
  void Run(Chunk& chunk);
  // Answers the chunk's images with `status` (one per image).
  void AnswerAll(Chunk& chunk, const absl::Status& status);
  // Records one image's result (and counts it); wakes the caller after its last one.
  void Answer(Call& call, size_t index, Result result);
  // With mu_ held: removes the call's queued chunks and answers them with `status`.
  void WithdrawLocked(const std::shared_ptr<Call>& call, const absl::Status& status);
  void SetQueueDepthLocked();
  void CountResult(const Result& result);

  const DetectorPoolOptions options_;
  const RegionDetector* const detector_;  // not owned
  ServerMetrics* const metrics_;          // not owned; may be null
  const DetectorInfo info_;

  mutable std::mutex mu_;  // guards queue_, queued_images_, stopping_, exiting_
  std::condition_variable work_;     // a chunk was queued, or the pool is exiting
  std::condition_variable drained_;  // a chunk left the queue (for Stop's drain)
  std::deque<Chunk> queue_;  // oldest first
  int64_t queued_images_ = 0;
  bool stopping_ = false;  // Stop() called: no new calls
  bool exiting_ = false;   // workers return once the queue is empty

  std::mutex stop_mu_;  // serialises Stop() (joining workers_)
  std::vector<std::thread> workers_;
};

}  // namespace scanserve
