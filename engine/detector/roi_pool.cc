#include "engine/detector/roi_pool.h"

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <vector>

#include "engine/common/thread_pool.h"

namespace scanserve {
namespace {

// Channels handled per register block; a fixed trip count lets the compiler keep the running
// maxima in vector registers.
constexpr int kChannelBlock = 16;

// C round() of x * scale as an int; out-of-range or NaN inputs are pinned first (the conversion
// would be undefined) — far outside any map, so they still clip to its border.
int QuantiseCoordinate(float x, float scale) {
  float v = std::round(x * scale);
  constexpr float kLimit = 1 << 30;
  if (!(v >= -kLimit)) v = -kLimit;  // also NaN
  if (v > kLimit) v = kLimit;
  return static_cast<int>(v);
}

struct QuantisedRoi {
  int start_w, start_h;
  float bin_w, bin_h;
};

QuantisedRoi Quantise(const float* roi, float spatial_scale, int pooled_h, int pooled_w) {
  const int start_w = QuantiseCoordinate(roi[0], spatial_scale);
  const int start_h = QuantiseCoordinate(roi[1], spatial_scale);
  const int end_w = QuantiseCoordinate(roi[2], spatial_scale);
  const int end_h = QuantiseCoordinate(roi[3], spatial_scale);
  const int roi_w = std::max(end_w - start_w + 1, 1);
  const int roi_h = std::max(end_h - start_h + 1, 1);
  return {start_w, start_h, static_cast<float>(roi_w) / static_cast<float>(pooled_w),
          static_cast<float>(roi_h) / static_cast<float>(pooled_h)};
}

// [start, end) of bin `index` along one axis, offset and clipped to [0, limit].
void BinEdges(int index, float bin_size, int offset, int limit, int* start, int* end) {
  const int lo = static_cast<int>(std::floor(static_cast<float>(index) * bin_size));
  const int hi = static_cast<int>(std::ceil(static_cast<float>(index + 1) * bin_size));
  *start = std::min(std::max(lo + offset, 0), limit);
  *end = std::min(std::max(hi + offset, 0), limit);
}

// Eight floats in one vector register (SSE pair or AVX); GCC/Clang vector extensions.
typedef float Float8 __attribute__((vector_size(32)));

inline Float8 LoadFloat8(const float* p) {
  Float8 v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

// Max over the window cells of an HWC map for channels [c0, c0 + kChannelBlock), with Caffe's
// `v > max` update (NaN never replaces the running max).
inline void MaxBlock(const float* hwc, int width, int channels, int c0, const RoiBin& bin,
                     float* result) {
  static_assert(kChannelBlock == 16, "two Float8 per block");
  Float8 acc0, acc1;
  for (int k = 0; k < 8; ++k) acc0[k] = acc1[k] = -FLT_MAX;
  for (int h = bin.h_start; h < bin.h_end; ++h) {
    const float* v = hwc + (static_cast<int64_t>(h) * width + bin.w_start) * channels + c0;
    for (int w = bin.w_start; w < bin.w_end; ++w, v += channels) {
      const Float8 v0 = LoadFloat8(v);
      const Float8 v1 = LoadFloat8(v + 8);
      acc0 = v0 > acc0 ? v0 : acc0;
      acc1 = v1 > acc1 ? v1 : acc1;
    }
  }
  std::memcpy(result, &acc0, sizeof acc0);
  std::memcpy(result + 8, &acc1, sizeof acc1);
}

inline void MaxTail(const float* hwc, int width, int channels, int c0, const RoiBin& bin,
                    float* result) {
  for (int c = c0; c < channels; ++c) {
    float acc = -FLT_MAX;
    for (int h = bin.h_start; h < bin.h_end; ++h) {
      for (int w = bin.w_start; w < bin.w_end; ++w) {
        const float v = hwc[(static_cast<int64_t>(h) * width + w) * channels + c];
        acc = v > acc ? v : acc;
      }
    }
    result[c - c0] = acc;
  }
}

void Run(ThreadPool* pool, int64_t n, int64_t grain,
         const std::function<void(int64_t, int64_t, int)>& fn) {
  if (n <= 0) return;
  if (pool == nullptr || pool->num_threads() == 1) {
    fn(0, n, 0);
  } else {
    pool->ParallelFor(n, grain, fn);
  }
}

}  // namespace

RoiBin CaffeRoiBin(const float* roi, float spatial_scale, int height, int width, int pooled_h,
                   int pooled_w, int ph, int pw) {
  const QuantisedRoi q = Quantise(roi, spatial_scale, pooled_h, pooled_w);
  RoiBin bin;
  BinEdges(ph, q.bin_h, q.start_h, height, &bin.h_start, &bin.h_end);
  BinEdges(pw, q.bin_w, q.start_w, width, &bin.w_start, &bin.w_end);
  return bin;
}

void RoiPoolCpu(const float* features, int channels, int height, int width, const float* rois,
                int num_rois, float spatial_scale, int pooled_h, int pooled_w, float* out,
                ThreadPool* pool) {
  if (channels <= 0 || num_rois <= 0 || pooled_h <= 0 || pooled_w <= 0) return;
  RoiPooler(features, channels, height, width, pool)
      .Pool(rois, num_rois, spatial_scale, pooled_h, pooled_w, out, pool);
}

RoiPooler::RoiPooler(const float* features, int channels, int height, int width, ThreadPool* pool)
    : channels_(std::max(channels, 0)), height_(std::max(height, 0)), width_(std::max(width, 0)),
      hwc_(static_cast<size_t>(height_) * width_ * channels_) {
  if (hwc_.empty()) return;
  Run(pool, height_, 1, [&](int64_t begin, int64_t end, int) {
    for (int64_t h = begin; h < end; ++h) {
      for (int c0 = 0; c0 < channels_; c0 += kChannelBlock) {
        const int c1 = std::min(c0 + kChannelBlock, channels_);
        for (int w = 0; w < width_; ++w) {
          float* dst = hwc_.data() + (h * width_ + w) * channels_;
          for (int c = c0; c < c1; ++c) dst[c] = features[(c * int64_t{height_} + h) * width_ + w];
        }
      }
    }
  });
}

void RoiPooler::Pool(const float* rois, int num_rois, float spatial_scale, int pooled_h,
                     int pooled_w, float* out, ThreadPool* pool) const {
  const int channels = channels_, height = height_, width = width_;
  if (channels <= 0 || num_rois <= 0 || pooled_h <= 0 || pooled_w <= 0) return;
  const int64_t bins_per_channel = static_cast<int64_t>(pooled_h) * pooled_w;
  if (height <= 0 || width <= 0) {
    std::fill(out, out + static_cast<int64_t>(num_rois) * channels * bins_per_channel, 0.0f);
    return;
  }
  const float* hwc = hwc_.data();

  // One task per (RoI, output row): its pooled_w bins for every channel, gathered in scratch
  // (bin-major) and written out channel-major.
  Run(pool, static_cast<int64_t>(num_rois) * pooled_h, 4, [&](int64_t begin, int64_t end, int) {
    std::vector<float> scratch(static_cast<size_t>(pooled_w) * channels);
    for (int64_t task = begin; task < end; ++task) {
      const int r = static_cast<int>(task / pooled_h);
      const int ph = static_cast<int>(task % pooled_h);
      const QuantisedRoi q = Quantise(rois + 4 * r, spatial_scale, pooled_h, pooled_w);
      RoiBin bin;
      BinEdges(ph, q.bin_h, q.start_h, height, &bin.h_start, &bin.h_end);
      for (int pw = 0; pw < pooled_w; ++pw) {
        BinEdges(pw, q.bin_w, q.start_w, width, &bin.w_start, &bin.w_end);
        float* result = scratch.data() + static_cast<size_t>(pw) * channels;
        if (bin.empty()) {
          std::fill(result, result + channels, 0.0f);
          continue;
        }
        int c0 = 0;
        for (; c0 + kChannelBlock <= channels; c0 += kChannelBlock) {
          MaxBlock(hwc, width, channels, c0, bin, result + c0);
        }
        if (c0 < channels) MaxTail(hwc, width, channels, c0, bin, result + c0);
      }
      float* roi_out = out + static_cast<int64_t>(r) * channels * bins_per_channel +
                       static_cast<int64_t>(ph) * pooled_w;
      for (int c = 0; c < channels; ++c) {
        float* dst = roi_out + c * bins_per_channel;
        for (int pw = 0; pw < pooled_w; ++pw) dst[pw] = scratch[static_cast<size_t>(pw) * channels + c];
      }
    }
  });
}

}  // namespace scanserve
