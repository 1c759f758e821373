// RegionDetector: image bytes in, bottom-up-attention regions out (boxes, pool5 features, object
// and attribute labels), selected exactly as the original generate_tsv.py does. The ingest and
// image->text paths of the server call it; scan_extract writes its output as bottom-up TSV.
//
// BottomUpDetector (Load below) is the Caffe ResNet-101 Faster R-CNN of Anderson et al. run in
// LibTorch, from a detector directory written by tools/convert_bottom_up_caffemodel.py
// (docs/detector-format.md). No torch types appear in this header.
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "engine/common/matrix.h"
#include "engine/detector/detector_precision.h"

namespace scanserve {

// One image's selected regions, in the original generate_tsv order.
struct DetectedRegions {
  int64_t image_width = 0;   // the decoded image, before resizing (EXIF orientation applied)
  int64_t image_height = 0;
  float scale = 0;           // resize factor the network saw (boxes are divided by it)
  FloatMatrix features;      // k x 2048: pool5 of each selected proposal
  std::vector<std::array<float, 4>> boxes;  // k: x1, y1, x2, y2 in original pixels
  std::vector<int64_t> object_ids;          // k: 0-based objects_vocab line (argmax of classes 1..1600)
  std::vector<float> object_confs;
  std::vector<int64_t> attribute_ids;       // k: 0-based attributes_vocab line (argmax of 1..400)
  std::vector<float> attribute_confs;
  std::vector<std::string> labels;          // k: "attribute object" (attribute when conf >= 0.1)
};

// The network's intermediate outputs for one image, for parity tests and debugging (scan_extract
// --debug-dir writes them as .npy). R = proposals after the RPN's NMS, in objectness order.
struct DetectorTrace {
  std::array<float, 3> im_info{};  // resized height, resized width, scale
  FloatMatrix input;               // 3 x (H'·W'): the mean-subtracted, resized BGR blob (CHW)
  FloatMatrix rois;                // R x 4: proposals in resized-image pixels
  std::vector<float> roi_scores;   // R: RPN foreground probability
  FloatMatrix cls_prob;            // R x 1601
  FloatMatrix attr_prob;           // R x 401
  FloatMatrix pool5;               // R x 2048
  std::vector<int> keep;           // selected rows of the above, in output order
  std::vector<float> max_conf;     // R: the selection's per-proposal confidence
};

enum class DetectorDevice { kCpu, kCuda };

struct DetectorOptions {
  std::string detector_dir;
  DetectorDevice device = DetectorDevice::kCpu;
  int cuda_device = 0;
  // Regions per image: -1 takes the directory's detector.json (36/36 or 10/100).
  int min_boxes = -1;
  int max_boxes = -1;
  // The class confidence a region needs before the min/max rule, in [0, 1] (else
  // INVALID_ARGUMENT); < 0 takes detector.json's.
  float conf_threshold = -1;
  // Images above this many pixels (width x height, read from the header before decoding) are
  // INVALID_ARGUMENT, as are payloads above max_image_bytes.
  int64_t max_image_pixels = 40'000'000;
  int64_t max_image_bytes = 64LL << 20;
  int num_threads = 0;  // intra-op threads (process-wide in LibTorch); 0 = leave as is
  // fp32 (the default) reproduces the original network; tf32 and bf16 are opt-in speed-ups
  // (detector_precision.h).
  DetectorPrecision precision = DetectorPrecision::kFloat32;
};

struct DetectorInfo {
  std::string summary;  // weights, classes, boxes policy, device
  std::string device;   // "cpu", "cuda:0"
  int min_boxes = 0;
  int max_boxes = 0;
  // "" or what operators should hear at start, e.g. a precision this CPU runs slowly
  // (DetectorPrecisionCaveat).
  std::string warning;
};

class RegionDetector {
 public:
  virtual ~RegionDetector() = default;

  // One encoded image (JPEG, PNG or WebP). INVALID_ARGUMENT when the bytes are empty, not one of
  // those formats, truncated, undecodable, or above the size limits; the message says which.
  // Thread-safe.
  virtual absl::StatusOr<DetectedRegions> Detect(std::string_view image_bytes) const = 0;

  // Several images; the res5 head runs over all their proposals at once (exact: it is per RoI).
  // result[i] answers images[i]; a bad image fails only its own entry. Thread-safe.
  // With `traces`, traces[i] receives images[i]'s intermediates (resized to images.size()).
  virtual std::vector<absl::StatusOr<DetectedRegions>> DetectBatch(
      absl::Span<const std::string_view> images,
      std::vector<DetectorTrace>* traces = nullptr) const = 0;

  virtual DetectorInfo Info() const = 0;

  // Runs the network once on a synthetic image, so that the first real request does not pay for
  // convolution algorithm selection and allocator growth. The server calls it before it serves.
  virtual absl::Status WarmUp() const { return absl::OkStatus(); }
};

// Loads a detector directory: NOT_FOUND for a missing directory or file, INVALID_ARGUMENT for a
// wrong format, a tensor of the wrong shape or a vocabulary of the wrong length (naming it),
// FAILED_PRECONDITION for kCuda in a build or machine without CUDA.
absl::StatusOr<std::unique_ptr<RegionDetector>> LoadBottomUpDetector(const DetectorOptions& options);

}  // namespace scanserve
