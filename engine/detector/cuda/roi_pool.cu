// Caffe ROIPooling forward on the device: the CUDA mirror of RoiPoolCpu (roi_pool.h), one thread
// per output element as in Caffe's ROIPoolForward. Every float step uses the round-to-nearest
// intrinsics so nvcc cannot fuse or reassociate it: the windows match the CPU op exactly.
#include <cuda_runtime.h>

#include <cfloat>
#include <cstdint>
#include <string>

#include "engine/detector/cuda_ops.h"

namespace scanserve {
namespace {

constexpr int kThreadsPerBlock = 256;

// C round() of x * scale, pinned like the CPU op before the int conversion.
__device__ __forceinline__ int QuantiseCoordinate(float x, float scale) {
  float v = roundf(__fmul_rn(x, scale));
  const float limit = 1073741824.0f;  // 2^30
  if (!(v >= -limit)) v = -limit;
  if (v > limit) v = limit;
  return static_cast<int>(v);
}

__device__ __forceinline__ void BinEdges(int index, float bin_size, int offset, int limit,
                                         int* start, int* end) {
  const int lo = static_cast<int>(floorf(__fmul_rn(static_cast<float>(index), bin_size)));
  const int hi = static_cast<int>(ceilf(__fmul_rn(static_cast<float>(index + 1), bin_size)));
  *start = min(max(lo + offset, 0), limit);
  *end = min(max(hi + offset, 0), limit);
}

__global__ void __launch_bounds__(kThreadsPerBlock)
    RoiPoolKernel(int64_t count, const float* __restrict__ features, int channels,
                  int height, int width, const float* __restrict__ rois,
                  float spatial_scale, int pooled_h, int pooled_w,
                  float* __restrict__ out) {
  for (int64_t index = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; index < count;
       index += int64_t{blockDim.x} * gridDim.x) {
    const int pw = static_cast<int>(index % pooled_w);
    const int ph = static_cast<int>((index / pooled_w) % pooled_h);
    const int c = static_cast<int>((index / pooled_w / pooled_h) % channels);
    const int64_t r = index / pooled_w / pooled_h / channels;

    const float* roi = rois + 4 * r;
    const int start_w = QuantiseCoordinate(roi[0], spatial_scale);
    const int start_h = QuantiseCoordinate(roi[1], spatial_scale);
    const int end_w = QuantiseCoordinate(roi[2], spatial_scale);
    const int end_h = QuantiseCoordinate(roi[3], spatial_scale);
    const int roi_w = max(end_w - start_w + 1, 1);
    const int roi_h = max(end_h - start_h + 1, 1);
    const float bin_h = __fdiv_rn(static_cast<float>(roi_h), static_cast<float>(pooled_h));
    const float bin_w = __fdiv_rn(static_cast<float>(roi_w), static_cast<float>(pooled_w));
    int h_start, h_end, w_start, w_end;
    BinEdges(ph, bin_h, start_h, height, &h_start, &h_end);
    BinEdges(pw, bin_w, start_w, width, &w_start, &w_end);

    const bool empty = h_end <= h_start || w_end <= w_start;
    float max_value = empty ? 0.0f : -FLT_MAX;
    const float* plane = features + static_cast<int64_t>(c) * height * width;
    for (int h = h_start; h < h_end; ++h) {
      for (int w = w_start; w < w_end; ++w) {
        const float v = plane[static_cast<int64_t>(h) * width + w];
        if (v > max_value) max_value = v;
      }
    }
    out[index] = max_value;
  }
}

}  // namespace

bool CudaDeviceAvailable() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    cudaGetLastError();  // clear the error so later runtime calls start clean
    return false;
  }
  return count > 0;
}

std::string RoiPoolCuda(const float* features, int channels, int height, int width,
                        const float* rois, int num_rois, float spatial_scale, int pooled_h,
                        int pooled_w, float* out, void* stream) {
  if (channels <= 0 || num_rois <= 0 || pooled_h <= 0 || pooled_w <= 0) return "";
  if (height <= 0 || width <= 0) {
    // Every window is empty: all zeros.
    const size_t bytes = sizeof(float) * num_rois * static_cast<size_t>(channels) * pooled_h * pooled_w;
    const cudaError_t error = cudaMemsetAsync(out, 0, bytes, static_cast<cudaStream_t>(stream));
    return error == cudaSuccess ? std::string() : std::string(cudaGetErrorString(error));
  }
  const int64_t count = int64_t{num_rois} * channels * pooled_h * pooled_w;
  const int64_t blocks_needed = (count + kThreadsPerBlock - 1) / kThreadsPerBlock;
  const int blocks = static_cast<int>(blocks_needed < (1 << 20) ? blocks_needed : (1 << 20));
  RoiPoolKernel<<<blocks, kThreadsPerBlock, 0, static_cast<cudaStream_t>(stream)>>>(
      count, features, channels, height, width, rois, spatial_scale, pooled_h, pooled_w, out);
  const cudaError_t error = cudaGetLastError();
  return error == cudaSuccess ? std::string() : std::string(cudaGetErrorString(error));
}

}  // namespace scanserve
