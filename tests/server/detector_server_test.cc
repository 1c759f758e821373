// Image bytes through the whole server (real gRPC on loopback) with the fake engine and the fake
// detector: UpsertImages, the Ingest stream and SearchCaptions with image bytes; a bad image fails
// only itself; a full detector queue is RESOURCE_EXHAUSTED; deadlines while queued; no detector ->
// FAILED_PRECONDITION; GetStats and /metrics report the detector.
#include <chrono>
#include <future>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include "absl/strings/str_cat.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "scanserve/v1/scanserve.grpc.pb.h"
#include "server/metrics.h"
#include "server/server.h"
#include "tests/server/eventually.h"
#include "tests/server/fake_detector.h"
#include "tests/server/fake_engine.h"
#include "tests/server/features_image.h"
#include "tests/server/http_get.h"
#include "tests/server/loopback_channel.h"

namespace scanserve {
namespace {

using testing_fake::FakeRegionDetector;
using testing_fake::FakeRetrievalEngine;
using testing_fake::FeaturesImage;
using testing_channel::LoopbackChannel;
using testing_http::HttpGet;
using testing_wait::Eventually;

constexpr int kInvalidArgument = static_cast<int>(grpc::StatusCode::INVALID_ARGUMENT);
constexpr int kResourceExhausted = static_cast<int>(grpc::StatusCode::RESOURCE_EXHAUSTED);
constexpr int kFailedPrecondition = static_cast<int>(grpc::StatusCode::FAILED_PRECONDITION);

v1::Image BytesImage(const std::string& id, const std::string& bytes, const std::string& collection = "") {
  v1::Image image;
  image.set_id(id);
  image.set_collection(collection);
  image.set_image_bytes(bytes);
  return image;
}

class DetectorServerTest : public ::testing::Test {
 protected:
  // with_detector = false: a server without a detector.
  void Start(bool with_detector = true, ServerOptions options = {}) {
    auto engine = std::make_unique<FakeRetrievalEngine>();
    engine_ = engine.get();
    std::unique_ptr<FakeRegionDetector> detector;
    if (with_detector) {
      detector = std::make_unique<FakeRegionDetector>();
      detector_ = detector.get();
    }
    options.listen_address = "127.0.0.1:0";
    options.metrics_address = "127.0.0.1:0";
    options.model_dirs = {"/fake/model"};
    absl::StatusOr<std::unique_ptr<Server>> server = Server::Create(options, std::move(engine), std::move(detector));
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
    ASSERT_TRUE(server_->Start().ok());
    channel_ = LoopbackChannel(server_->port());
    stub_ = v1::ScanService::NewStub(channel_);
  }

  void TearDown() override {
    if (detector_ != nullptr) detector_->OpenGate();
    if (server_ != nullptr) server_->Stop(std::chrono::system_clock::now() + std::chrono::seconds(5));
  }

  std::unique_ptr<grpc::ClientContext> Context(std::chrono::milliseconds timeout = std::chrono::seconds(10)) {
    auto context = std::make_unique<grpc::ClientContext>();
    context->set_deadline(std::chrono::system_clock::now() + timeout);
    return context;
  }

  v1::UpsertImagesResponse Upsert(const std::vector<v1::Image>& images) {
    v1::UpsertImagesRequest request;
    for (const v1::Image& image : images) *request.add_images() = image;
    v1::UpsertImagesResponse response;
    const grpc::Status status = stub_->UpsertImages(Context().get(), request, &response);
    EXPECT_TRUE(status.ok()) << status.error_message();
    return response;
  }

  grpc::Status SearchCaptionsByBytes(const std::vector<std::string>& images, v1::SearchCaptionsResponse* response,
                                     std::chrono::milliseconds timeout = std::chrono::seconds(10)) {
    v1::SearchCaptionsRequest request;
    for (const std::string& bytes : images) request.add_queries()->set_image_bytes(bytes);
    return stub_->SearchCaptions(Context(timeout).get(), request, response);
  }

  void UpsertCaption(const std::string& id, const std::string& text) {
    v1::UpsertCaptionsRequest request;
    v1::Caption* caption = request.add_captions();
    caption->set_id(id);
    caption->set_text(text);
    v1::UpsertCaptionsResponse response;
    ASSERT_TRUE(stub_->UpsertCaptions(Context().get(), request, &response).ok());
    ASSERT_EQ(response.results(0).code(), 0) << response.results(0).message();
  }

  grpc::health::v1::HealthCheckResponse::ServingStatus Health() {
    auto health = grpc::health::v1::Health::NewStub(channel_);
    grpc::health::v1::HealthCheckResponse response;
    EXPECT_TRUE(health->Check(Context().get(), grpc::health::v1::HealthCheckRequest(), &response).ok());
    return response.status();
  }

