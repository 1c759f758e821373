// The record encoding and its checksum, independent of any storage engine.
#include "engine/store/record_codec.h"

#include <gtest/gtest.h>

#include <cstring>
#include <random>
#include <string>

#include "engine/store/crc32c.h"

namespace scanserve {
namespace {

FloatMatrix RandomMatrix(int64_t rows, int64_t cols, std::mt19937& rng) {
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  FloatMatrix m(rows, cols);
  for (float& v : m.data) v = dist(rng);
  return m;
}

StoredImage SampleImage() {
  std::mt19937 rng(1);
  StoredImage image;
  image.id = std::string("img\0/1", 6);  // ids are bytes: NUL and '/' included
  image.collection = "coco";
  image.metadata = {{"split", "val"}, {"source", "flickr"}};
  image.num_regions = 3;
  image.boxes = {{{0, 1, 2, 3}}, {{4, 5, 6, 7}}, {{8.5f, 9, 10, 11}}};
  image.labels = {"red car", "tree", ""};
  image.embeddings = {RandomMatrix(3, 8, rng), RandomMatrix(3, 5, rng)};
  return image;
}

StoredCaption SampleCaption() {
  std::mt19937 rng(2);
  StoredCaption caption;
  caption.id = "cap-1";
  caption.metadata = {{"lang", "en"}};
  caption.text = "A dog runs on the grass.";
  caption.token_ids = {{1, 4, 5, 6, 2}, {1, 7, 2}};
  caption.embeddings = {RandomMatrix(5, 8, rng), RandomMatrix(3, 5, rng)};
  return caption;
}

void ExpectSameMatrix(const FloatMatrix& a, const FloatMatrix& b) {
  EXPECT_EQ(a.rows, b.rows);
  EXPECT_EQ(a.cols, b.cols);
  EXPECT_EQ(a.data, b.data);  // bit-exact: fp32 is copied, not converted
}

TEST(Crc32cTest, KnownVectorsAndPathsAgree) {
  EXPECT_EQ(Crc32c("123456789", 9), 0xE3069283u);
  EXPECT_EQ(internal::Crc32cPortable("123456789", 9, 0), 0xE3069283u);
  EXPECT_EQ(Crc32c("", 0), 0u);
  std::string zeros(32, '\0');
  EXPECT_EQ(Crc32c(zeros.data(), zeros.size()), 0x8A9136AAu);  // RFC 3720 B.4
  std::mt19937 rng(5);
  std::string data(1000, '\0');
  for (char& c : data) c = static_cast<char>(rng());
  for (size_t n : {0u, 1u, 7u, 8u, 9u, 63u, 1000u}) {
    EXPECT_EQ(Crc32c(data.data(), n), internal::Crc32cPortable(data.data(), n, 0)) << n;
  }
  // Continuation equals one pass.
  EXPECT_EQ(Crc32c(data.data() + 300, 700, Crc32c(data.data(), 300)), Crc32c(data.data(), 1000));
}

TEST(RecordCodecTest, ImageRoundTripIsExact) {
  const StoredImage image = SampleImage();
  auto encoded = EncodeImageRecord(image);
  ASSERT_TRUE(encoded.ok()) << encoded.status();
  // Without region features the record keeps the first layout, which older releases read.
  EXPECT_EQ(static_cast<uint8_t>((*encoded)[0]), 1);
  auto decoded = DecodeImageRecord(image.id, *encoded);
  ASSERT_TRUE(decoded.ok()) << decoded.status();
  EXPECT_EQ(decoded->id, image.id);
  EXPECT_EQ(decoded->collection, image.collection);
  EXPECT_EQ(decoded->metadata, image.metadata);
  EXPECT_EQ(decoded->num_regions, 3);
  EXPECT_EQ(decoded->boxes, image.boxes);
  EXPECT_EQ(decoded->labels, image.labels);
  ASSERT_EQ(decoded->embeddings.size(), 2u);
  ExpectSameMatrix(decoded->embeddings[0], image.embeddings[0]);
  ExpectSameMatrix(decoded->embeddings[1], image.embeddings[1]);
  EXPECT_TRUE(decoded->region_features.data.empty());
}

TEST(RecordCodecTest, ImageWithRegionFeaturesRoundTripsExactlyInVersion2) {
  std::mt19937 rng(3);
  StoredImage image = SampleImage();
  image.region_features = RandomMatrix(3, 20, rng);
  auto encoded = EncodeImageRecord(image);
  ASSERT_TRUE(encoded.ok()) << encoded.status();
  EXPECT_EQ(static_cast<uint8_t>((*encoded)[0]), kRecordFormatVersion);
  EXPECT_EQ(kRecordFormatVersion, 2);
  auto decoded = DecodeImageRecord(image.id, *encoded);
  ASSERT_TRUE(decoded.ok()) << decoded.status();
  ExpectSameMatrix(decoded->region_features, image.region_features);
  ASSERT_EQ(decoded->embeddings.size(), 2u);
  ExpectSameMatrix(decoded->embeddings[1], image.embeddings[1]);
  EXPECT_EQ(decoded->labels, image.labels);

  // Cut anywhere inside the features (checksum recomputed): DATA_LOSS, never a short matrix.
  const std::string whole = *encoded;
  for (size_t cut : {size_t{4}, size_t{100}, size_t{3 * 20 * 4}}) {
    std::string bad = whole.substr(0, whole.size() - 4 - cut);
    const uint32_t crc = Crc32c(bad.data(), bad.size());
    bad.append(reinterpret_cast<const char*>(&crc), 4);
    EXPECT_EQ(DecodeImageRecord(image.id, bad).status().code(), absl::StatusCode::kDataLoss) << cut;
  }
  // A version-1 header on a record that holds features: the features are trailing bytes.
  std::string relabelled = whole;
  relabelled[0] = 1;
  const uint32_t crc = Crc32c(relabelled.data(), relabelled.size() - 4);
  std::memcpy(&relabelled[relabelled.size() - 4], &crc, 4);
  EXPECT_EQ(DecodeImageRecord(image.id, relabelled).status().code(), absl::StatusCode::kDataLoss);
}

TEST(RecordCodecTest, RegionFeaturesMustHaveOneRowPerRegion) {
  std::mt19937 rng(4);
  StoredImage image = SampleImage();
  image.region_features = RandomMatrix(2, 20, rng);  // the image has 3 regions
  EXPECT_EQ(EncodeImageRecord(image).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(RecordCodecTest, CaptionsKeepTheFirstLayout) {
  auto encoded = EncodeCaptionRecord(SampleCaption());
  ASSERT_TRUE(encoded.ok()) << encoded.status();
  EXPECT_EQ(static_cast<uint8_t>((*encoded)[0]), 1);
}

TEST(RecordCodecTest, CaptionRoundTripIsExact) {
  const StoredCaption caption = SampleCaption();
  auto encoded = EncodeCaptionRecord(caption);
  ASSERT_TRUE(encoded.ok()) << encoded.status();
  auto decoded = DecodeCaptionRecord(caption.id, *encoded);
  ASSERT_TRUE(decoded.ok()) << decoded.status();
  EXPECT_EQ(decoded->id, caption.id);
  EXPECT_EQ(decoded->collection, "");
  EXPECT_EQ(decoded->metadata, caption.metadata);
  EXPECT_EQ(decoded->text, caption.text);
  EXPECT_EQ(decoded->token_ids, caption.token_ids);
  ASSERT_EQ(decoded->embeddings.size(), 2u);
  ExpectSameMatrix(decoded->embeddings[1], caption.embeddings[1]);
}

TEST(RecordCodecTest, EveryFlippedByteIsDataLossNamingTheId) {
  const std::string encoded = *EncodeImageRecord(SampleImage());
  const std::string key = SampleImage().id;
  for (size_t i = 0; i < encoded.size(); i += 7) {
    std::string bad = encoded;
    bad[i] = static_cast<char>(bad[i] ^ 0x5A);
    auto decoded = DecodeImageRecord(key, bad);
    ASSERT_FALSE(decoded.ok()) << "byte " << i;
    EXPECT_EQ(decoded.status().code(), absl::StatusCode::kDataLoss) << decoded.status();
    EXPECT_NE(decoded.status().message().find("img\\000/1"), std::string::npos) << decoded.status();
  }
}

TEST(RecordCodecTest, TruncatedEmptyAndWrongKindAreDataLoss) {
  const std::string encoded = *EncodeCaptionRecord(SampleCaption());
  for (size_t n : {size_t{0}, size_t{3}, encoded.size() / 2, encoded.size() - 1}) {
    auto decoded = DecodeCaptionRecord("cap-1", encoded.substr(0, n));
    EXPECT_EQ(decoded.status().code(), absl::StatusCode::kDataLoss) << n;
  }
  // A valid caption record read as an image.
  auto as_image = DecodeImageRecord("cap-1", encoded);
  EXPECT_EQ(as_image.status().code(), absl::StatusCode::kDataLoss);
  // A valid record under another key.
  auto moved = DecodeCaptionRecord("cap-2", encoded);
  EXPECT_EQ(moved.status().code(), absl::StatusCode::kDataLoss);
}

TEST(RecordCodecTest, CorruptLengthWithValidChecksumDoesNotAllocate) {
  // A hostile record: a huge count, with the checksum recomputed so only the bounds check stops it.
  std::string encoded = *EncodeImageRecord(SampleImage());
  const uint32_t huge = 0xFFFFFFF0u;
  std::memcpy(&encoded[2], &huge, 4);  // the id's length
  const uint32_t crc = Crc32c(encoded.data(), encoded.size() - 4);
  std::memcpy(&encoded[encoded.size() - 4], &crc, 4);
  auto decoded = DecodeImageRecord(SampleImage().id, encoded);
  EXPECT_EQ(decoded.status().code(), absl::StatusCode::kDataLoss) << decoded.status();
}

TEST(RecordCodecTest, NewerVersionIsFailedPrecondition) {
  std::string encoded = *EncodeImageRecord(SampleImage());
  encoded[0] = static_cast<char>(kRecordFormatVersion + 1);
  const uint32_t crc = Crc32c(encoded.data(), encoded.size() - 4);
  std::memcpy(&encoded[encoded.size() - 4], &crc, 4);
  auto decoded = DecodeImageRecord(SampleImage().id, encoded);
  EXPECT_EQ(decoded.status().code(), absl::StatusCode::kFailedPrecondition) << decoded.status();
}

TEST(RecordCodecTest, InconsistentMatrixIsInvalidArgument) {
  StoredImage image = SampleImage();
  image.embeddings[0].data.pop_back();
  EXPECT_EQ(EncodeImageRecord(image).status().code(), absl::StatusCode::kInvalidArgument);
  StoredCaption caption = SampleCaption();
  caption.token_ids.pop_back();
  EXPECT_EQ(EncodeCaptionRecord(caption).status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace scanserve
