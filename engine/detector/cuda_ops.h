// CUDA mirrors of the detector's plain-C++ ops (roi_pool.h, legacy_nms.h), bit-exact with them.
// Plain header: no CUDA, torch or absl types, so any translation unit may include it. The kernels
// live in engine/detector/cuda/*.cu; builds without them (SCANSERVE_WITH_CUDA_KERNELS undefined)
// link cuda_ops_stub.cc instead, where CudaDeviceAvailable() is false and the ops return an error.
//
// Pointers are device pointers. `stream` is a cudaStream_t passed as void*; nullptr means the
// legacy default stream (LibTorch's current stream unless it was changed). The ops only enqueue
// work: they neither synchronise nor allocate. They return "" on success, else the CUDA error text.
#pragma once

#include <cstdint>
#include <string>

namespace scanserve {

// Whether the CUDA runtime and at least one device are usable. Never aborts.
bool CudaDeviceAvailable();

// RoiPoolCpu on the device: features channels x height x width, rois num_rois x 4 (x1, y1, x2, y2
// in input-image pixels), out num_rois x channels x pooled_h x pooled_w.
std::string RoiPoolCuda(const float* features, int channels, int height, int width,
                        const float* rois, int num_rois, float spatial_scale, int pooled_h,
                        int pooled_w, float* out, void* stream);

// The suppression bitmask of n boxes already in processing order (legacy_nms.h's ORDER RULE):
// row i of mask (ceil(n / 64) words, all written) has bit j set when j > i and
// double(LegacyIou(box i, box j)) >= threshold. Reduce it on the host with ReduceNmsMask.
std::string LegacyNmsMaskCuda(const float* sorted_boxes, int n, double threshold, uint64_t* mask,
                              void* stream);

}  // namespace scanserve
