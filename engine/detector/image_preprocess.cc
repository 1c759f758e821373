#include "engine/detector/image_preprocess.h"

#include <algorithm>
#include <cmath>

#ifndef SCANSERVE_WITHOUT_OPENCV
#include <opencv2/core.hpp>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>
#endif

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "engine/detector/image_probe.h"

namespace scanserve {

double BottomUpImageScale(int64_t height, int64_t width) {
  const double size_min = static_cast<double>(std::min(height, width));
  const double size_max = static_cast<double>(std::max(height, width));
  double scale = kBottomUpTargetSize / size_min;
  // np.round rounds half to even, as nearbyint does in the default rounding mode.
  if (std::nearbyint(scale * size_max) > kBottomUpMaxSize) scale = kBottomUpMaxSize / size_max;
  return scale;
}

absl::StatusOr<DetectorInput> PrepareDetectorInput(std::string_view image_bytes,
                                                   const ImageLimits& limits) {
  if (static_cast<int64_t>(image_bytes.size()) > limits.max_bytes) {
    return absl::InvalidArgumentError(absl::StrCat("image payload of ", image_bytes.size(),
                                                   " bytes is above the limit of ", limits.max_bytes));
  }
  absl::StatusOr<ImageProbe> probe = ProbeImage(image_bytes);
  if (!probe.ok()) return probe.status();
  if (probe->width * probe->height > limits.max_pixels) {
    return absl::InvalidArgumentError(absl::StrCat(
        ToString(probe->format), " image of ", probe->width, "x", probe->height, " = ",
        probe->width * probe->height, " pixels is above the limit of ", limits.max_pixels));
  }

#ifdef SCANSERVE_WITHOUT_OPENCV
  return absl::FailedPreconditionError(
      "this build of scanserve has no OpenCV: it cannot decode images (rebuild with libopencv-dev)");
#else
  cv::Mat bgr;
  try {
    const cv::Mat encoded(1, static_cast<int>(image_bytes.size()), CV_8UC1,
                          const_cast<char*>(image_bytes.data()));
    bgr = cv::imdecode(encoded, cv::IMREAD_COLOR);
  } catch (const cv::Exception& e) {
    return absl::InvalidArgumentError(
        absl::StrCat("could not decode the ", ToString(probe->format), " image: ", e.what()));
  }
  if (bgr.empty() || bgr.type() != CV_8UC3) {
    return absl::InvalidArgumentError(
        absl::StrCat("could not decode the ", ToString(probe->format), " image (corrupt data)"));
  }

  DetectorInput input;
  input.image_height = bgr.rows;
  input.image_width = bgr.cols;
  input.scale = BottomUpImageScale(bgr.rows, bgr.cols);

  // float32(pixel - mean) with the subtraction in double, as numpy's in-place `im -= PIXEL_MEANS`.
  cv::Mat centered(bgr.rows, bgr.cols, CV_32FC3);
  for (int y = 0; y < bgr.rows; ++y) {
    const uint8_t* src = bgr.ptr<uint8_t>(y);
    float* dst = centered.ptr<float>(y);
    for (int x = 0; x < bgr.cols * 3; x += 3) {
      for (int c = 0; c < 3; ++c) {
        dst[x + c] = static_cast<float>(static_cast<double>(src[x + c]) - kBottomUpPixelMeans[c]);
      }
    }
  }
  cv::Mat resized;
  try {
    cv::resize(centered, resized, cv::Size(), input.scale, input.scale, cv::INTER_LINEAR);
  } catch (const cv::Exception& e) {
    return absl::InvalidArgumentError(absl::StrCat("could not resize the image: ", e.what()));
  }
  input.height = resized.rows;
  input.width = resized.cols;
  const int64_t plane = input.height * input.width;
  input.chw.resize(static_cast<size_t>(3 * plane));
  for (int y = 0; y < resized.rows; ++y) {
    const float* src = resized.ptr<float>(y);
    for (int x = 0; x < resized.cols; ++x) {
      for (int c = 0; c < 3; ++c) input.chw[c * plane + y * input.width + x] = src[3 * x + c];
    }
  }
  return input;
#endif
}

}  // namespace scanserve
