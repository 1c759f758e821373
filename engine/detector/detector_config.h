// detector.json of a detector directory (docs/detector-format.md): the class counts and the box
// policy the weights were released with.
#pragma once

#include <string>

#include "absl/status/statusor.h"

namespace scanserve {

struct BottomUpDetectorConfig {
  int num_classes = 1601;    // background + 1600 Visual Genome objects
  int num_attributes = 401;  // none + 400 attributes
  int min_boxes = 36;
  int max_boxes = 36;
  float conf_threshold = 0.2f;  // unless DetectorOptions::conf_threshold says otherwise
  std::string source;        // what it was converted from, for logs

  // NOT_FOUND without the file; INVALID_ARGUMENT for a wrong format tag or version, class counts
  // other than 1601/401, or a box policy outside 1 <= min_boxes <= max_boxes <= 300.
  static absl::StatusOr<BottomUpDetectorConfig> Load(const std::string& detector_dir);
};

}  // namespace scanserve