  FakeRetrievalEngine* engine_ = nullptr;    // owned by server_
  FakeRegionDetector* detector_ = nullptr;   // owned by server_; null without a detector
  std::unique_ptr<Server> server_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::ScanService::Stub> stub_;
};

TEST_F(DetectorServerTest, UpsertImagesWithBytesStoresRegionsBoxesAndLabels) {
  Start();
  EXPECT_EQ(Health(), grpc::health::v1::HealthCheckResponse::SERVING);
  const v1::UpsertImagesResponse response = Upsert({BytesImage("photo1", "jpeg-one", "pics"), FeaturesImage("feats", 0.1f),
                                                    BytesImage("broken", "bad bytes"), BytesImage("photo2", "jpeg-two")});
  ASSERT_EQ(response.results_size(), 4);
  EXPECT_EQ(response.results(0).id(), "photo1");
  EXPECT_EQ(response.results(0).code(), 0) << response.results(0).message();
  EXPECT_EQ(response.results(1).code(), 0) << "features and bytes mix in one call";
  EXPECT_EQ(response.results(2).id(), "broken");
  EXPECT_EQ(response.results(2).code(), kInvalidArgument);
  EXPECT_NE(response.results(2).message().find("cannot decode"), std::string::npos)
      << "the detector's message is kept: " << response.results(2).message();
  EXPECT_NE(response.results(2).message().find("broken"), std::string::npos) << "and names the image";
  EXPECT_EQ(response.results(3).code(), 0) << "a bad image fails only itself";
  EXPECT_EQ(engine_->Stats().images, 3);
  EXPECT_EQ(detector_->BatchSizes(), (std::vector<int>{3})) << "one call's images go through DetectBatch together";

  // The detector's boxes and labels come back in explanations.
  v1::SearchImagesRequest search;
  search.add_queries("thing");
  search.set_explain(true);
  search.mutable_filter()->set_collection("pics");
  v1::SearchImagesResponse hits;
  ASSERT_TRUE(stub_->SearchImages(Context().get(), search, &hits).ok());
  ASSERT_EQ(hits.results(0).hits_size(), 1);
  const v1::ImageHit& hit = hits.results(0).hits(0);
  EXPECT_EQ(hit.id(), "photo1");
  EXPECT_NEAR(hit.score(), FakeRegionDetector::FirstFeature("jpeg-one") + 0.05f, 1e-6);
  ASSERT_EQ(hit.explanation_size(), 1);
  EXPECT_TRUE(hit.explanation(0).has_box());
  EXPECT_EQ(hit.explanation(0).box().x2(), 100);
  EXPECT_EQ(hit.explanation(0).label(), "red thing0");

  // Boxes or labels sent along with bytes: the detector supplies them.
  v1::Image with_boxes = BytesImage("boxed", "jpeg-three");
  with_boxes.add_boxes()->set_x2(3);
  const v1::UpsertImagesResponse refused = Upsert({with_boxes});
  EXPECT_EQ(refused.results(0).code(), kInvalidArgument);
  EXPECT_EQ(Health(), grpc::health::v1::HealthCheckResponse::SERVING);
}

TEST_F(DetectorServerTest, IngestStreamRunsImageBytesThroughTheDetector) {
  Start();
  grpc::ClientContext context;
  auto stream = stub_->Ingest(&context);
  std::vector<v1::IngestRequest> items(5);
  *items[0].mutable_image() = BytesImage("s1", "stream-one");
  *items[1].mutable_image() = BytesImage("s2", "bad stream item");
  items[2].mutable_caption()->set_id("c1");
  items[2].mutable_caption()->set_text("a caption");
  *items[3].mutable_image() = BytesImage("s3", "");  // empty bytes
  *items[4].mutable_image() = BytesImage("s4", "stream-four");
  for (const auto& item : items) ASSERT_TRUE(stream->Write(item));
  stream->WritesDone();
  std::vector<v1::IngestResponse> responses;
  v1::IngestResponse response;
  while (stream->Read(&response)) responses.push_back(response);
  ASSERT_TRUE(stream->Finish().ok());
  ASSERT_EQ(responses.size(), 5u);
  EXPECT_EQ(responses[0].result().id(), "s1");
  EXPECT_EQ(responses[0].result().code(), 0) << responses[0].result().message();
  EXPECT_EQ(responses[1].result().id(), "s2");
  EXPECT_EQ(responses[1].result().code(), kInvalidArgument);
  EXPECT_TRUE(responses[2].is_caption());
  EXPECT_EQ(responses[2].result().code(), 0);
  EXPECT_EQ(responses[3].result().code(), kInvalidArgument) << "empty image bytes";
  EXPECT_EQ(responses[4].result().id(), "s4");
  EXPECT_EQ(responses[4].result().code(), 0);
  EXPECT_EQ(engine_->Stats().images, 2);
  EXPECT_EQ(engine_->Stats().captions, 1);
}

TEST_F(DetectorServerTest, SearchCaptionsByImageBytes) {
  Start();
  UpsertCaption("short", "a dog");
  UpsertCaption("long", "a dog runs on the beach");
  v1::SearchCaptionsResponse response;
  const grpc::Status status = SearchCaptionsByBytes({"query-jpeg", "another"}, &response);
  ASSERT_TRUE(status.ok()) << status.error_message();
  ASSERT_EQ(response.results_size(), 2);
  ASSERT_EQ(response.results(0).hits_size(), 2);
  EXPECT_EQ(response.results(0).hits(0).id(), "long");
  EXPECT_NEAR(response.results(0).hits(0).score(),
              FakeRegionDetector::FirstFeature("query-jpeg") + 0.01f * 23, 1e-5)
      << "the detected features are the query";
  EXPECT_NEAR(response.results(1).hits(0).score(), FakeRegionDetector::FirstFeature("another") + 0.01f * 23, 1e-5);

  // One bad image fails the call with the detector's INVALID_ARGUMENT; the server keeps serving.
  const grpc::Status bad = SearchCaptionsByBytes({"fine", "bad image"}, &response);
  EXPECT_EQ(bad.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(bad.error_message().find("queries[1]"), std::string::npos) << bad.error_message();
  EXPECT_TRUE(SearchCaptionsByBytes({"again"}, &response).ok());
  EXPECT_EQ(Health(), grpc::health::v1::HealthCheckResponse::SERVING);
}

TEST_F(DetectorServerTest, AFullDetectorQueueIsResourceExhausted) {
  ServerOptions options;
  options.detection.num_workers = 1;
  options.detection.max_queue_images = 1;
  options.detection.max_batch_images = 1;
  Start(true, options);
  UpsertCaption("c", "caption");
  detector_->CloseGate();
  // One image runs (blocked at the gate), one waits in the queue: the queue is full.
  auto running = std::async(std::launch::async, [this] { return Upsert({BytesImage("running", "img-r")}); });
  ASSERT_TRUE(Eventually([this] { return detector_->blocked.load() == 1; }));
  auto queued = std::async(std::launch::async, [this] { return Upsert({BytesImage("queued", "img-q")}); });
  ASSERT_TRUE(Eventually([this] { return server_->metrics().detector_queue_depth().Value() == 1; }));

  const v1::UpsertImagesResponse refused = Upsert({BytesImage("refused", "img-x"), FeaturesImage("feats", 0.2f)});
  ASSERT_EQ(refused.results_size(), 2);
  EXPECT_EQ(refused.results(0).code(), kResourceExhausted) << refused.results(0).message();
  EXPECT_EQ(refused.results(1).code(), 0) << "items without bytes do not need the detector";
  v1::SearchCaptionsResponse captions;
  EXPECT_EQ(SearchCaptionsByBytes({"img-y"}, &captions).error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  // A search whose deadline passes while it waits is answered without being run.
  EXPECT_EQ(SearchCaptionsByBytes({"img-z"}, &captions, std::chrono::milliseconds(200)).error_code(),
            grpc::StatusCode::RESOURCE_EXHAUSTED)
      << "still full: refused before its deadline";

  detector_->OpenGate();
  EXPECT_EQ(running.get().results(0).code(), 0);
  EXPECT_EQ(queued.get().results(0).code(), 0);
  EXPECT_EQ(engine_->Stats().images, 3);
  EXPECT_EQ(server_->metrics().detector_images(absl::StatusCode::kResourceExhausted).Value(), 3);
  EXPECT_EQ(server_->metrics().detector_queue_depth().Value(), 0);
}

TEST_F(DetectorServerTest, ADeadlineThatPassesWhileQueuedIsNotRun) {
  ServerOptions options;
  options.detection.max_batch_images = 1;
  Start(true, options);
  UpsertCaption("c", "caption");
  detector_->CloseGate();
  auto running = std::async(std::launch::async, [this] { return Upsert({BytesImage("running", "img-r")}); });
  ASSERT_TRUE(Eventually([this] { return detector_->blocked.load() == 1; }));
  v1::SearchCaptionsResponse captions;
  EXPECT_EQ(SearchCaptionsByBytes({"late"}, &captions, std::chrono::milliseconds(200)).error_code(),
            grpc::StatusCode::DEADLINE_EXCEEDED);
  // The server gives up on it too (gRPC may mark the call cancelled at its deadline a moment before
  // the pool sees the deadline pass: either answer is right).
  const bool gave_up = Eventually([this] {
    return server_->metrics().detector_images(absl::StatusCode::kDeadlineExceeded).Value() +
               server_->metrics().detector_images(absl::StatusCode::kCancelled).Value() == 1;
  });
  detector_->OpenGate();
  EXPECT_TRUE(gave_up);
  EXPECT_EQ(running.get().results(0).code(), 0);
  EXPECT_EQ(detector_->images_detected.load(), 1) << "the expired image never reached the detector";
}

TEST_F(DetectorServerTest, WithoutADetectorImageBytesAreFailedPrecondition) {
  Start(/*with_detector=*/false);
  EXPECT_EQ(Health(), grpc::health::v1::HealthCheckResponse::SERVING);
  const v1::UpsertImagesResponse response = Upsert({BytesImage("photo", "jpeg"), FeaturesImage("feats", 0.3f)});
  ASSERT_EQ(response.results_size(), 2);
  EXPECT_EQ(response.results(0).code(), kFailedPrecondition);
  EXPECT_NE(response.results(0).message().find("--detector-dir"), std::string::npos) << response.results(0).message();
  EXPECT_EQ(response.results(1).code(), 0);
  v1::SearchCaptionsResponse captions;
  const grpc::Status status = SearchCaptionsByBytes({"jpeg"}, &captions);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  v1::GetStatsResponse stats;
  ASSERT_TRUE(stub_->GetStats(Context().get(), v1::GetStatsRequest(), &stats).ok());
  EXPECT_FALSE(stats.detector_loaded());
  EXPECT_EQ(stats.detector(), "");
}

TEST_F(DetectorServerTest, StatsAndMetricsReportTheDetector) {
  Start();
  v1::GetStatsResponse stats;
  ASSERT_TRUE(stub_->GetStats(Context().get(), v1::GetStatsRequest(), &stats).ok());
  EXPECT_TRUE(stats.detector_loaded());
  EXPECT_EQ(stats.detector(), "fake detector (3 boxes)");

  std::string metrics = HttpGet(server_->metrics_port(), "/metrics");
  EXPECT_NE(metrics.find("scanserve_detector_seconds_count 0"), std::string::npos) << metrics;
  EXPECT_NE(metrics.find("scanserve_detector_queue_depth 0"), std::string::npos);

  Upsert({BytesImage("a", "img-a"), BytesImage("b", "img-b"), BytesImage("c", "bad-c")});
  metrics = HttpGet(server_->metrics_port(), "/metrics");
  for (const char* expected :
       {"scanserve_detector_seconds_count 1", "scanserve_detector_batch_size_count 1",
        "scanserve_detector_queue_depth 0", "scanserve_detector_queue_wait_seconds_count 1",
        "scanserve_detector_images_total{result=\"OK\"} 2",
        "scanserve_detector_images_total{result=\"InvalidArgument\"} 1",
        "scanserve_ingest_items_total{code=\"OK\",kind=\"image\"} 2",
        "scanserve_ingest_items_total{code=\"InvalidArgument\",kind=\"image\"} 1"}) {
    EXPECT_NE(metrics.find(expected), std::string::npos) << "missing: " << expected << "\n" << metrics;
  }
}

TEST_F(DetectorServerTest, StopDrainsQueuedImages) {
  ServerOptions options;
  options.detection.max_batch_images = 1;
  Start(true, options);
  detector_->CloseGate();
  auto running = std::async(std::launch::async, [this] { return Upsert({BytesImage("running", "img-r")}); });
  ASSERT_TRUE(Eventually([this] { return detector_->blocked.load() == 1; }));
  auto queued = std::async(std::launch::async, [this] { return Upsert({BytesImage("queued", "img-q")}); });
  ASSERT_TRUE(Eventually([this] { return server_->metrics().detector_queue_depth().Value() == 1; }));
  auto stop = std::async(std::launch::async, [this] {
    server_->Stop(std::chrono::system_clock::now() + std::chrono::seconds(10));
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  detector_->OpenGate();
  stop.get();
  EXPECT_EQ(running.get().results(0).code(), 0);
  EXPECT_EQ(queued.get().results(0).code(), 0) << "queued images are detected during a graceful stop";
  EXPECT_EQ(engine_->Stats().images, 2);
}

}  // namespace
}  // namespace scanserve
