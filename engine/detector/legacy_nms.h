// Greedy NMS with the semantics of the original Faster R-CNN cpu_nms (spec §2.9, §3.1 item 13),
// which both the RPN (threshold 0.7) and generate_tsv's per-class selection (0.3) use:
//   * areas and intersections in the "+1" pixel convention: (x2 - x1 + 1) * (y2 - y1 + 1);
//   * IoU computed in float32, then compared with the threshold as a double: a pair is suppressed
//     when double(iou) >= threshold. So IoU exactly 0.7 is kept (float(0.7) < 0.7) and IoU exactly
//     0.3 suppressed (float(0.3) > 0.3);
//   * ORDER RULE (project-wide, for determinism): boxes are processed by score descending, ties by
//     the HIGHER index first (numpy's stable argsort reversed; the original's unstable argsort
//     leaves ties undefined).
// Boxes are n x 4 float32, row-major: x1, y1, x2, y2.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace scanserve {

// The float32 IoU of two boxes exactly as cpu_nms computes it (symmetric in a and b).
float LegacyIou(const float* a, const float* b);

// Whether cpu_nms suppresses a pair with this IoU: double(iou) >= threshold.
inline bool LegacySuppresses(float iou, double threshold) {
  return static_cast<double>(iou) >= threshold;
}

// The ORDER RULE as one integer: sorting these keys descending orders by score descending, ties
// by higher index first; the index is the low 32 bits.
uint64_t ScoreOrderKey(float score, int index);

// Indices 0..n-1 in processing order (score descending, ties: higher index first); only the first
// top_k when 0 <= top_k < n. NaN scores come first, as they do after numpy's argsort()[::-1].
std::vector<int> ScoreDescendingOrder(const float* scores, int n, int top_k = -1);

// Greedy NMS; returns the kept indices in processing order, at most max_keep of them (< 0: all).
std::vector<int> LegacyNms(const float* boxes, const float* scores, int n, double threshold,
                           int max_keep = -1);

// The pairwise "suppresses" relation of a few hundred boxes, computed once and packed as bitsets,
// for running NMS with many different score vectors over the same boxes (one per class in region
// selection). Bit j of row i is set when LegacySuppresses(LegacyIou(box i, box j), threshold); the
// relation is symmetric and includes the diagonal for boxes of positive area.
class OverlapBitsets {
 public:
  OverlapBitsets(const float* boxes, int n, double threshold);

  int size() const { return n_; }
  int words_per_row() const { return words_per_row_; }
  const uint64_t* row(int i) const {
    return bits_.data() + static_cast<std::size_t>(i) * words_per_row_;
  }
  bool overlaps(int i, int j) const { return (row(i)[j >> 6] >> (j & 63)) & 1; }

  // LegacyNms(boxes, scores, n, threshold, max_keep) without recomputing any IoU.
  std::vector<int> Nms(const float* scores, int max_keep = -1) const;

 private:
  int n_;
  int words_per_row_;
  std::vector<uint64_t> bits_;  // n_ rows of words_per_row_ words
};

// Host side of the CUDA bitmask NMS (LegacyNmsMaskCuda): the n boxes are already in processing
// order and row i of `mask` (ceil(n / 64) words) has bit j set when box i suppresses box j > i.
// Returns the kept positions in order, at most max_keep (< 0: all).
std::vector<int> ReduceNmsMask(const uint64_t* mask, int n, int max_keep = -1);

}  // namespace scanserve
