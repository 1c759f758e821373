#include "engine/detector/region_selection.h"

#include <algorithm>
#include <cstdint>
#include <functional>

#include "engine/detector/legacy_nms.h"

namespace scanserve {

RegionSelection SelectRegions(const float* boxes, const float* cls_prob, int num_rois,
                              int num_classes, const RegionSelectionConfig& config) {
  RegionSelection result;
  if (num_rois <= 0) return result;
  result.max_conf.assign(num_rois, 0.0f);
  std::vector<float>& max_conf = result.max_conf;

  const OverlapBitsets overlaps(boxes, num_rois, config.nms_threshold);
  const int words = overlaps.words_per_row();
  std::vector<float> scores(num_rois);
  std::vector<uint64_t> removed(words);
  std::vector<uint64_t> keys(num_rois);  // ScoreOrderKey of this class's scores
  for (int c = 1; c < num_classes; ++c) {
    for (int i = 0; i < num_rois; ++i) scores[i] = cls_prob[static_cast<int64_t>(i) * num_classes + c];
    // Only proposals this class could raise matter (the update is a strict '>'), so the greedy
    // pass only needs the processing order down to the last of them: proposals ranked below it
    // can no longer suppress anything that counts.
    uint64_t last_candidate = ~uint64_t{0};
    int undecided = 0;
    for (int i = 0; i < num_rois; ++i) {
      keys[i] = ScoreOrderKey(scores[i], i);
      if (scores[i] > max_conf[i]) {
        last_candidate = std::min(last_candidate, keys[i]);
        ++undecided;
      }
    }
    if (undecided == 0) continue;
    const auto ranked_end = std::partition(keys.begin(), keys.end(),
                                           [&](uint64_t key) { return key >= last_candidate; });
    std::sort(keys.begin(), ranked_end, std::greater<uint64_t>());
    std::fill(removed.begin(), removed.end(), 0);
    for (auto it = keys.begin(); it != ranked_end; ++it) {
      const int i = static_cast<int>(*it & 0xFFFFFFFFu);
      if ((removed[i >> 6] >> (i & 63)) & 1) continue;
      if (scores[i] > max_conf[i]) max_conf[i] = scores[i];
      const uint64_t* row = overlaps.row(i);
      for (int w = 0; w < words; ++w) removed[w] |= row[w];
    }
  }

  for (int i = 0; i < num_rois; ++i) {
    if (max_conf[i] >= config.conf_threshold) result.keep.push_back(i);
  }
  const int count = static_cast<int>(result.keep.size());
  if (count < config.min_boxes) {
    result.keep = ScoreDescendingOrder(max_conf.data(), num_rois, std::max(config.min_boxes, 0));
  } else if (count > config.max_boxes) {
    result.keep = ScoreDescendingOrder(max_conf.data(), num_rois, std::max(config.max_boxes, 0));
  }
  return result;
}

}  // namespace scanserve
