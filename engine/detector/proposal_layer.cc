#include "engine/detector/proposal_layer.h"

#include <algorithm>
#include <cmath>

#include "engine/detector/anchors.h"
#include "engine/detector/legacy_nms.h"

namespace scanserve {
namespace {

// np.maximum(np.minimum(v, hi), 0) for float32 (NaN propagates like numpy's).
inline float Clip(float value, float hi) {
  if (std::isnan(value)) return value;
  return std::max(std::min(value, hi), 0.0f);
}

}  // namespace

Proposals ComputeProposals(const float* fg_probs, const float* deltas, int feat_h, int feat_w,
                           float im_h, float im_w, float im_scale, const ProposalConfig& config) {
  Proposals out;
  if (feat_h <= 0 || feat_w <= 0) return out;
  const auto& anchors = BottomUpAnchors();
  const float x_max = im_w - 1;
  const float y_max = im_h - 1;
  const float min_size = config.min_size * im_scale;  // float32, as 16 * im_info[2] in numpy

  // Decode + clip + size filter, keeping the survivors in flat (h, w, a) order.
  const int64_t num_anchors = static_cast<int64_t>(feat_h) * feat_w * kNumBottomUpAnchors;
  std::vector<std::array<float, 4>> boxes;
  std::vector<float> scores;
  boxes.reserve(static_cast<size_t>(num_anchors));
  scores.reserve(static_cast<size_t>(num_anchors));
  for (int h = 0; h < feat_h; ++h) {
    for (int w = 0; w < feat_w; ++w) {
      const float shift_x = static_cast<float>(w * config.feat_stride);
      const float shift_y = static_cast<float>(h * config.feat_stride);
      const int64_t cell = (static_cast<int64_t>(h) * feat_w + w) * kNumBottomUpAnchors;
      for (int a = 0; a < kNumBottomUpAnchors; ++a) {
        const int64_t index = cell + a;
        const float* d = deltas + 4 * index;
        // Anchor coordinates are small integers: exact in float32.
        const float ax1 = anchors[a][0] + shift_x;
        const float ay1 = anchors[a][1] + shift_y;
        const float ax2 = anchors[a][2] + shift_x;
        const float ay2 = anchors[a][3] + shift_y;
        // bbox_transform_inv with the +1 width and no -1 on x2.
        const float width = ax2 - ax1 + 1.0f;
        const float height = ay2 - ay1 + 1.0f;
        const float ctr_x = ax1 + 0.5f * width;
        const float ctr_y = ay1 + 0.5f * height;
        const float dx_w = d[0] * width;
        const float dy_h = d[1] * height;
        const float pred_ctr_x = dx_w + ctr_x;
        const float pred_ctr_y = dy_h + ctr_y;
        const float pred_w = std::exp(d[2]) * width;
        const float pred_h = std::exp(d[3]) * height;
        const float half_w = 0.5f * pred_w;
        const float half_h = 0.5f * pred_h;
        const std::array<float, 4> box = {
            Clip(pred_ctr_x - half_w, x_max), Clip(pred_ctr_y - half_h, y_max),
            Clip(pred_ctr_x + half_w, x_max), Clip(pred_ctr_y + half_h, y_max)};
        const float box_w = box[2] - box[0] + 1.0f;
        const float box_h = box[3] - box[1] + 1.0f;
        if (!(box_w >= min_size && box_h >= min_size)) continue;
        boxes.push_back(box);
        scores.push_back(fg_probs[index]);
      }
    }
  }

  // Sort, cap, NMS, cap. Survivors' positions are increasing in flat index, so the ORDER RULE's
  // tie-break on position is the tie-break on flat index.
  const std::vector<int> order = ScoreDescendingOrder(
      scores.data(), static_cast<int>(scores.size()),
      config.pre_nms_top_n > 0 ? config.pre_nms_top_n : -1);
  std::vector<float> sorted_boxes(order.size() * 4);
  std::vector<float> sorted_scores(order.size());
  for (size_t k = 0; k < order.size(); ++k) {
    std::copy(boxes[order[k]].begin(), boxes[order[k]].end(), sorted_boxes.begin() + 4 * k);
    sorted_scores[k] = scores[order[k]];
  }
  // The original runs nms() on the sorted list, which orders it again (ties: higher position
  // first); LegacyNms does exactly that.
  const std::vector<int> keep =
      LegacyNms(sorted_boxes.data(), sorted_scores.data(), static_cast<int>(order.size()),
                config.nms_threshold, config.post_nms_top_n > 0 ? config.post_nms_top_n : -1);
  out.boxes.reserve(keep.size());
  out.scores.reserve(keep.size());
  for (int k : keep) {
    out.boxes.push_back({sorted_boxes[4 * k], sorted_boxes[4 * k + 1], sorted_boxes[4 * k + 2],
                         sorted_boxes[4 * k + 3]});
    out.scores.push_back(sorted_scores[k]);
  }
  return out;
}

}  // namespace scanserve
