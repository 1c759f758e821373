// Caffe ROIPooling forward (Fast R-CNN max RoI pooling; spec §2.6, §3.1 item 12), the op the
// bottom-up detector runs on res4b22 with a 14 x 14 output and spatial_scale 1/16:
//   * RoI corners are quantised with C round() (half away from zero) of x * spatial_scale, the
//     product in float32;
//   * malformed RoIs become 1 x 1: size = max(end - start + 1, 1) cells;
//   * bin edges are floor(ph * bin_h) and ceil((ph + 1) * bin_h) with bin_h = size / pooled_h, all
//     in float32 (double or exact-integer arithmetic moves edges for 29, 57, 58 or 62 cells), then
//     offset by the RoI start and clipped to the map, so neighbouring bins may overlap;
//   * each output is the max of its window (Caffe's `v > max` scan from -FLT_MAX); an empty window
//     gives 0.
// The CUDA mirror is RoiPoolCuda (cuda_ops.h).
#pragma once

#include <vector>

namespace scanserve {

class ThreadPool;

// features: channels x height x width, contiguous (one image). rois: num_rois x 4 (x1, y1, x2, y2
// in input-image pixels; no batch column). out: num_rois x channels x pooled_h x pooled_w.
// pool may be null (runs serially). Non-positive sizes write nothing.
// Each call transposes the whole map once (see RoiPooler): pool all of an image's RoIs in one
// call, or use RoiPooler, rather than calling this per small chunk of RoIs.
void RoiPoolCpu(const float* features, int channels, int height, int width, const float* rois,
                int num_rois, float spatial_scale, int pooled_h, int pooled_w, float* out,
                ThreadPool* pool);

// One image's map kept channels-innermost (HWC), so every window cell is a contiguous run of
// channels and the max vectorises. Build it once per image; Pool() is const and may run from
// several threads at once (e.g. inside at::parallel_for over RoI chunks).
class RoiPooler {
 public:
  // Copies and transposes features (channels x height x width); pool may be null.
  RoiPooler(const float* features, int channels, int height, int width, ThreadPool* pool);

  // RoiPoolCpu's pooling on the stored map.
  void Pool(const float* rois, int num_rois, float spatial_scale, int pooled_h, int pooled_w,
            float* out, ThreadPool* pool) const;

 private:
  int channels_, height_, width_;
  std::vector<float> hwc_;
};

// One RoI's integer window on the feature map, exactly as Caffe computes it; exposed for tests and
// for callers that want the windows without pooling. Edges are [start, end), already clipped.
struct RoiBin {
  int h_start, h_end, w_start, w_end;
  bool empty() const { return h_end <= h_start || w_end <= w_start; }
};
RoiBin CaffeRoiBin(const float* roi, float spatial_scale, int height, int width, int pooled_h,
                   int pooled_w, int ph, int pw);

}  // namespace scanserve
