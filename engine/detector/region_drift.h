// How far one detection of an image is from another of the same image: a reduced-precision run
// (DetectorPrecision) against fp32, the numbers scan_extract --compare-precision reports.
#pragma once

#include <cstdint>

#include "engine/detector/region_detector.h"

namespace scanserve {

struct RegionDrift {
  int64_t reference_regions = 0;
  int64_t other_regions = 0;
  // Every reference region has a box in `other` with IoU >= kMatchIoU (its best match).
  static constexpr float kMatchIoU = 0.9f;
  int64_t matched = 0;
  double mean_best_iou = 0;  // over the reference regions, of each one's best match
  // Over the matched pairs: the cosine of their pool5 features, and |a - b| / |a|.
  double mean_cosine = 0;
  double min_cosine = 1;
  double max_relative_l2 = 0;
};

// Each reference region is matched to the other detection's region of highest box IoU (the
// detector's own, LegacyIou: Caffe's inclusive pixel convention).
RegionDrift CompareRegions(const DetectedRegions& reference, const DetectedRegions& other);

}  // namespace scanserve
