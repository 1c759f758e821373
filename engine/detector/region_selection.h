// generate_tsv.py's choice of regions (spec §2.10): per foreground class, legacy NMS at 0.3 over
// the proposals scored by that class; a proposal's confidence is its best score among the classes
// where it survived; keep those >= the threshold, else/then the top min/max by confidence.
// Exact and fast: the proposal boxes are the same for every class, so their "suppresses" relation
// is computed once (OverlapBitsets) and each class costs one sort and a bitset-greedy pass.
#pragma once

#include <vector>

namespace scanserve {

// A usable conf_threshold: a confidence, in [0, 1] (NaN is not). Every front end that takes one
// (detector.json, scanserve's flag, scan_extract's) and the detector loader apply this rule.
inline bool IsConfidenceThreshold(double threshold) { return threshold >= 0 && threshold <= 1; }

struct RegionSelectionConfig {
  // max_conf >= threshold keeps a region. A float32 confidence compares the same with 0.2f as with
  // the original's double 0.2 (no float lies strictly between them).
  float conf_threshold = 0.2f;
  int min_boxes = 36;           // 10 for the "final" model, 36 for iter_320000
  int max_boxes = 36;           // 100 / 36
  double nms_threshold = 0.3;   // cfg.TEST.NMS
};

struct RegionSelection {
  std::vector<int> keep;        // selected proposal indices, in output order
  std::vector<float> max_conf;  // num_rois entries: each proposal's confidence (0 when none)
};

// boxes: num_rois x 4 (x1, y1, x2, y2, original-image pixels, float32), the unregressed
// proposals. cls_prob: num_rois x num_classes, row-major; class 0 (background) is skipped.
// Selection: keep = {i : max_conf[i] >= threshold} ascending; if that has fewer than min_boxes,
// the top min_boxes by max_conf instead (all of them when num_rois < min_boxes); if more than
// max_boxes, the top max_boxes. "Top" is max_conf descending, ties higher index first (the
// ORDER RULE of legacy_nms.h).
RegionSelection SelectRegions(const float* boxes, const float* cls_prob, int num_rois,
                              int num_classes, const RegionSelectionConfig& config);

}  // namespace scanserve
