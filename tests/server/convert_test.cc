// Proto <-> engine conversions: feature bytes are size- and value-checked, optional per-region
// fields must match the region count, and results map field by field.
#include "server/convert.h"

#include <cmath>
#include <limits>

#include <gtest/gtest.h>

namespace scanserve {
namespace {

v1::RegionFeatures Features(int rows, int dim, const std::vector<float>& values) {
  v1::RegionFeatures features;
  features.set_num_regions(rows);
  features.set_dim(dim);
  features.set_values(std::string(reinterpret_cast<const char*>(values.data()), values.size() * sizeof(float)));
  return features;
}

TEST(ConvertTest, RegionFeaturesRoundTrip) {
  const std::vector<float> values = {1, 2, 3, 4, 5, 6};
  absl::StatusOr<FloatMatrix> matrix = RegionFeaturesFromProto(Features(2, 3, values));
  ASSERT_TRUE(matrix.ok()) << matrix.status();
  EXPECT_EQ(matrix->rows, 2);
  EXPECT_EQ(matrix->cols, 3);
  EXPECT_EQ(matrix->data, values);
  v1::RegionFeatures back;
  RegionFeaturesToProto(*matrix, &back);
  EXPECT_EQ(back.values(), Features(2, 3, values).values());
}

TEST(ConvertTest, RegionFeaturesWithTheWrongByteCountAreInvalid) {
  v1::RegionFeatures features = Features(2, 3, {1, 2, 3, 4, 5});
  absl::StatusOr<FloatMatrix> matrix = RegionFeaturesFromProto(features);
  EXPECT_EQ(matrix.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(matrix.status().message().find("20 bytes"), absl::string_view::npos) << matrix.status();
  EXPECT_NE(matrix.status().message().find("24 bytes"), absl::string_view::npos) << matrix.status();
  features.mutable_values()->push_back('x');  // not a multiple of 4
  EXPECT_EQ(RegionFeaturesFromProto(features).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(ConvertTest, RegionFeaturesNeedPositiveShapeAndFiniteValues) {
  EXPECT_EQ(RegionFeaturesFromProto(Features(0, 3, {})).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(RegionFeaturesFromProto(Features(1, 0, {})).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(RegionFeaturesFromProto(Features(-1, -3, {1, 2, 3})).status().code(), absl::StatusCode::kInvalidArgument);
  const float nan = std::numeric_limits<float>::quiet_NaN();
  EXPECT_EQ(RegionFeaturesFromProto(Features(1, 2, {1, nan})).status().code(), absl::StatusCode::kInvalidArgument);
  const float inf = std::numeric_limits<float>::infinity();
  EXPECT_EQ(RegionFeaturesFromProto(Features(1, 2, {inf, 1})).status().code(), absl::StatusCode::kInvalidArgument);
  // Large shapes must not overflow the size check.
  EXPECT_EQ(RegionFeaturesFromProto(Features(1 << 30, 1 << 30, {1})).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(ConvertTest, ImageItems) {
  v1::Image image;
  image.set_id("img");
  image.set_collection("c");
  (*image.mutable_metadata())["k"] = "v";
  *image.mutable_region_features() = Features(2, 2, {1, 2, 3, 4});
  absl::StatusOr<ImageItem> item = ImageItemFromProto(image);
  ASSERT_TRUE(item.ok()) << item.status();
  EXPECT_EQ(item->id, "img");
  EXPECT_EQ(item->collection, "c");
  EXPECT_EQ(item->metadata.at("k"), "v");
  EXPECT_TRUE(item->boxes.empty());

  image.add_boxes()->set_x2(5);
  EXPECT_EQ(ImageItemFromProto(image).status().code(), absl::StatusCode::kInvalidArgument) << "1 box for 2 regions";
  image.add_boxes()->set_y2(7);
  image.add_labels("red car");
  EXPECT_EQ(ImageItemFromProto(image).status().code(), absl::StatusCode::kInvalidArgument) << "1 label for 2 regions";
  image.add_labels("tree");
  item = ImageItemFromProto(image);
  ASSERT_TRUE(item.ok()) << item.status();
  ASSERT_EQ(item->boxes.size(), 2u);
  EXPECT_EQ(item->boxes[0].x2, 5);
  EXPECT_EQ(item->boxes[1].y2, 7);
  EXPECT_EQ(item->labels[0], "red car");

  v1::Image bytes;
  bytes.set_id("jpeg");
  bytes.set_image_bytes("\xff\xd8");
  EXPECT_EQ(ImageItemFromProto(bytes).status().code(), absl::StatusCode::kFailedPrecondition);
  v1::Image empty;
  empty.set_id("nothing");
  EXPECT_EQ(ImageItemFromProto(empty).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(ConvertTest, SearchRequests) {
  v1::SearchImagesRequest request;
  EXPECT_EQ(QueriesFromProto(request).status().code(), absl::StatusCode::kInvalidArgument) << "no queries";
  for (int i = 0; i < kMaxQueriesPerRequest + 1; ++i) request.add_queries("q");
  EXPECT_EQ(QueriesFromProto(request).status().code(), absl::StatusCode::kInvalidArgument) << "65 queries";
  request.mutable_queries()->RemoveLast();
  EXPECT_TRUE(QueriesFromProto(request).ok());
  EXPECT_EQ(SearchParamsFromProto(request).top_k, kDefaultTopK) << "top_k 0 means the default";
  request.set_top_k(-3);
  EXPECT_EQ(SearchParamsFromProto(request).top_k, -3) << "passed through for the engine to reject";
  request.set_explain(true);
  request.mutable_filter()->set_collection("c");
  (*request.mutable_filter()->mutable_metadata())["a"] = "b";
  const SearchParams params = SearchParamsFromProto(request);
  EXPECT_TRUE(params.explain);
  EXPECT_EQ(params.filter.collection, "c");
  EXPECT_EQ(params.filter.metadata.at("a"), "b");

  v1::SearchCaptionsRequest captions;
  captions.add_queries()->set_image_id("img");
  *captions.add_queries()->mutable_region_features() = Features(1, 2, {1, 2});
  absl::StatusOr<std::vector<ImageQuery>> queries = ImageQueriesFromProto(captions);
  ASSERT_TRUE(queries.ok()) << queries.status();
  EXPECT_EQ((*queries)[0].stored_id, "img");
  EXPECT_EQ((*queries)[1].region_features.cols, 2);
  captions.add_queries()->set_image_bytes("png");
  EXPECT_EQ(ImageQueriesFromProto(captions).status().code(), absl::StatusCode::kFailedPrecondition);
  captions.mutable_queries()->RemoveLast();
  captions.add_queries();
  EXPECT_EQ(ImageQueriesFromProto(captions).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(ConvertTest, Responses) {
  ImageHit hit;
  hit.id = "img";
  hit.score = 0.5f;
  hit.metadata["k"] = "v";
  WordExplanation word;
  word.word = "dog";
  word.region = 3;
  word.attention = 0.25f;
  word.box = Box{1, 2, 3, 4};
  word.label = "brown dog";
  hit.explanation.push_back(word);
  v1::ImageHits hits;
  ImageHitsToProto({hit}, &hits);
  ASSERT_EQ(hits.hits_size(), 1);
  EXPECT_EQ(hits.hits(0).id(), "img");
  EXPECT_FLOAT_EQ(hits.hits(0).score(), 0.5f);
  EXPECT_EQ(hits.hits(0).metadata().at("k"), "v");
  ASSERT_EQ(hits.hits(0).explanation_size(), 1);
  EXPECT_EQ(hits.hits(0).explanation(0).word(), "dog");
  EXPECT_EQ(hits.hits(0).explanation(0).region(), 3);
  EXPECT_TRUE(hits.hits(0).explanation(0).has_box());
  EXPECT_EQ(hits.hits(0).explanation(0).box().y2(), 4);
  EXPECT_EQ(hits.hits(0).explanation(0).label(), "brown dog");

  v1::ItemStatus status;
  ItemResultToProto({"x", absl::NotFoundError("gone")}, &status);
  EXPECT_EQ(status.id(), "x");
  EXPECT_EQ(status.code(), 5);
  EXPECT_EQ(status.message(), "gone");

  EngineStats stats;
  stats.images = 2;
  stats.model_summaries = {"t2i"};
  stats.backend = "cpu";
  stats.encoder_device = "cuda:0";
  stats.feature_bytes_limit = 1 << 30;
  stats.feature_bytes_committed = 12345;
  stats.synthetic_images = 7;
  stats.synthetic_captions = 3;
  stats.store_disk_free_bytes = 5'000'000'000;
  v1::GetStatsResponse response;
  StatsToProto(stats, {"/m1"}, "1.2.3", nullptr, &response);
  EXPECT_EQ(response.images(), 2);
  EXPECT_EQ(response.encoder_device(), "cuda:0");
  EXPECT_EQ(response.feature_bytes_limit(), 1 << 30);
  EXPECT_EQ(response.feature_bytes_committed(), 12345);
  EXPECT_EQ(response.synthetic_images(), 7);
  EXPECT_EQ(response.synthetic_captions(), 3);
  EXPECT_EQ(response.store_disk_free_bytes(), 5'000'000'000);
  ASSERT_EQ(response.models_size(), 1);
  EXPECT_EQ(response.models(0).model_dir(), "/m1");
  EXPECT_EQ(response.models(0).summary(), "t2i");
  EXPECT_EQ(response.version(), "1.2.3");
  EXPECT_FALSE(response.detector_loaded());
  EXPECT_EQ(response.detector(), "");

  DetectorInfo detector;
  detector.summary = "bottom-up R101, 36 boxes, cpu";
  v1::GetStatsResponse with_detector;
  StatsToProto(stats, {"/m1"}, "1.2.3", &detector, &with_detector);
  EXPECT_TRUE(with_detector.detector_loaded());
  EXPECT_EQ(with_detector.detector(), "bottom-up R101, 36 boxes, cpu");
}

DetectedRegions TwoRegions() {
  DetectedRegions regions;
  regions.features = FloatMatrix(2, 3);
  regions.features.at(1, 2) = 7;
  regions.boxes = {{1, 2, 3, 4}, {5, 6, 7, 8}};
  regions.labels = {"red car", "tree"};
  return regions;
}

TEST(ConvertTest, DetectedImagesBecomeItemsWithBoxesAndLabels) {
  v1::Image image;
  image.set_id("photo");
  image.set_collection("c");
  (*image.mutable_metadata())["k"] = "v";
  image.set_image_bytes("\xff\xd8\xff");
  EXPECT_TRUE(CheckImageForDetection(image).ok());
  absl::StatusOr<ImageItem> item = ImageItemFromDetection(image, TwoRegions());
  ASSERT_TRUE(item.ok()) << item.status();
  EXPECT_EQ(item->id, "photo");
  EXPECT_EQ(item->collection, "c");
  EXPECT_EQ(item->metadata.at("k"), "v");
  EXPECT_EQ(item->region_features.rows, 2);
  EXPECT_EQ(item->region_features.at(1, 2), 7);
  ASSERT_EQ(item->boxes.size(), 2u);
  EXPECT_EQ(item->boxes[1].x1, 5);
  EXPECT_EQ(item->boxes[1].y2, 8);
  EXPECT_EQ(item->labels, (std::vector<std::string>{"red car", "tree"}));

  absl::StatusOr<ImageItem> failed =
      ImageItemFromDetection(image, absl::InvalidArgumentError("truncated JPEG"));
  EXPECT_EQ(failed.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(failed.status().message().find("photo"), absl::string_view::npos) << failed.status();
  EXPECT_NE(failed.status().message().find("truncated JPEG"), absl::string_view::npos) << "the detector's message is kept";
  EXPECT_EQ(ImageItemFromDetection(image, DetectedRegions()).status().code(), absl::StatusCode::kInvalidArgument)
      << "no regions";

  v1::Image with_boxes = image;
  with_boxes.add_boxes()->set_x2(1);
  EXPECT_EQ(CheckImageForDetection(with_boxes).code(), absl::StatusCode::kInvalidArgument);
  v1::Image no_id = image;
  no_id.clear_id();
  EXPECT_EQ(CheckImageForDetection(no_id).code(), absl::StatusCode::kInvalidArgument);
}

TEST(ConvertTest, ImageBytesQueriesTakeTheirDetections) {
  v1::SearchCaptionsRequest request;
  request.add_queries()->set_image_bytes("one");
  request.add_queries()->set_image_id("stored");
  request.add_queries()->set_image_bytes("two");
  EXPECT_TRUE(CheckImageQueryCount(request).ok());
  const std::vector<std::string_view> bytes = ImageBytesOf(request);
  ASSERT_EQ(bytes.size(), 2u);
  EXPECT_EQ(bytes[0], "one");
  EXPECT_EQ(bytes[1], "two");

  EXPECT_EQ(ImageQueriesFromProto(request).status().code(), absl::StatusCode::kFailedPrecondition)
      << "no detector";
  std::vector<absl::StatusOr<DetectedRegions>> detections = {TwoRegions(), TwoRegions()};
  absl::StatusOr<std::vector<ImageQuery>> queries = ImageQueriesFromProto(request, &detections);
  ASSERT_TRUE(queries.ok()) << queries.status();
  ASSERT_EQ(queries->size(), 3u);
  EXPECT_EQ((*queries)[0].region_features.rows, 2);
  EXPECT_EQ((*queries)[1].stored_id, "stored");
  EXPECT_EQ((*queries)[2].region_features.at(1, 2), 7);

  std::vector<absl::StatusOr<DetectedRegions>> one_bad = {TwoRegions(), absl::InvalidArgumentError("not an image")};
  queries = ImageQueriesFromProto(request, &one_bad);
  EXPECT_EQ(queries.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(queries.status().message().find("queries[2]"), absl::string_view::npos) << queries.status();
}

}  // namespace
}  // namespace scanserve
