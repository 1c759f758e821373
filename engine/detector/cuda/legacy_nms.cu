// The suppression bitmask of the legacy NMS (legacy_nms.h) on the device: 64 x 64 tiles, one
// thread per row box, as in the py-faster-rcnn GPU NMS, but with cpu_nms's IoU (+1 areas, float32
// steps via round-to-nearest intrinsics so nothing is fused, double `>=` comparison).
#include <cuda_runtime.h>

#include <cstdint>
#include <string>

#include "engine/detector/cuda_ops.h"

namespace scanserve {
namespace {

constexpr int kBoxesPerTile = 64;  // one uint64 mask word

__device__ __forceinline__ float Max(float a, float b) { return a >= b ? a : b; }
__device__ __forceinline__ float Min(float a, float b) { return a <= b ? a : b; }

__device__ __forceinline__ float LegacyArea(const float* box) {
  return __fmul_rn(__fadd_rn(__fsub_rn(box[2], box[0]), 1.0f),
                   __fadd_rn(__fsub_rn(box[3], box[1]), 1.0f));
}

__device__ __forceinline__ float LegacyIou(const float* a, float area_a, const float* b,
                                           float area_b) {
  const float xx1 = Max(a[0], b[0]);
  const float yy1 = Max(a[1], b[1]);
  const float xx2 = Min(a[2], b[2]);
  const float yy2 = Min(a[3], b[3]);
  const float w = Max(0.0f, __fadd_rn(__fsub_rn(xx2, xx1), 1.0f));
  const float h = Max(0.0f, __fadd_rn(__fsub_rn(yy2, yy1), 1.0f));
  const float inter = __fmul_rn(w, h);
  return __fdiv_rn(inter, __fsub_rn(__fadd_rn(area_a, area_b), inter));
}

// grid (column tiles, row tiles), kBoxesPerTile threads.
__global__ void __launch_bounds__(kBoxesPerTile)
    NmsMaskKernel(int n, double threshold, const float* __restrict__ boxes,
                  unsigned long long* __restrict__ mask) {
  const int row_tile = blockIdx.y;
  const int col_tile = blockIdx.x;
  const int words_per_row = gridDim.x;
  const int row_count = min(n - row_tile * kBoxesPerTile, kBoxesPerTile);
  const int col_count = min(n - col_tile * kBoxesPerTile, kBoxesPerTile);

  __shared__ float tile_boxes[kBoxesPerTile * 4];
  __shared__ float tile_areas[kBoxesPerTile];
  if (col_tile >= row_tile && threadIdx.x < col_count) {
    const float* src = boxes + 4 * (int64_t{col_tile} * kBoxesPerTile + threadIdx.x);
    for (int k = 0; k < 4; ++k) tile_boxes[4 * threadIdx.x + k] = src[k];
    tile_areas[threadIdx.x] = LegacyArea(tile_boxes + 4 * threadIdx.x);
  }
  __syncthreads();
  if (threadIdx.x >= row_count) return;

  const int64_t i = int64_t{row_tile} * kBoxesPerTile + threadIdx.x;
  unsigned long long bits = 0;
  if (col_tile >= row_tile) {  // tiles left of the diagonal only hold j < i: all zero
    const float* box_i = boxes + 4 * i;
    const float area_i = LegacyArea(box_i);
    const int first = col_tile == row_tile ? threadIdx.x + 1 : 0;
    for (int k = first; k < col_count; ++k) {
      const float iou = LegacyIou(box_i, area_i, tile_boxes + 4 * k, tile_areas[k]);
      if (static_cast<double>(iou) >= threshold) bits |= 1ULL << k;
    }
  }
  mask[i * words_per_row + col_tile] = bits;
}

}  // namespace

std::string LegacyNmsMaskCuda(const float* sorted_boxes, int n, double threshold, uint64_t* mask,
                              void* stream) {
  if (n <= 0) return "";
  const int tiles = (n + kBoxesPerTile - 1) / kBoxesPerTile;
  if (tiles > 65535) return "LegacyNmsMaskCuda: too many boxes for one grid";
  static_assert(sizeof(unsigned long long) == sizeof(uint64_t), "mask words are 64-bit");
  const dim3 grid(tiles, tiles);
  NmsMaskKernel<<<grid, kBoxesPerTile, 0, static_cast<cudaStream_t>(stream)>>>(
      n, threshold, sorted_boxes, reinterpret_cast<unsigned long long*>(mask));
  const cudaError_t error = cudaGetLastError();
  return error == cudaSuccess ? std::string() : std::string(cudaGetErrorString(error));
}

}  // namespace scanserve
