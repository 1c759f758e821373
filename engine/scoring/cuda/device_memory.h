// Owned device and page-locked host memory, and the current-device guard, for the CUDA scorer.
#ifndef SCANSERVE_ENGINE_SCORING_CUDA_DEVICE_MEMORY_H_
#define SCANSERVE_ENGINE_SCORING_CUDA_DEVICE_MEMORY_H_

#include <cuda_runtime.h>

#include <algorithm>
#include <cstddef>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "engine/common/status_macros.h"
#include "engine/scoring/cuda/cuda_status.h"

namespace scanserve {
namespace cuda_internal {

// Makes `device` current for a scope and restores the previous one.
class DeviceGuard {
 public:
  explicit DeviceGuard(int device) {
    if (cudaGetDevice(&previous_) != cudaSuccess) previous_ = -1;
    if (previous_ != device) cudaSetDevice(device);
  }
  ~DeviceGuard() {
    if (previous_ >= 0) cudaSetDevice(previous_);
  }
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int previous_ = -1;
};

// An owned device allocation (freed on the device current at destruction: the owner's guard).
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  ~DeviceBuffer() { Reset(); }
  DeviceBuffer(DeviceBuffer&& o) noexcept : ptr_(o.ptr_), bytes_(o.bytes_) {
    o.ptr_ = nullptr;
    o.bytes_ = 0;
  }
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept {
    if (this != &o) {
      Reset();
      std::swap(ptr_, o.ptr_);
      std::swap(bytes_, o.bytes_);
    }
    return *this;
  }

  // Room for `host`, then `host` copied in on `stream`. A pageable source may be freed as soon as
  // this returns: the runtime stages it before cudaMemcpyAsync returns.
  template <typename T>
  absl::Status Upload(const std::vector<T>& host, cudaStream_t stream, const char* what) {
    const size_t bytes = host.size() * sizeof(T);
    SCANSERVE_RETURN_IF_ERROR(Reserve(bytes, what));
    SCANSERVE_CUDA_RETURN_IF_ERROR(
        cudaMemcpyAsync(ptr_, host.data(), bytes, cudaMemcpyHostToDevice, stream),
        absl::StrCat("upload ", what).c_str());
    return absl::OkStatus();
  }

  // At least `bytes`; the contents are lost when it grows.
  absl::Status Reserve(size_t bytes, const char* what) {
    if (bytes <= bytes_) return absl::OkStatus();
    // Refuse before the device is full: the text encoder, the detector and cuBLAS share it, and a
    // store that grows into the last bytes would make their next allocation fail instead.
    size_t free_bytes = 0, total_bytes = 0;
    if (cudaMemGetInfo(&free_bytes, &total_bytes) == cudaSuccess) {
      const size_t headroom = total_bytes / 20;
      if (bytes + headroom > free_bytes + bytes_) {
        return absl::ResourceExhaustedError(absl::StrCat(
            "CudaScorer: ", what, " needs ", bytes, " bytes of device memory; ", free_bytes,
            " are free and 5% of the device (", headroom, " bytes) stays reserved"));
      }
    } else {
      cudaGetLastError();
    }
    Reset();
    void* p = nullptr;
    const cudaError_t err = cudaMalloc(&p, bytes);
    if (err != cudaSuccess) {
      cudaGetLastError();  // clear the sticky-free allocation error
      return absl::ResourceExhaustedError(absl::StrCat("CudaScorer: out of device memory for ", what,
                                                       " (", bytes, " bytes): ",
                                                       cudaGetErrorString(err)));
    }
    ptr_ = p;
    bytes_ = bytes;
    return absl::OkStatus();
  }
  // At least `bytes`, keeping the first `keep` bytes (stream-ordered copy on `stream`).
  absl::Status Grow(size_t bytes, size_t keep, cudaStream_t stream, const char* what) {
    if (bytes <= bytes_) return absl::OkStatus();
    DeviceBuffer bigger;
    SCANSERVE_RETURN_IF_ERROR(bigger.Reserve(std::max(bytes, bytes_ + bytes_ / 2), what));
    if (keep > 0) {
      SCANSERVE_CUDA_RETURN_IF_ERROR(
          cudaMemcpyAsync(bigger.ptr_, ptr_, keep, cudaMemcpyDeviceToDevice, stream), what);
      SCANSERVE_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream), what);
    }
    *this = std::move(bigger);
    return absl::OkStatus();
  }
  void Reset() {
    if (ptr_ != nullptr) cudaFree(ptr_);
    ptr_ = nullptr;
    bytes_ = 0;
  }

  template <typename T>
  T* as() const {
    return static_cast<T*>(ptr_);
  }
  void* get() const { return ptr_; }
  size_t bytes() const { return bytes_; }

 private:
  void* ptr_ = nullptr;
  size_t bytes_ = 0;
};

// Page-locked host memory, for the Add uploads.
class PinnedBuffer {
 public:
  ~PinnedBuffer() {
    if (ptr_ != nullptr) cudaFreeHost(ptr_);
  }
  absl::Status Reserve(size_t bytes) {
    if (bytes <= bytes_) return absl::OkStatus();
    if (ptr_ != nullptr) cudaFreeHost(ptr_);
    ptr_ = nullptr;
    bytes_ = 0;
    SCANSERVE_CUDA_RETURN_IF_ERROR(cudaMallocHost(&ptr_, bytes), "pinned staging buffer");
    bytes_ = bytes;
    return absl::OkStatus();
  }
  float* get() const { return static_cast<float*>(ptr_); }

 private:
  void* ptr_ = nullptr;
  size_t bytes_ = 0;
};

}  // namespace cuda_internal
}  // namespace scanserve

#endif  // SCANSERVE_ENGINE_SCORING_CUDA_DEVICE_MEMORY_H_
