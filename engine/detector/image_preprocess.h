// The detector's input blob, made exactly as the original test.py `_get_image_blob`: OpenCV decode
// to BGR (EXIF orientation applied, grey expanded to 3 channels, alpha dropped), float32 pixels
// minus the Caffe means (subtracted in double, rounded to float), shortest side scaled to 600
// unless that makes the longest exceed 1000 (then longest = 1000), OpenCV bilinear resize.
#pragma once

#include <cstdint>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace scanserve {

inline constexpr double kBottomUpPixelMeans[3] = {102.9801, 115.9465, 122.7717};  // B, G, R
inline constexpr int kBottomUpTargetSize = 600;
inline constexpr int kBottomUpMaxSize = 1000;

struct ImageLimits {
  int64_t max_bytes = 64LL << 20;
  int64_t max_pixels = 40'000'000;  // width x height as the header declares it
};

struct DetectorInput {
  int64_t image_height = 0;  // decoded (after EXIF orientation), before resizing
  int64_t image_width = 0;
  int64_t height = 0;        // resized: round(image_height * scale)
  int64_t width = 0;
  double scale = 0;          // the resize factor (double, as the original passes it to cv2.resize)
  std::vector<float> chw;    // 3 x height x width, BGR minus the means
};

// The original's scale rule for an image of that size.
double BottomUpImageScale(int64_t height, int64_t width);

// INVALID_ARGUMENT (saying why) for bytes over limits.max_bytes, anything ProbeImage refuses,
// images over limits.max_pixels, and payloads OpenCV cannot decode.
absl::StatusOr<DetectorInput> PrepareDetectorInput(std::string_view image_bytes,
                                                   const ImageLimits& limits);

}  // namespace scanserve
