// The whole server in process, over real gRPC on a loopback port, with a fake engine: health,
// every RPC, status codes for bad input, message limits, auth, Ingest streaming, metrics, shutdown.
// (Image bytes through a detector: detector_server_test.cc.)
#include "server/server.h"

#include <chrono>
#include <cstring>
#include <filesystem>
#include <future>
#include <string>
#include <thread>

#include <unistd.h>

#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include "absl/strings/str_cat.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "scanserve/v1/scanserve.grpc.pb.h"
#include "server/metrics.h"
#include "tests/server/fake_engine.h"
#include "tests/server/features_image.h"
#include "tests/server/http_get.h"
#include "tests/server/loopback_channel.h"

namespace scanserve {
namespace {

using testing_fake::FakeRetrievalEngine;
using testing_fake::FeaturesImage;
using testing_channel::LoopbackChannel;
using testing_http::HttpGet;

class ServerTest : public ::testing::Test {
 protected:
  void Start(ServerOptions options = {}) {
    auto engine = std::make_unique<FakeRetrievalEngine>();
    engine_ = engine.get();
    options.listen_address = "127.0.0.1:0";
    options.metrics_address = "127.0.0.1:0";
    options.model_dirs = {"/fake/model"};
    options.version = "9.9.9";
    options.batching.max_queue_delay_us = 500;
    absl::StatusOr<std::unique_ptr<Server>> server = Server::Create(options, std::move(engine));
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
    ASSERT_TRUE(server_->Start().ok());
    channel_ = LoopbackChannel(server_->port());
    stub_ = v1::ScanService::NewStub(channel_);
    health_ = grpc::health::v1::Health::NewStub(channel_);
  }

  void TearDown() override {
    if (server_ != nullptr) server_->Stop(std::chrono::system_clock::now() + std::chrono::seconds(5));
  }

  std::unique_ptr<grpc::ClientContext> Context(const std::string& token = "") {
    auto context = std::make_unique<grpc::ClientContext>();
    context->set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    if (!token.empty()) context->AddMetadata("authorization", "Bearer " + token);
    return context;
  }

  grpc::health::v1::HealthCheckResponse::ServingStatus Health(const std::string& service) {
    grpc::health::v1::HealthCheckRequest request;
    request.set_service(service);
    grpc::health::v1::HealthCheckResponse response;
    const grpc::Status status = health_->Check(Context().get(), request, &response);
    EXPECT_TRUE(status.ok()) << status.error_message();
    return response.status();
  }

  void UpsertThreeImages(const std::string& token = "") {
    v1::UpsertImagesRequest request;
    *request.add_images() = FeaturesImage("low", 0.1f, "a");
    *request.add_images() = FeaturesImage("high", 0.9f, "b");
    *request.add_images() = FeaturesImage("mid", 0.5f, "a");
    v1::UpsertImagesResponse response;
    ASSERT_TRUE(stub_->UpsertImages(Context(token).get(), request, &response).ok());
    ASSERT_EQ(response.results_size(), 3);
    for (const auto& result : response.results()) EXPECT_EQ(result.code(), 0) << result.message();
  }

  grpc::Status Search(const std::vector<std::string>& queries, int top_k, v1::SearchImagesResponse* response,
                      const std::string& token = "") {
    v1::SearchImagesRequest request;
    for (const std::string& q : queries) request.add_queries(q);
    request.set_top_k(top_k);
    return stub_->SearchImages(Context(token).get(), request, response);
  }

