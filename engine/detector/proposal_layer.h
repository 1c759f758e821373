// The RPN proposal layer at test time (spec §2.5): decode the 12 anchors of every feature cell,
// clip to the image, drop small boxes, sort by objectness, top 6000, legacy NMS 0.7, top 300.
// All arithmetic is float32 step by step, as numpy does it in the original proposal_layer.py.
#pragma once

#include <array>
#include <vector>

namespace scanserve {

struct ProposalConfig {
  int pre_nms_top_n = 6000;     // TEST.RPN_PRE_NMS_TOP_N (<= 0: no cap)
  int post_nms_top_n = 300;     // TEST.RPN_POST_NMS_TOP_N (<= 0: no cap)
  double nms_threshold = 0.7;   // TEST.RPN_NMS_THRESH
  float min_size = 16;          // TEST.RPN_MIN_SIZE, in input-image pixels (scaled by im_scale)
  int feat_stride = 16;         // pixels per feature cell
};

// Boxes in resized-image pixels (x1, y1, x2, y2), in descending objectness (ORDER RULE of
// legacy_nms.h for ties); scores are the matching foreground probabilities.
struct Proposals {
  std::vector<std::array<float, 4>> boxes;
  std::vector<float> scores;
};

// fg_probs: feat_h x feat_w x 12 (anchor fastest), the RPN's 2-way softmax foreground probability.
// deltas: feat_h x feat_w x 12 x 4 (dx, dy, dw, dh). im_h, im_w, im_scale: im_info (the resized
// image size and the resize factor, float32 as in the Caffe blob). Anchors are BottomUpAnchors().
Proposals ComputeProposals(const float* fg_probs, const float* deltas, int feat_h, int feat_w,
                           float im_h, float im_w, float im_scale, const ProposalConfig& config = {});

}  // namespace scanserve
