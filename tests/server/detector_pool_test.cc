// DetectorPool with a fake detector: per-image results in order, batching of one call's images,
// the bounded queue (RESOURCE_EXHAUSTED), deadlines and cancellation while queued, draining on Stop,
// and its metrics.
#include "server/detection/detector_pool.h"

#include <atomic>
#include <chrono>
#include <future>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "server/metrics.h"
#include "tests/server/eventually.h"
#include "tests/server/fake_detector.h"

namespace scanserve {
namespace {

using testing_fake::FakeRegionDetector;
using testing_wait::Eventually;
using Clock = DetectorPool::Clock;

constexpr auto kNoDeadline = Clock::time_point::max();

std::unique_ptr<DetectorPool> MakePool(const FakeRegionDetector& detector, DetectorPoolOptions options,
                                       ServerMetrics* metrics = nullptr) {
  absl::StatusOr<std::unique_ptr<DetectorPool>> pool = DetectorPool::Create(options, &detector, metrics);
  EXPECT_TRUE(pool.ok()) << pool.status();
  return pool.ok() ? *std::move(pool) : nullptr;
}

std::vector<absl::StatusCode> Codes(const std::vector<DetectorPool::Result>& results) {
  std::vector<absl::StatusCode> codes;
  for (const DetectorPool::Result& result : results) codes.push_back(result.status().code());
  return codes;
}

TEST(DetectorPoolTest, AnswersEachImageInOrderAndBatchesACallsImages) {
  FakeRegionDetector detector;
  DetectorPoolOptions options;
  options.max_batch_images = 3;
  std::unique_ptr<DetectorPool> pool = MakePool(detector, options);
  const std::vector<std::string> images = {"img-a", "img-b", "bad-c", "img-d", "img-e"};
  const std::vector<std::string_view> views(images.begin(), images.end());
  const std::vector<DetectorPool::Result> results = pool->Detect(views, kNoDeadline);
  ASSERT_EQ(results.size(), 5u);
  for (size_t i = 0; i < images.size(); ++i) {
    if (i == 2) {
      EXPECT_EQ(results[i].status().code(), absl::StatusCode::kInvalidArgument);
      EXPECT_NE(results[i].status().message().find("cannot decode"), absl::string_view::npos)
          << "the detector's message is kept: " << results[i].status();
      continue;
    }
    ASSERT_TRUE(results[i].ok()) << i << ": " << results[i].status();
    EXPECT_EQ(results[i]->features.rows, FakeRegionDetector::kRegions);
    EXPECT_EQ(results[i]->features.at(0, 0), FakeRegionDetector::FirstFeature(images[i])) << "in order";
  }
  EXPECT_EQ(detector.BatchSizes(), (std::vector<int>{3, 2})) << "one call's images go through DetectBatch together";
  EXPECT_EQ(pool->info().summary, "fake detector (3 boxes)");
  EXPECT_TRUE(pool->Detect({}, kNoDeadline).empty());
}

TEST(DetectorPoolTest, OversizedImagesAreRefusedBeforeTheDetector) {
  FakeRegionDetector detector;
  DetectorPoolOptions options;
  options.max_image_bytes = 10;
  std::unique_ptr<DetectorPool> pool = MakePool(detector, options);
  const std::string big(11, 'x');
  const std::vector<std::string_view> views = {big, "small"};
  const std::vector<DetectorPool::Result> results = pool->Detect(views, kNoDeadline);
  EXPECT_EQ(Codes(results), (std::vector<absl::StatusCode>{absl::StatusCode::kInvalidArgument, absl::StatusCode::kOk}));
  EXPECT_EQ(detector.images_detected.load(), 1);
}

TEST(DetectorPoolTest, AFullQueueIsResourceExhaustedAndNeverGrows) {
  FakeRegionDetector detector;
  DetectorPoolOptions options;
  options.num_workers = 1;
  options.max_queue_images = 3;
  options.max_batch_images = 1;
  ServerMetrics metrics("test");
  std::unique_ptr<DetectorPool> pool = MakePool(detector, options, &metrics);
  detector.CloseGate();
  // A runs (blocked at the gate), B's two images wait in the queue.
  auto a = std::async(std::launch::async, [&] { return pool->Detect({"a"}, kNoDeadline); });
  ASSERT_TRUE(Eventually([&] { return detector.blocked.load() == 1; }));
  auto b = std::async(std::launch::async, [&] { return pool->Detect({"b1", "b2"}, kNoDeadline); });
  ASSERT_TRUE(Eventually([&] { return metrics.detector_queue_depth().Value() == 2; }));
  // C: one slot left: its first image is admitted, the second refused at once.
  auto c = std::async(std::launch::async, [&] { return pool->Detect({"c1", "c2"}, kNoDeadline); });
  ASSERT_TRUE(Eventually([&] { return metrics.detector_queue_depth().Value() == 3; }));
  // D: no room at all.
  const std::vector<DetectorPool::Result> d = pool->Detect({"d"}, kNoDeadline);
  ASSERT_EQ(d.size(), 1u);
  EXPECT_EQ(d[0].status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(d[0].status().message().find("queue is full"), absl::string_view::npos) << d[0].status();
  EXPECT_EQ(metrics.detector_queue_depth().Value(), 3) << "refusals do not grow the queue";
  detector.OpenGate();
  EXPECT_EQ(Codes(a.get()), (std::vector<absl::StatusCode>{absl::StatusCode::kOk}));
  EXPECT_EQ(Codes(b.get()), (std::vector<absl::StatusCode>{absl::StatusCode::kOk, absl::StatusCode::kOk}));
  EXPECT_EQ(Codes(c.get()),
            (std::vector<absl::StatusCode>{absl::StatusCode::kOk, absl::StatusCode::kResourceExhausted}));
  EXPECT_EQ(metrics.detector_queue_depth().Value(), 0);
  EXPECT_EQ(metrics.detector_images(absl::StatusCode::kResourceExhausted).Value(), 2);
  EXPECT_EQ(metrics.detector_images(absl::StatusCode::kOk).Value(), 4);
  EXPECT_EQ(metrics.detector_seconds().Collect().histogram.sample_count, 4u);
}

TEST(DetectorPoolTest, AnIdleQueueAdmitsALargeCallWhole) {
  FakeRegionDetector detector;
  DetectorPoolOptions options;
  options.max_queue_images = 2;
  options.max_batch_images = 4;
  std::unique_ptr<DetectorPool> pool = MakePool(detector, options);
  const std::vector<std::string_view> views = {"1", "2", "3", "4", "5"};
  for (const DetectorPool::Result& result : pool->Detect(views, kNoDeadline)) EXPECT_TRUE(result.ok()) << result.status();
}

TEST(DetectorPoolTest, ImagesWhoseDeadlinePassedWhileQueuedAreNotRun) {
  FakeRegionDetector detector;
  DetectorPoolOptions options;
  options.max_batch_images = 1;
  std::unique_ptr<DetectorPool> pool = MakePool(detector, options);
  detector.CloseGate();
  auto running = std::async(std::launch::async, [&] { return pool->Detect({"running"}, kNoDeadline); });
  ASSERT_TRUE(Eventually([&] { return detector.blocked.load() == 1; }));
  const auto start = Clock::now();
  const std::vector<DetectorPool::Result> late =
      pool->Detect({"late1", "late2"}, Clock::now() + std::chrono::milliseconds(100));
  EXPECT_LT(Clock::now() - start, std::chrono::seconds(3)) << "the caller does not wait for the busy worker";
  EXPECT_EQ(Codes(late), (std::vector<absl::StatusCode>{absl::StatusCode::kDeadlineExceeded,
                                                        absl::StatusCode::kDeadlineExceeded}));
  // Already past: refused without queueing.
  EXPECT_EQ(Codes(pool->Detect({"past"}, Clock::now() - std::chrono::seconds(1))),
            (std::vector<absl::StatusCode>{absl::StatusCode::kDeadlineExceeded}));
  detector.OpenGate();
  EXPECT_TRUE(running.get()[0].ok());
  EXPECT_EQ(detector.images_detected.load(), 1) << "expired images never reach the detector";
}

TEST(DetectorPoolTest, CancelledCallsAreWithdrawn) {
  FakeRegionDetector detector;
  ServerMetrics metrics("test");
  std::unique_ptr<DetectorPool> pool = MakePool(detector, DetectorPoolOptions(), &metrics);
  detector.CloseGate();
  auto running = std::async(std::launch::async, [&] { return pool->Detect({"running"}, kNoDeadline); });
  ASSERT_TRUE(Eventually([&] { return detector.blocked.load() == 1; }));
  std::atomic<bool> cancelled{false};
  auto queued = std::async(std::launch::async, [&] {
    return pool->Detect({"queued"}, kNoDeadline, [&] { return cancelled.load(); });
  });
  ASSERT_TRUE(Eventually([&] { return metrics.detector_queue_depth().Value() == 1; }));
  cancelled = true;
  EXPECT_EQ(Codes(queued.get()), (std::vector<absl::StatusCode>{absl::StatusCode::kCancelled}));
  detector.OpenGate();
  EXPECT_TRUE(running.get()[0].ok());
  EXPECT_EQ(detector.images_detected.load(), 1);
}

TEST(DetectorPoolTest, StopDrainsTheQueueThenRefuses) {
  FakeRegionDetector detector;
  DetectorPoolOptions options;
  options.max_batch_images = 1;
  ServerMetrics metrics("test");
  std::unique_ptr<DetectorPool> pool = MakePool(detector, options, &metrics);
  detector.CloseGate();
  auto running = std::async(std::launch::async, [&] { return pool->Detect({"running"}, kNoDeadline); });
  ASSERT_TRUE(Eventually([&] { return detector.blocked.load() == 1; }));
  auto queued = std::async(std::launch::async, [&] { return pool->Detect({"queued"}, kNoDeadline); });
  ASSERT_TRUE(Eventually([&] { return metrics.detector_queue_depth().Value() == 1; }));
  auto stop = std::async(std::launch::async, [&] { pool->Stop(Clock::now() + std::chrono::seconds(10)); });
  ASSERT_TRUE(Eventually([&] { return pool->stopping(); }));
  EXPECT_EQ(Codes(pool->Detect({"new"}, kNoDeadline)), (std::vector<absl::StatusCode>{absl::StatusCode::kUnavailable}))
      << "no new work once stopping";
  detector.OpenGate();
  stop.get();
  EXPECT_TRUE(running.get()[0].ok());
  EXPECT_TRUE(queued.get()[0].ok()) << "queued images are run during a graceful stop";
}

TEST(DetectorPoolTest, StopAnswersWhatIsStillQueuedAtTheDeadline) {
  FakeRegionDetector detector;
  ServerMetrics metrics("test");
  std::unique_ptr<DetectorPool> pool = MakePool(detector, DetectorPoolOptions(), &metrics);
  detector.CloseGate();
  auto running = std::async(std::launch::async, [&] { return pool->Detect({"running"}, kNoDeadline); });
  ASSERT_TRUE(Eventually([&] { return detector.blocked.load() == 1; }));
  auto queued = std::async(std::launch::async, [&] { return pool->Detect({"queued"}, kNoDeadline); });
  ASSERT_TRUE(Eventually([&] { return metrics.detector_queue_depth().Value() == 1; }));
  auto stop = std::async(std::launch::async, [&] { pool->Stop(Clock::now() + std::chrono::milliseconds(50)); });
  EXPECT_EQ(Codes(queued.get()), (std::vector<absl::StatusCode>{absl::StatusCode::kUnavailable}));
  detector.OpenGate();  // the running detection finishes; Stop joins the worker
  stop.get();
  EXPECT_TRUE(running.get()[0].ok());
}

TEST(DetectorPoolTest, RejectsBadOptions) {
  FakeRegionDetector detector;
  DetectorPoolOptions options;
  options.num_workers = 0;
  EXPECT_EQ(DetectorPool::Create(options, &detector, nullptr).status().code(), absl::StatusCode::kInvalidArgument);
  options = DetectorPoolOptions();
  options.max_queue_images = 0;
  EXPECT_EQ(DetectorPool::Create(options, &detector, nullptr).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(DetectorPool::Create(DetectorPoolOptions(), nullptr, nullptr).status().code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace scanserve