  FakeRetrievalEngine* engine_ = nullptr;  // owned by server_
  std::unique_ptr<Server> server_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::ScanService::Stub> stub_;
  std::unique_ptr<grpc::health::v1::Health::Stub> health_;
};

TEST_F(ServerTest, ServingAfterStartWithWarmUpDone) {
  Start();
  EXPECT_EQ(Health(""), grpc::health::v1::HealthCheckResponse::SERVING);
  EXPECT_EQ(Health("scanserve.v1.ScanService"), grpc::health::v1::HealthCheckResponse::SERVING);
  EXPECT_GE(engine_->search_images_calls.load(), 1) << "the warm-up search ran";
  EXPECT_TRUE(server_->serving());
}

TEST_F(ServerTest, UpsertSearchDeleteStats) {
  Start();
  UpsertThreeImages();
  v1::SearchImagesResponse response;
  ASSERT_TRUE(Search({"a dog", "cat"}, 2, &response).ok());
  ASSERT_EQ(response.results_size(), 2);
  ASSERT_EQ(response.results(0).hits_size(), 2);
  EXPECT_EQ(response.results(0).hits(0).id(), "high");
  EXPECT_EQ(response.results(0).hits(1).id(), "mid");
  EXPECT_NEAR(response.results(0).hits(0).score(), 0.9f + 0.05f, 1e-6);
  EXPECT_EQ(response.results(0).hits(0).collection(), "b");

  v1::SearchImagesRequest filtered;
  filtered.add_queries("dog");
  filtered.mutable_filter()->set_collection("a");
  filtered.set_explain(true);
  ASSERT_TRUE(stub_->SearchImages(Context().get(), filtered, &response).ok());
  ASSERT_EQ(response.results(0).hits_size(), 2);
  EXPECT_EQ(response.results(0).hits(0).id(), "mid");
  ASSERT_EQ(response.results(0).hits(0).explanation_size(), 1);
  EXPECT_EQ(response.results(0).hits(0).explanation(0).word(), "dog");

  v1::UpsertCaptionsRequest captions;
  v1::Caption* caption = captions.add_captions();
  caption->set_id("c1");
  caption->set_text("a dog runs");
  v1::UpsertCaptionsResponse caption_response;
  ASSERT_TRUE(stub_->UpsertCaptions(Context().get(), captions, &caption_response).ok());
  EXPECT_EQ(caption_response.results(0).code(), 0);

  v1::SearchCaptionsRequest by_id;
  by_id.add_queries()->set_image_id("high");
  v1::SearchCaptionsResponse caption_hits;
  ASSERT_TRUE(stub_->SearchCaptions(Context().get(), by_id, &caption_hits).ok());
  ASSERT_EQ(caption_hits.results(0).hits_size(), 1);
  EXPECT_EQ(caption_hits.results(0).hits(0).text(), "a dog runs");

  v1::DeleteRequest del;
  del.add_image_ids("low");
  del.add_image_ids("never");
  del.add_caption_ids("c1");
  v1::DeleteResponse deleted;
  ASSERT_TRUE(stub_->Delete(Context().get(), del, &deleted).ok());
  ASSERT_EQ(deleted.image_results_size(), 2);
  EXPECT_EQ(deleted.image_results(0).code(), 0);
  EXPECT_EQ(deleted.image_results(1).code(), static_cast<int>(grpc::StatusCode::NOT_FOUND));
  EXPECT_EQ(deleted.caption_results(0).code(), 0);

  v1::GetStatsResponse stats;
  ASSERT_TRUE(stub_->GetStats(Context().get(), v1::GetStatsRequest(), &stats).ok());
  EXPECT_EQ(stats.images(), 2);
  EXPECT_EQ(stats.captions(), 0);
  EXPECT_EQ(stats.version(), "9.9.9");
  ASSERT_EQ(stats.models_size(), 1);
  EXPECT_EQ(stats.models(0).model_dir(), "/fake/model");
  EXPECT_EQ(stats.models(0).summary(), "fake model");
}

TEST_F(ServerTest, GetItemsAndListItemsReadBackWhatWasStored) {
  Start();
  v1::UpsertImagesRequest upsert;
  v1::Image* image = upsert.add_images();
  *image = FeaturesImage("boxed", 0.3f, "a");
  (*image->mutable_metadata())["k"] = "v";
  for (int r = 0; r < 2; ++r) {
    v1::Box* box = image->add_boxes();
    box->set_x1(r);
    box->set_y1(1);
    box->set_x2(r + 5.5f);
    box->set_y2(9);
    image->add_labels("label " + std::to_string(r));
  }
  v1::UpsertImagesResponse upserted;
  ASSERT_TRUE(stub_->UpsertImages(Context().get(), upsert, &upserted).ok());
  ASSERT_EQ(upserted.results(0).code(), 0) << upserted.results(0).message();
  UpsertThreeImages();
  v1::UpsertCaptionsRequest captions;
  v1::Caption* caption = captions.add_captions();
  caption->set_id("c1");
  caption->set_text("a dog runs");
  caption->set_collection("a");
  v1::UpsertCaptionsResponse caption_response;
  ASSERT_TRUE(stub_->UpsertCaptions(Context().get(), captions, &caption_response).ok());

  v1::GetItemsRequest get;
  get.add_image_ids("boxed");
  get.add_image_ids("never");
  get.add_caption_ids("c1");
  v1::GetItemsResponse got;
  ASSERT_TRUE(stub_->GetItems(Context().get(), get, &got).ok());
  ASSERT_EQ(got.images_size(), 2);
  EXPECT_EQ(got.images(0).status().code(), 0) << got.images(0).status().message();
  EXPECT_EQ(got.images(0).image().id(), "boxed");
  EXPECT_EQ(got.images(0).image().collection(), "a");
  EXPECT_EQ(got.images(0).image().metadata().at("k"), "v");
  EXPECT_EQ(got.images(0).num_regions(), 2);
  ASSERT_EQ(got.images(0).image().boxes_size(), 2);
  EXPECT_EQ(got.images(0).image().boxes(1).x2(), 6.5f);
  EXPECT_EQ(got.images(0).image().labels(1), "label 1");
  EXPECT_FALSE(got.images(0).image().has_region_features()) << "features are not read back";
  EXPECT_EQ(got.images(1).status().code(), static_cast<int>(grpc::StatusCode::NOT_FOUND));
  EXPECT_EQ(got.images(1).status().id(), "never");
  ASSERT_EQ(got.captions_size(), 1);
  EXPECT_EQ(got.captions(0).caption().text(), "a dog runs");
  EXPECT_EQ(got.captions(0).caption().collection(), "a");

  v1::GetItemsRequest too_many;
  for (int i = 0; i <= 1000; ++i) too_many.add_caption_ids("c1");
  EXPECT_EQ(stub_->GetItems(Context().get(), too_many, &got).error_code(), grpc::StatusCode::INVALID_ARGUMENT);

  // Pages of two, following the tokens: every id once, in byte order.
  v1::ListItemsRequest list;
  list.set_kind(v1::ITEM_KIND_IMAGE);
  list.set_page_size(2);
  std::vector<std::string> ids;
  for (int pages = 0; pages < 10; ++pages) {
    v1::ListItemsResponse page;
    ASSERT_TRUE(stub_->ListItems(Context().get(), list, &page).ok());
    ids.insert(ids.end(), page.ids().begin(), page.ids().end());
    if (page.next_page_token().empty()) break;
    list.set_page_token(page.next_page_token());
  }
  EXPECT_EQ(ids, (std::vector<std::string>{"boxed", "high", "low", "mid"}));
  v1::ListItemsRequest in_a;
  in_a.set_kind(v1::ITEM_KIND_IMAGE);
  in_a.set_collection("a");
  v1::ListItemsResponse page;
  ASSERT_TRUE(stub_->ListItems(Context().get(), in_a, &page).ok());  // page_size 0: the default
  EXPECT_EQ(std::vector<std::string>(page.ids().begin(), page.ids().end()),
            (std::vector<std::string>{"boxed", "low", "mid"}));
  EXPECT_TRUE(page.next_page_token().empty());
  in_a.set_kind(v1::ITEM_KIND_CAPTION);
  ASSERT_TRUE(stub_->ListItems(Context().get(), in_a, &page).ok());
  EXPECT_EQ(std::vector<std::string>(page.ids().begin(), page.ids().end()), std::vector<std::string>{"c1"});

  v1::ListItemsRequest no_kind;
  EXPECT_EQ(stub_->ListItems(Context().get(), no_kind, &page).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  v1::ListItemsRequest negative;
  negative.set_kind(v1::ITEM_KIND_CAPTION);
  negative.set_page_size(-1);
  EXPECT_EQ(stub_->ListItems(Context().get(), negative, &page).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  v1::ListItemsRequest huge;
  huge.set_kind(v1::ITEM_KIND_IMAGE);
  huge.set_page_size(1 << 30);  // served as the largest page
  ASSERT_TRUE(stub_->ListItems(Context().get(), huge, &page).ok());
  EXPECT_EQ(page.ids_size(), 4);
}

TEST_F(ServerTest, FailedAndSlowCallsAreLoggedClientMistakesAreNot) {
  ServerOptions options;
  options.call_log.slow_call_seconds = 0.2;
  Start(options);
  UpsertThreeImages();
  v1::SearchImagesResponse response;
  ::testing::internal::CaptureStderr();
  engine_->set_search_error(absl::InternalError("the scorer lost its device"));
  EXPECT_EQ(Search({"a dog"}, 1, &response).error_code(), grpc::StatusCode::INTERNAL);
  engine_->set_search_error(absl::OkStatus());
  EXPECT_EQ(Search({""}, 1, &response).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  engine_->search_delay_ms = 300;
  EXPECT_TRUE(Search({"a slow dog"}, 1, &response).ok());
  engine_->search_delay_ms = 0;
  const std::string log = ::testing::internal::GetCapturedStderr();
  EXPECT_NE(log.find("E "), std::string::npos) << log;
  EXPECT_NE(log.find("call /scanserve.v1.ScanService/SearchImages INTERNAL in "), std::string::npos) << log;
  EXPECT_NE(log.find("the scorer lost its device"), std::string::npos) << log;
  EXPECT_NE(log.find("(slow) from ipv"), std::string::npos) << log;
  EXPECT_EQ(log.find("INVALID_ARGUMENT"), std::string::npos) << "a client's mistake: " << log;
}

// Every answer carries its request id (the client's, else a fresh one), and a failed call's log
// line carries the same id, so a client's error report finds the server's line.
TEST_F(ServerTest, RequestIdsTieAnAnswerToItsLogLine) {
  Start();
  UpsertThreeImages();
  const auto server_request_id = [](const grpc::ClientContext& context) {
    const auto& metadata = context.GetServerInitialMetadata();
    const auto it = metadata.find("x-request-id");
    return it == metadata.end() ? std::string() : std::string(it->second.data(), it->second.size());
  };
  v1::SearchImagesRequest request;
  request.add_queries("a dog");
  v1::SearchImagesResponse response;

  ::testing::internal::CaptureStderr();
  engine_->set_search_error(absl::InternalError("the scorer lost its device"));
  auto own = Context();
  own->AddMetadata("x-request-id", "client-7/retry:2");
  EXPECT_EQ(stub_->SearchImages(own.get(), request, &response).error_code(), grpc::StatusCode::INTERNAL);
  auto traced = Context();
  traced->AddMetadata("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
  EXPECT_EQ(stub_->SearchImages(traced.get(), request, &response).error_code(), grpc::StatusCode::INTERNAL);
  auto anonymous = Context();
  EXPECT_EQ(stub_->SearchImages(anonymous.get(), request, &response).error_code(), grpc::StatusCode::INTERNAL);
  engine_->set_search_error(absl::OkStatus());
  const std::string log = ::testing::internal::GetCapturedStderr();

  EXPECT_EQ(server_request_id(*own), "client-7/retry:2");
  EXPECT_EQ(server_request_id(*traced), "4bf92f3577b34da6a3ce929d0e0e4736");
  const std::string fresh = server_request_id(*anonymous);
  EXPECT_EQ(fresh.size(), 16u) << fresh;
  for (const std::string& id : {std::string("client-7/retry:2"), std::string("4bf92f3577b34da6a3ce929d0e0e4736"), fresh}) {
    EXPECT_NE(log.find(" request " + id + ": the scorer lost its device"), std::string::npos) << id << "\n" << log;
  }

  auto ok = Context();
  ok->AddMetadata("x-request-id", "two words");  // not a token: replaced
  ASSERT_TRUE(stub_->SearchImages(ok.get(), request, &response).ok());
  const std::string replaced = server_request_id(*ok);
  EXPECT_EQ(replaced.size(), 16u) << replaced;
  EXPECT_NE(replaced, fresh);
}

TEST_F(ServerTest, UpdateItemsChangesCollectionAndMetadataThroughGrpc) {
  Start();
  UpsertThreeImages();  // low and mid in "a", high in "b"
  v1::UpdateItemsRequest request;
  v1::ItemUpdate* move = request.add_images();
  move->set_id("low");
  move->set_set_collection(true);
  move->set_collection("b");
  (*move->mutable_set_metadata())["tag"] = "x";
  v1::ItemUpdate* tag_only = request.add_images();  // set_collection false: the collection stays
  tag_only->set_id("mid");
  tag_only->set_collection("ignored");
  (*tag_only->mutable_set_metadata())["tag"] = "y";
  request.add_images()->set_id("never");
  v1::UpdateItemsResponse response;
  ASSERT_TRUE(stub_->UpdateItems(Context().get(), request, &response).ok());
  ASSERT_EQ(response.image_results_size(), 3);
  EXPECT_EQ(response.image_results(0).code(), 0) << response.image_results(0).message();
  EXPECT_EQ(response.image_results(1).code(), 0);
  EXPECT_EQ(response.image_results(2).code(), static_cast<int>(grpc::StatusCode::NOT_FOUND));
  EXPECT_EQ(response.image_results(2).id(), "never");

  v1::GetItemsRequest get;
  get.add_image_ids("low");
  get.add_image_ids("mid");
  v1::GetItemsResponse got;
  ASSERT_TRUE(stub_->GetItems(Context().get(), get, &got).ok());
  EXPECT_EQ(got.images(0).image().collection(), "b");
  EXPECT_EQ(got.images(0).image().metadata().at("tag"), "x");
  EXPECT_EQ(got.images(1).image().collection(), "a") << "without set_collection it is left as it was";
  EXPECT_EQ(got.images(1).image().metadata().at("tag"), "y");

  v1::ItemUpdate* clear = request.mutable_images(0);
  clear->set_collection("");  // set_collection still true: out of any collection
  clear->clear_set_metadata();
  clear->add_remove_metadata("tag");
  request.mutable_images()->DeleteSubrange(1, 2);
  ASSERT_TRUE(stub_->UpdateItems(Context().get(), request, &response).ok());
  ASSERT_TRUE(stub_->GetItems(Context().get(), get, &got).ok());
  EXPECT_EQ(got.images(0).image().collection(), "");
  EXPECT_TRUE(got.images(0).image().metadata().empty());
}

TEST_F(ServerTest, SnapshotsGoUnderTheSnapshotDirWithCheckedNames) {
  Start();  // no --snapshot-dir
  v1::CreateSnapshotRequest request;
  v1::CreateSnapshotResponse response;
  EXPECT_EQ(stub_->CreateSnapshot(Context().get(), request, &response).error_code(),
            grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_EQ(server_->metrics().snapshot_last_success().Value(), 0.0);
  server_->Stop(std::chrono::system_clock::now() + std::chrono::seconds(5));
  server_.reset();

  ServerOptions options;
  const std::filesystem::path base = std::filesystem::temp_directory_path() /
                                     ("server_test_snapshots_" + std::to_string(::getpid()));
  std::filesystem::remove_all(base);
  options.snapshot_dir = (base / "scan").string();  // created by Create, parents too
  Start(options);
  EXPECT_TRUE(std::filesystem::is_directory(options.snapshot_dir));
  UpsertThreeImages();
  request.set_name("nightly-1.v2_x");
  ASSERT_TRUE(stub_->CreateSnapshot(Context().get(), request, &response).ok());
  EXPECT_EQ(response.name(), "nightly-1.v2_x");
  EXPECT_EQ(response.data_dir(), options.snapshot_dir + "/nightly-1.v2_x");
  EXPECT_EQ(response.images(), 3);
  EXPECT_EQ(stub_->CreateSnapshot(Context().get(), request, &response).error_code(),
            grpc::StatusCode::ALREADY_EXISTS);
  const std::vector<std::string> bad_names = {"../etc", "a/b", ".hidden", "sp ace", std::string(129, 'x'),
                                              std::string("nul\0", 4)};
  for (const std::string& bad : bad_names) {
    request.set_name(bad);
    EXPECT_EQ(stub_->CreateSnapshot(Context().get(), request, &response).error_code(),
              grpc::StatusCode::INVALID_ARGUMENT)
        << bad;
  }
  request.clear_name();
  ASSERT_TRUE(stub_->CreateSnapshot(Context().get(), request, &response).ok());
  EXPECT_EQ(response.name().rfind("snapshot-20", 0), 0u) << response.name();
  EXPECT_EQ(response.name().size(), std::string("snapshot-YYYYMMDDTHHMMSSZ").size()) << response.name();
  EXPECT_EQ(engine_->snapshots.back(), options.snapshot_dir + "/" + response.name());
  const double now = std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
  EXPECT_NEAR(server_->metrics().snapshot_last_success().Value(), now, 60.0);
  std::filesystem::remove_all(base);
}

TEST_F(ServerTest, BadInputsGetTheirCodesAndTheServerKeepsServing) {
  Start();
  UpsertThreeImages();
  v1::SearchImagesResponse response;
  EXPECT_EQ(Search({""}, 1, &response).error_code(), grpc::StatusCode::INVALID_ARGUMENT) << "empty query";
  EXPECT_EQ(Search({}, 1, &response).error_code(), grpc::StatusCode::INVALID_ARGUMENT) << "no queries";
  EXPECT_EQ(Search({"q"}, 5000, &response).error_code(), grpc::StatusCode::INVALID_ARGUMENT) << "top_k range";
  EXPECT_EQ(Search({"q"}, -1, &response).error_code(), grpc::StatusCode::INVALID_ARGUMENT) << "negative top_k";

  v1::UpsertImagesRequest upsert;
  *upsert.add_images() = FeaturesImage("wrong-dim", 0.3f, "", /*dim=*/5);
  v1::Image bad_bytes = FeaturesImage("bad-bytes", 0.3f);
  bad_bytes.mutable_region_features()->mutable_values()->resize(7);
  *upsert.add_images() = bad_bytes;
  *upsert.add_images() = FeaturesImage("fine", 0.3f);
  v1::UpsertImagesResponse upserted;
  ASSERT_TRUE(stub_->UpsertImages(Context().get(), upsert, &upserted).ok());
  ASSERT_EQ(upserted.results_size(), 3);
  EXPECT_EQ(upserted.results(0).code(), static_cast<int>(grpc::StatusCode::INVALID_ARGUMENT));
  EXPECT_EQ(upserted.results(1).code(), static_cast<int>(grpc::StatusCode::INVALID_ARGUMENT));
  EXPECT_EQ(upserted.results(1).id(), "bad-bytes");
  EXPECT_EQ(upserted.results(2).code(), 0) << "one bad item does not stop the others";

  v1::SearchCaptionsRequest unknown;
  unknown.add_queries()->set_image_id("nope");
  v1::SearchCaptionsResponse captions;
  EXPECT_EQ(stub_->SearchCaptions(Context().get(), unknown, &captions).error_code(), grpc::StatusCode::NOT_FOUND);
  v1::SearchCaptionsRequest wrong_len;
  v1::RegionFeatures* features = wrong_len.add_queries()->mutable_region_features();
  features->set_num_regions(2);
  features->set_dim(8);
  features->set_values(std::string(60, '\0'));
  EXPECT_EQ(stub_->SearchCaptions(Context().get(), wrong_len, &captions).error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);
  v1::SearchCaptionsRequest jpeg;
  jpeg.add_queries()->set_image_bytes("\xff\xd8\xff");
  EXPECT_EQ(stub_->SearchCaptions(Context().get(), jpeg, &captions).error_code(),
            grpc::StatusCode::FAILED_PRECONDITION);

  EXPECT_TRUE(Search({"still here"}, 1, &response).ok());
  EXPECT_EQ(Health(""), grpc::health::v1::HealthCheckResponse::SERVING);
}

TEST_F(ServerTest, WriteRequestsTakeAtMostTenThousandItems) {
  Start();
  UpsertThreeImages();
  const auto captions = [](int n) {
    v1::UpsertCaptionsRequest request;
    for (int i = 0; i < n; ++i) {
      v1::Caption* caption = request.add_captions();
      caption->set_id(absl::StrCat("c", i));
      caption->set_text("a dog");
    }
    return request;
  };
  v1::UpsertCaptionsResponse upserted;
  const grpc::Status too_many = stub_->UpsertCaptions(Context().get(), captions(10001), &upserted);
  EXPECT_EQ(too_many.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(too_many.error_message().find("at most 10000 items per UpsertCaptions, got 10001"), std::string::npos)
      << too_many.error_message();
  EXPECT_EQ(engine_->caption_upsert_calls.load(), 0) << "refused before any work";
  ASSERT_TRUE(stub_->UpsertCaptions(Context().get(), captions(10000), &upserted).ok());
  EXPECT_EQ(upserted.results_size(), 10000);

  // Image and caption ids count together; nothing of a refused request is deleted.
  v1::DeleteRequest remove;
  remove.add_image_ids("low");
  for (int i = 0; i < 10000; ++i) remove.add_caption_ids(absl::StrCat("c", i));
  v1::DeleteResponse removed;
  EXPECT_EQ(stub_->Delete(Context().get(), remove, &removed).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  v1::GetStatsResponse stats;
  ASSERT_TRUE(stub_->GetStats(Context().get(), v1::GetStatsRequest(), &stats).ok());
  EXPECT_EQ(stats.images(), 3);
  EXPECT_EQ(stats.captions(), 10000);
  v1::UpdateItemsRequest update;
  for (int i = 0; i < 10001; ++i) update.add_captions()->set_id(absl::StrCat("c", i));
  v1::UpdateItemsResponse updated;
  EXPECT_EQ(stub_->UpdateItems(Context().get(), update, &updated).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  v1::UpsertImagesRequest images;
  for (int i = 0; i < 10001; ++i) *images.add_images() = FeaturesImage(absl::StrCat("i", i), 0.1f);
  v1::UpsertImagesResponse upserted_images;
  EXPECT_EQ(stub_->UpsertImages(Context().get(), images, &upserted_images).error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);
}

TEST_F(ServerTest, AnEngineThatCanNoLongerServeTurnsHealthNotServing) {
  ServerOptions options;
  options.health_poll_ms = 10;
  Start(options);
  ASSERT_NE(server_->metrics_port(), 0);
  EXPECT_EQ(Health(""), grpc::health::v1::HealthCheckResponse::SERVING);
  engine_->set_health(absl::InternalError("CudaScorer: a device copy failed"));
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (Health("") == grpc::health::v1::HealthCheckResponse::SERVING &&
         std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_EQ(Health(""), grpc::health::v1::HealthCheckResponse::NOT_SERVING);
  EXPECT_EQ(Health("scanserve.v1.ScanService"), grpc::health::v1::HealthCheckResponse::NOT_SERVING);
  EXPECT_FALSE(server_->serving());
  EXPECT_NE(HttpGet(server_->metrics_port(), "/healthz").find("503"), std::string::npos);
  // It keeps answering what it can, and stops cleanly.
  v1::SearchImagesResponse response;
  EXPECT_TRUE(Search({"still answered"}, 1, &response).ok());
}

TEST_F(ServerTest, OversizedMessagesAreResourceExhausted) {
  ServerOptions options;
  options.max_message_bytes = 64 << 10;
  Start(options);
  v1::SearchImagesResponse response;
  EXPECT_EQ(Search({std::string(100 << 10, 'a')}, 1, &response).error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_TRUE(Search({"small"}, 1, &response).ok());
}

TEST_F(ServerTest, BearerTokenAuth) {
  ServerOptions options;
  options.auth_token = "s3cret";
  Start(options);
  v1::SearchImagesResponse response;
  EXPECT_EQ(Search({"q"}, 1, &response).error_code(), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(Search({"q"}, 1, &response, "wrong").error_code(), grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_TRUE(Search({"q"}, 1, &response, "s3cret").ok());
  v1::GetStatsResponse stats;
  EXPECT_EQ(stub_->GetStats(Context().get(), v1::GetStatsRequest(), &stats).error_code(),
            grpc::StatusCode::UNAUTHENTICATED);
  v1::GetItemsRequest get;
  get.add_image_ids("x");
  v1::GetItemsResponse got;
  EXPECT_EQ(stub_->GetItems(Context().get(), get, &got).error_code(), grpc::StatusCode::UNAUTHENTICATED);
  v1::ListItemsRequest list;
  list.set_kind(v1::ITEM_KIND_IMAGE);
  v1::ListItemsResponse page;
  EXPECT_EQ(stub_->ListItems(Context().get(), list, &page).error_code(), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_TRUE(stub_->ListItems(Context("s3cret").get(), list, &page).ok());
  v1::ListChangesResponse changes;
  EXPECT_EQ(stub_->ListChanges(Context().get(), v1::ListChangesRequest(), &changes).error_code(),
            grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(Health(""), grpc::health::v1::HealthCheckResponse::SERVING) << "health needs no token";
}

TEST_F(ServerTest, ListChangesPagesTheEnginesChangeLog) {
  Start();
  UpsertThreeImages();
  v1::DeleteRequest remove;
  remove.add_image_ids("mid");
  v1::DeleteResponse removed;
  ASSERT_TRUE(stub_->Delete(Context().get(), remove, &removed).ok());

  v1::ListChangesRequest request;  // page_size 0: the default, more than there are
  v1::ListChangesResponse all;
  ASSERT_TRUE(stub_->ListChanges(Context().get(), request, &all).ok());
  ASSERT_EQ(all.changes_size(), 4);
  EXPECT_EQ(all.last_sequence(), 4u);
  EXPECT_EQ(all.changes(0).id(), "low");
  EXPECT_EQ(all.changes(0).kind(), v1::ITEM_KIND_IMAGE);
  EXPECT_FALSE(all.changes(0).deleted());
  EXPECT_GT(all.changes(0).unix_micros(), 0);
  EXPECT_EQ(all.changes(3).id(), "mid");
  EXPECT_TRUE(all.changes(3).deleted());

  request.set_after_sequence(1);
  request.set_page_size(2);
  v1::ListChangesResponse page;
  ASSERT_TRUE(stub_->ListChanges(Context().get(), request, &page).ok());
  ASSERT_EQ(page.changes_size(), 2);
  EXPECT_EQ(page.changes(0).sequence(), 2u);
  EXPECT_EQ(page.changes(1).sequence(), 3u);

  request.set_page_size(1'000'000);  // served as the largest page
  EXPECT_TRUE(stub_->ListChanges(Context().get(), request, &page).ok());
  request.set_page_size(-1);
  EXPECT_EQ(stub_->ListChanges(Context().get(), request, &page).error_code(), grpc::StatusCode::INVALID_ARGUMENT);

  engine_->SetChangesTrimmedThrough(2);
  request.set_page_size(0);
  request.set_after_sequence(1);
  EXPECT_EQ(stub_->ListChanges(Context().get(), request, &page).error_code(), grpc::StatusCode::OUT_OF_RANGE);
}

TEST_F(ServerTest, IngestStreamAnswersEveryItemInOrder) {
  Start();
  grpc::ClientContext context;
  auto stream = stub_->Ingest(&context);
  std::vector<v1::IngestRequest> items(6);
  *items[0].mutable_image() = FeaturesImage("i1", 0.2f);
  *items[1].mutable_image() = FeaturesImage("i2", 0.3f, "", 3);  // wrong dim
  items[2].mutable_caption()->set_id("c1");
  items[2].mutable_caption()->set_text("a caption");
  items[3].mutable_caption()->set_id("c2");  // empty text
  // items[4]: nothing set
  *items[5].mutable_image() = FeaturesImage("i3", 0.4f);
  for (const auto& item : items) ASSERT_TRUE(stream->Write(item));
  stream->WritesDone();
  std::vector<v1::IngestResponse> responses;
  v1::IngestResponse response;
  while (stream->Read(&response)) responses.push_back(response);
  ASSERT_TRUE(stream->Finish().ok());
  ASSERT_EQ(responses.size(), 6u);
  const int invalid = static_cast<int>(grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(responses[0].result().id(), "i1");
  EXPECT_EQ(responses[0].result().code(), 0);
  EXPECT_FALSE(responses[0].is_caption());
  EXPECT_EQ(responses[1].result().code(), invalid);
  EXPECT_EQ(responses[2].result().id(), "c1");
  EXPECT_EQ(responses[2].result().code(), 0);
  EXPECT_TRUE(responses[2].is_caption());
  EXPECT_EQ(responses[3].result().code(), invalid);
  EXPECT_EQ(responses[4].result().code(), invalid);
  EXPECT_EQ(responses[5].result().id(), "i3");
  EXPECT_EQ(responses[5].result().code(), 0);
  EXPECT_EQ(engine_->Stats().images, 2);
}

TEST_F(ServerTest, IngestBatchesItemsThatArriveTogetherAndNeverWaitsForMore) {
  Start();
  {
    // Lock-step: one item, then wait for its ack. Waiting to fill a batch would deadlock here.
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    auto stream = stub_->Ingest(&context);
    for (int i = 0; i < 5; ++i) {
      v1::IngestRequest item;
      item.mutable_caption()->set_id(absl::StrCat("lock", i));
      item.mutable_caption()->set_text("text");
      ASSERT_TRUE(stream->Write(item));
      v1::IngestResponse response;
      ASSERT_TRUE(stream->Read(&response));
      EXPECT_EQ(response.result().id(), absl::StrCat("lock", i));
    }
    stream->WritesDone();
    ASSERT_TRUE(stream->Finish().ok());
  }
  const int calls_before = engine_->caption_upsert_calls.load();
  {
    // Pipelined: 200 captions written before reading; they share engine calls.
    grpc::ClientContext context;
    auto stream = stub_->Ingest(&context);
    for (int i = 0; i < 200; ++i) {
      v1::IngestRequest item;
      item.mutable_caption()->set_id(absl::StrCat("bulk", i));
      item.mutable_caption()->set_text("text");
      ASSERT_TRUE(stream->Write(item));
    }
    stream->WritesDone();
    int n = 0;
    v1::IngestResponse response;
    while (stream->Read(&response)) {
      EXPECT_EQ(response.result().id(), absl::StrCat("bulk", n));
      ++n;
    }
    ASSERT_TRUE(stream->Finish().ok());
    EXPECT_EQ(n, 200);
  }
  EXPECT_LT(engine_->caption_upsert_calls.load() - calls_before, 200);
  EXPECT_EQ(engine_->Stats().captions, 205);
}

TEST_F(ServerTest, MetricsEndpoint) {
  Start();
  UpsertThreeImages();
  v1::SearchImagesResponse response;
  ASSERT_TRUE(Search({"q"}, 1, &response).ok());
  EXPECT_EQ(Search({""}, 1, &response).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  v1::SearchCaptionsRequest by_id;  // through the image->text batcher (no captions: no hits)
  by_id.add_queries()->set_image_id("high");
  by_id.add_queries()->set_image_id("low");
  v1::SearchCaptionsResponse caption_hits;
  ASSERT_TRUE(stub_->SearchCaptions(Context().get(), by_id, &caption_hits).ok());
  const std::string metrics = HttpGet(server_->metrics_port(), "/metrics");
  ASSERT_NE(metrics.find("200 OK"), std::string::npos) << metrics;
  for (const char* expected :
       {"grpc_server_started_total{grpc_method=\"SearchImages\",grpc_service=\"scanserve.v1.ScanService\",grpc_type=\"unary\"} 2",
        "grpc_server_handled_total{grpc_code=\"InvalidArgument\",grpc_method=\"SearchImages\"",
        "grpc_server_handled_total{grpc_code=\"OK\",grpc_method=\"UpsertImages\"",
        "grpc_server_handling_seconds_bucket{grpc_method=\"SearchImages\"", "scanserve_batch_size_count{direction=\"text_to_image\"} 2",
        "scanserve_queue_depth{direction=\"text_to_image\"} 0",
        "scanserve_queue_depth{direction=\"image_to_text\"} 0",
        "scanserve_batch_size_sum{direction=\"image_to_text\"} 2", "scanserve_queue_wait_seconds_count", "scanserve_images_stored 3",
        "scanserve_feature_bytes{device=\"cpu\"} 96", "scanserve_feature_bytes_committed 96",
        "scanserve_feature_bytes_limit 1073741824", "scanserve_ingest_items_total{code=\"OK\",kind=\"image\"} 3",
        "scanserve_engine_search_seconds_count{direction=\"text_to_image\"}", "scanserve_build_info{version=\"9.9.9\"} 1"}) {
    EXPECT_NE(metrics.find(expected), std::string::npos) << "missing: " << expected;
  }
  EXPECT_NE(HttpGet(server_->metrics_port(), "/healthz").find("200 OK"), std::string::npos);
}

TEST_F(ServerTest, StopDrainsInFlightSearchesAndClosesTheEngine) {
  Start();
  UpsertThreeImages();
  engine_->search_delay_ms = 300;
  auto in_flight = std::async(std::launch::async, [this] {
    v1::SearchImagesResponse response;
    return Search({"slow"}, 1, &response);
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  FakeRetrievalEngine* engine = engine_;
  server_->Stop(std::chrono::system_clock::now() + std::chrono::seconds(5));
  EXPECT_TRUE(in_flight.get().ok()) << "an in-flight search finishes during a graceful stop";
  EXPECT_TRUE(engine->closed.load());
  EXPECT_FALSE(server_->serving());
}

TEST_F(ServerTest, DrainReportsNotServingWhileCallsAreStillServed) {
  Start();
  UpsertThreeImages();
  server_->Drain();
  EXPECT_EQ(Health(""), grpc::health::v1::HealthCheckResponse::NOT_SERVING);
  EXPECT_EQ(Health("scanserve.v1.ScanService"), grpc::health::v1::HealthCheckResponse::NOT_SERVING);
  EXPECT_NE(HttpGet(server_->metrics_port(), "/healthz").find("503"), std::string::npos);
  EXPECT_FALSE(server_->serving());
  // Calls routed here before the balancer saw NOT_SERVING are answered, new connections included.
  v1::SearchImagesResponse response;
  ASSERT_TRUE(Search({"after drain"}, 1, &response).ok());
  EXPECT_EQ(response.results(0).hits(0).id(), "high");
  auto fresh = v1::ScanService::NewStub(grpc::CreateChannel(absl::StrCat("127.0.0.1:", server_->port()),
                                                            grpc::InsecureChannelCredentials()));
  v1::GetStatsResponse stats;
  EXPECT_TRUE(fresh->GetStats(Context().get(), v1::GetStatsRequest(), &stats).ok());
  EXPECT_EQ(stats.images(), 3);
}

TEST_F(ServerTest, APortInUseFailsStart) {
  Start();
  ServerOptions options;
  options.listen_address = absl::StrCat("127.0.0.1:", server_->port());
  options.metrics_address = "";
  absl::StatusOr<std::unique_ptr<Server>> second =
      Server::Create(options, std::make_unique<FakeRetrievalEngine>());
  ASSERT_TRUE(second.ok());
  EXPECT_EQ((*second)->Start().code(), absl::StatusCode::kUnavailable);
}

TEST(ServerCreateTest, RejectsBadOptions) {
  ServerOptions options;
  options.batching.max_queue_size = 0;
  EXPECT_EQ(Server::Create(options, std::make_unique<testing_fake::FakeRetrievalEngine>()).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Server::Create(ServerOptions(), nullptr).status().code(), absl::StatusCode::kInvalidArgument);
  ServerOptions quota;
  quota.grpc_memory_quota_bytes = 2 * quota.max_message_bytes - 1;  // one largest message would not fit
  EXPECT_EQ(Server::Create(quota, std::make_unique<testing_fake::FakeRetrievalEngine>()).status().code(),
            absl::StatusCode::kInvalidArgument);
  quota.grpc_memory_quota_bytes = -1;
  EXPECT_EQ(Server::Create(quota, std::make_unique<testing_fake::FakeRetrievalEngine>()).status().code(),
            absl::StatusCode::kInvalidArgument);
  ServerOptions tls;
  tls.tls.cert_file = "/nonexistent/cert.pem";
  tls.tls.key_file = "/nonexistent/key.pem";
  EXPECT_EQ(Server::Create(tls, std::make_unique<testing_fake::FakeRetrievalEngine>()).status().code(),
            absl::StatusCode::kNotFound);
}

}  // namespace
}  // namespace scanserve
