// Decoding and the input blob: formats, EXIF orientation, grey/alpha, the scale rule, and refusals
// of truncated, corrupt and oversized payloads (checked before decoding).
#include "engine/detector/image_preprocess.h"

#include <cmath>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <opencv2/core.hpp>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>

#include "engine/detector/image_probe.h"

namespace scanserve {
namespace {

std::string Encode(const cv::Mat& image, const std::string& ext, std::vector<int> params = {}) {
  std::vector<uchar> buf;
  EXPECT_TRUE(cv::imencode(ext, image, buf, params));
  return std::string(buf.begin(), buf.end());
}

// A deterministic colour test card: gradients so resizing has something to interpolate.
cv::Mat TestCard(int height, int width) {
  cv::Mat m(height, width, CV_8UC3);
  for (int y = 0; y < height; ++y) {
    for (int x = 0; x < width; ++x) {
      m.at<cv::Vec3b>(y, x) = cv::Vec3b((x * 7) % 256, (y * 5) % 256, ((x + y) * 3) % 256);
    }
  }
  return m;
}

// A JPEG with an EXIF APP1 segment (little-endian TIFF, one IFD entry: Orientation).
std::string JpegWithOrientation(const cv::Mat& image, uint16_t orientation) {
  const std::string jpeg = Encode(image, ".jpg", {cv::IMWRITE_JPEG_QUALITY, 95});
  std::string tiff("II*\0\x08\0\0\0", 8);
  tiff += std::string("\x01\0", 2);                            // one entry
  tiff += std::string("\x12\x01\x03\0\x01\0\0\0", 8);           // tag 0x0112, SHORT, count 1
  tiff += std::string(1, static_cast<char>(orientation)) + std::string(3, '\0');
  tiff += std::string(4, '\0');                                 // no next IFD
  const std::string payload = std::string("Exif\0\0", 6) + tiff;
  const size_t length = payload.size() + 2;
  std::string app1 = "\xFF\xE1";
  app1 += static_cast<char>(length >> 8);
  app1 += static_cast<char>(length & 0xFF);
  app1 += payload;
  return jpeg.substr(0, 2) + app1 + jpeg.substr(2);
}

TEST(ImageScaleTest, FollowsTheOriginalRule) {
  EXPECT_DOUBLE_EQ(BottomUpImageScale(480, 640), 1.25);         // 640x480 -> 800x600
  EXPECT_DOUBLE_EQ(BottomUpImageScale(333, 500), 600.0 / 333);  // 500x333 -> 901x600
  EXPECT_DOUBLE_EQ(BottomUpImageScale(600, 1000), 1.0);
  EXPECT_DOUBLE_EQ(BottomUpImageScale(300, 900), 1000.0 / 900);  // 3:1 capped by the long side
  // round(600/400 * 667) = round(1000.5) = 1000 (half to even): not above 1000, so not capped.
  EXPECT_DOUBLE_EQ(BottomUpImageScale(400, 667), 1.5 * 1.0);
  EXPECT_DOUBLE_EQ(BottomUpImageScale(400, 669), 1000.0 / 669);
}

TEST(ImagePreprocessTest, BlobIsMeanSubtractedResizedBgr) {
  const cv::Mat card = TestCard(48, 64);
  absl::StatusOr<DetectorInput> input = PrepareDetectorInput(Encode(card, ".png"), ImageLimits());
  ASSERT_TRUE(input.ok()) << input.status();
  EXPECT_EQ(input->image_height, 48);
  EXPECT_EQ(input->image_width, 64);
  EXPECT_DOUBLE_EQ(input->scale, 12.5);
  EXPECT_EQ(input->height, 600);
  EXPECT_EQ(input->width, 800);
  ASSERT_EQ(input->chw.size(), 3u * 600 * 800);
  // The same pipeline written out with OpenCV calls.
  cv::Mat f;
  card.convertTo(f, CV_32FC3);
  f -= cv::Scalar(kBottomUpPixelMeans[0], kBottomUpPixelMeans[1], kBottomUpPixelMeans[2]);
  cv::Mat resized;
  cv::resize(f, resized, cv::Size(), 12.5, 12.5, cv::INTER_LINEAR);
  const int64_t plane = 600 * 800;
  float max_diff = 0;
  for (int y = 0; y < 600; y += 7) {
    for (int x = 0; x < 800; x += 5) {
      for (int c = 0; c < 3; ++c) {
        max_diff = std::max(max_diff, std::abs(resized.at<cv::Vec3f>(y, x)[c] -
                                               input->chw[c * plane + y * 800 + x]));
      }
    }
  }
  EXPECT_LT(max_diff, 1e-4);
}

TEST(ImagePreprocessTest, GreyAndAlphaBecomeThreeChannelBgr) {
  cv::Mat grey(40, 50, CV_8UC1, cv::Scalar(200));
  absl::StatusOr<DetectorInput> g = PrepareDetectorInput(Encode(grey, ".png"), ImageLimits());
  ASSERT_TRUE(g.ok()) << g.status();
  const int64_t plane = g->height * g->width;
  for (int c = 0; c < 3; ++c) {
    EXPECT_NEAR(g->chw[c * plane + 10], 200 - kBottomUpPixelMeans[c], 1e-3) << c;
  }
  // Alpha is dropped (not composited), as cv2.imread does.
  cv::Mat rgba(40, 50, CV_8UC4, cv::Scalar(10, 20, 30, 0));
  absl::StatusOr<DetectorInput> a = PrepareDetectorInput(Encode(rgba, ".png"), ImageLimits());
  ASSERT_TRUE(a.ok()) << a.status();
  for (int c = 0; c < 3; ++c) {
    EXPECT_NEAR(a->chw[c * plane + 10], (10 * (c + 1)) - kBottomUpPixelMeans[c], 1e-3) << c;
  }
}

TEST(ImagePreprocessTest, WebpDecodes) {
  const std::string webp = Encode(TestCard(30, 40), ".webp", {cv::IMWRITE_WEBP_QUALITY, 101});
  absl::StatusOr<ImageProbe> probe = ProbeImage(webp);
  ASSERT_TRUE(probe.ok()) << probe.status();
  EXPECT_EQ(probe->format, ImageFormat::kWebp);
  EXPECT_EQ(probe->width, 40);
  EXPECT_EQ(probe->height, 30);
  absl::StatusOr<DetectorInput> input = PrepareDetectorInput(webp, ImageLimits());
  ASSERT_TRUE(input.ok()) << input.status();
  EXPECT_EQ(input->image_width, 40);
}

TEST(ImagePreprocessTest, ExifOrientationIsApplied) {
  const cv::Mat card = TestCard(30, 60);
  const std::string upright = JpegWithOrientation(card, 1);
  const std::string rotated = JpegWithOrientation(card, 6);  // "rotate 90 CW to display"
  absl::StatusOr<ImageProbe> probe = ProbeImage(rotated);
  ASSERT_TRUE(probe.ok()) << probe.status();
  EXPECT_EQ(probe->width, 60);  // the header stores the unrotated size
  absl::StatusOr<DetectorInput> a = PrepareDetectorInput(upright, ImageLimits());
  absl::StatusOr<DetectorInput> b = PrepareDetectorInput(rotated, ImageLimits());
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_EQ(a->image_width, 60);
  EXPECT_EQ(a->image_height, 30);
  EXPECT_EQ(b->image_width, 30);
  EXPECT_EQ(b->image_height, 60);
}

TEST(ImageProbeTest, ReadsJpegAndPngSizes) {
  for (const char* ext : {".jpg", ".png"}) {
    absl::StatusOr<ImageProbe> probe = ProbeImage(Encode(TestCard(37, 91), ext));
    ASSERT_TRUE(probe.ok()) << ext << ": " << probe.status();
    EXPECT_EQ(probe->width, 91);
    EXPECT_EQ(probe->height, 37);
  }
}

void ExpectInvalid(const std::string& bytes, const std::string& fragment,
                   const ImageLimits& limits = ImageLimits()) {
  absl::StatusOr<DetectorInput> input = PrepareDetectorInput(bytes, limits);
  ASSERT_FALSE(input.ok());
  EXPECT_EQ(input.status().code(), absl::StatusCode::kInvalidArgument) << input.status();
  EXPECT_NE(input.status().message().find(fragment), std::string_view::npos) << input.status();
}

TEST(ImagePreprocessTest, RefusesEmptyForeignTruncatedAndCorruptPayloads) {
  ExpectInvalid("", "empty");
  ExpectInvalid("hello, this is not an image at all", "not a JPEG, PNG or WebP");
  ExpectInvalid(Encode(TestCard(20, 20), ".bmp"), "not a JPEG, PNG or WebP");
  const std::string jpeg = Encode(TestCard(64, 64), ".jpg");
  ExpectInvalid(jpeg.substr(0, jpeg.size() / 2), "truncated JPEG");
  ExpectInvalid(jpeg.substr(0, 10), "truncated JPEG");
  const std::string png = Encode(TestCard(64, 64), ".png");
  ExpectInvalid(png.substr(0, png.size() - 20), "truncated PNG");
  ExpectInvalid(png.substr(0, 20), "truncated PNG");
  const std::string webp = Encode(TestCard(64, 64), ".webp");
  ExpectInvalid(webp.substr(0, webp.size() - 10), "truncated WebP");
  // Complete framing, garbage inside: OpenCV refuses it.
  std::string corrupt = png;
  for (size_t i = 40; i < corrupt.size() - 20; ++i) corrupt[i] = static_cast<char>(i * 31);
  ExpectInvalid(corrupt, "decode");
}

TEST(ImagePreprocessTest, RefusesHugeImagesFromTheHeaderAlone) {
  // A PNG header declaring 20000 x 20000 followed by an IEND: refused before any decoding.
  std::string png = Encode(TestCard(8, 8), ".png");
  auto put32 = [&](size_t at, uint32_t v) {
    for (int i = 0; i < 4; ++i) png[at + i] = static_cast<char>(v >> (24 - 8 * i));
  };
  put32(16, 20000);
  put32(20, 20000);
  ExpectInvalid(png, "above the limit");
  ImageLimits small;
  small.max_bytes = 100;
  ExpectInvalid(Encode(TestCard(64, 64), ".png"), "bytes is above the limit", small);
}

}  // namespace
}  // namespace scanserve
