#include "engine/detector/region_drift.h"

#include <algorithm>
#include <cmath>

#include "engine/detector/legacy_nms.h"

namespace scanserve {

RegionDrift CompareRegions(const DetectedRegions& reference, const DetectedRegions& other) {
  RegionDrift drift;
  drift.reference_regions = static_cast<int64_t>(reference.boxes.size());
  drift.other_regions = static_cast<int64_t>(other.boxes.size());
  if (drift.reference_regions == 0) return drift;
  double iou_sum = 0, cosine_sum = 0;
  const int64_t dim = reference.features.cols;
  for (int64_t r = 0; r < drift.reference_regions; ++r) {
    int64_t best = -1;
    double best_iou = 0;
    for (int64_t o = 0; o < drift.other_regions; ++o) {
      const double iou = LegacyIou(reference.boxes[r].data(), other.boxes[o].data());
      if (iou > best_iou) {
        best_iou = iou;
        best = o;
      }
    }
    iou_sum += best_iou;
    if (best < 0 || best_iou < RegionDrift::kMatchIoU || other.features.cols != dim) continue;
    const float* a = reference.features.row(r);
    const float* b = other.features.row(best);
    double dot = 0, aa = 0, bb = 0, diff = 0;
    for (int64_t c = 0; c < dim; ++c) {
      dot += static_cast<double>(a[c]) * b[c];
      aa += static_cast<double>(a[c]) * a[c];
      bb += static_cast<double>(b[c]) * b[c];
      diff += (static_cast<double>(a[c]) - b[c]) * (static_cast<double>(a[c]) - b[c]);
    }
    const double cosine = aa > 0 && bb > 0 ? dot / std::sqrt(aa * bb) : (aa == bb ? 1.0 : 0.0);
    ++drift.matched;
    cosine_sum += cosine;
    drift.min_cosine = std::min(drift.min_cosine, cosine);
    drift.max_relative_l2 =
        std::max(drift.max_relative_l2, aa > 0 ? std::sqrt(diff / aa) : (diff > 0 ? 1.0 : 0.0));
  }
  drift.mean_best_iou = iou_sum / static_cast<double>(drift.reference_regions);
  if (drift.matched > 0) drift.mean_cosine = cosine_sum / static_cast<double>(drift.matched);
  return drift;
}

}  // namespace scanserve
