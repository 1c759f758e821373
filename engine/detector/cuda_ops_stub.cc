// Stand-ins for the CUDA kernels in builds without them (see cuda_ops.h).
#include "engine/detector/cuda_ops.h"

#ifndef SCANSERVE_WITH_CUDA_KERNELS

namespace scanserve {

namespace {
constexpr char kNotBuilt[] = "scanserve was built without CUDA kernels";
}  // namespace

bool CudaDeviceAvailable() { return false; }

std::string RoiPoolCuda(const float*, int, int, int, const float*, int, float, int, int, float*,
                        void*) {
  return kNotBuilt;
}

std::string LegacyNmsMaskCuda(const float*, int, double, uint64_t*, void*) { return kNotBuilt; }

}  // namespace scanserve

#endif  // SCANSERVE_WITH_CUDA_KERNELS
