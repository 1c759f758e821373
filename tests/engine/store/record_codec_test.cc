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

TEST(RecordCodecTest, AnImageWithRegionFeaturesIsVersion2WithTheFlagOnly) {
  std::mt19937 rng(3);
  StoredImage image = SampleImage();
  image.region_features = RandomMatrix(3, 20, rng);
  auto encoded = EncodeImageRecord(image);
  ASSERT_TRUE(encoded.ok()) << encoded.status();
  EXPECT_EQ(static_cast<uint8_t>((*encoded)[0]), kRecordFormatVersion);
  EXPECT_EQ(kRecordFormatVersion, 2);
  EXPECT_EQ(encoded->size(), EncodeImageRecord(SampleImage())->size() + 1) << "the features go apart";
  auto decoded = DecodeImageRecord(image.id, *encoded);
  ASSERT_TRUE(decoded.ok()) << decoded.status();
  EXPECT_TRUE(decoded->has_region_features);
  EXPECT_TRUE(decoded->region_features.data.empty());
  ExpectSameMatrix(decoded->embeddings[1], image.embeddings[1]);
  EXPECT_EQ(decoded->labels, image.labels);

  // Flags this version does not know: a newer scanserve wrote it.
  std::string newer = *encoded;
  newer[newer.size() - 5] = static_cast<char>(0x3);
  uint32_t crc = Crc32c(newer.data(), newer.size() - 4);
  std::memcpy(&newer[newer.size() - 4], &crc, 4);
  EXPECT_EQ(DecodeImageRecord(image.id, newer).status().code(), absl::StatusCode::kFailedPrecondition);
  // A version-1 header on a record with flags: a trailing byte.
  std::string relabelled = *encoded;
  relabelled[0] = 1;
  crc = Crc32c(relabelled.data(), relabelled.size() - 4);
  std::memcpy(&relabelled[relabelled.size() - 4], &crc, 4);
  EXPECT_EQ(DecodeImageRecord(image.id, relabelled).status().code(), absl::StatusCode::kDataLoss);
}

TEST(RecordCodecTest, RegionFeaturesRecordRoundTripsExactly) {
  std::mt19937 rng(6);
  const FloatMatrix features = RandomMatrix(5, 33, rng);
  auto encoded = EncodeRegionFeaturesRecord("img/1", features);
  ASSERT_TRUE(encoded.ok()) << encoded.status();
  auto decoded = DecodeRegionFeaturesRecord("img/1", *encoded);
  ASSERT_TRUE(decoded.ok()) << decoded.status();
  ExpectSameMatrix(*decoded, features);
  // Under another key, flipped, cut short, or an image record read as features: DATA_LOSS.
  EXPECT_EQ(DecodeRegionFeaturesRecord("img/2", *encoded).status().code(), absl::StatusCode::kDataLoss);
  for (size_t i = 0; i < encoded->size(); i += 11) {
    std::string bad = *encoded;
    bad[i] = static_cast<char>(bad[i] ^ 0x21);
    EXPECT_EQ(DecodeRegionFeaturesRecord("img/1", bad).status().code(), absl::StatusCode::kDataLoss) << i;
  }
  std::string cut = encoded->substr(0, encoded->size() - 4 - 8);
  const uint32_t crc = Crc32c(cut.data(), cut.size());
  cut.append(reinterpret_cast<const char*>(&crc), 4);
  EXPECT_EQ(DecodeRegionFeaturesRecord("img/1", cut).status().code(), absl::StatusCode::kDataLoss);
  const StoredImage image = SampleImage();
  EXPECT_EQ(DecodeRegionFeaturesRecord(image.id, *EncodeImageRecord(image)).status().code(),
            absl::StatusCode::kDataLoss);
}

TEST(RecordCodecTest, ChangeRecordRoundTripsAndRefusesDamage) {
  const ItemChange change{.sequence = 0, .is_caption = true, .deleted = true,
                          .unix_micros = 1'790'000'000'123'456, .id = std::string("cap\0/9", 6)};
  auto encoded = EncodeChangeRecord(change);
  ASSERT_TRUE(encoded.ok()) << encoded.status();
  auto decoded = DecodeChangeRecord(42, *encoded);
  ASSERT_TRUE(decoded.ok()) << decoded.status();
  EXPECT_EQ(decoded->sequence, 42u);  // from the key, not the value
  EXPECT_TRUE(decoded->is_caption);
  EXPECT_TRUE(decoded->deleted);
  EXPECT_EQ(decoded->unix_micros, change.unix_micros);
  EXPECT_EQ(decoded->id, change.id);
  for (size_t i = 0; i < encoded->size(); ++i) {
    std::string bad = *encoded;
    bad[i] = static_cast<char>(bad[i] ^ 0x10);
    const absl::Status status = DecodeChangeRecord(42, bad).status();
    EXPECT_EQ(status.code(), absl::StatusCode::kDataLoss) << i;
    EXPECT_NE(status.message().find("#42"), std::string::npos) << status;
  }
  // An operation byte out of range with a valid checksum: still refused.
  std::string odd = encoded->substr(0, encoded->size() - 4);
  odd[3] = 7;
  const uint32_t crc = Crc32c(odd.data(), odd.size());
  odd.append(reinterpret_cast<const char*>(&crc), 4);
  EXPECT_EQ(DecodeChangeRecord(42, odd).status().code(), absl::StatusCode::kDataLoss);
  EXPECT_EQ(DecodeChangeRecord(42, *EncodeCaptionRecord(SampleCaption())).status().code(),
            absl::StatusCode::kDataLoss);
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
