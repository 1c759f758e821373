// engine/detector/cuda_ops: the CUDA kernels against the CPU ops (the oracle), bit for bit, on
// random data. Skips without kernels or without a device.
#include "engine/detector/cuda_ops.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "engine/detector/legacy_nms.h"
#include "engine/detector/roi_pool.h"
#include "gtest/gtest.h"

#ifdef SCANSERVE_WITH_CUDA_KERNELS
#include <cuda_runtime.h>
#endif

namespace scanserve {
namespace {

TEST(CudaOpsBuildTest, StubsOrNoOpsOnEmptyInput) {
  const bool available = CudaDeviceAvailable();
#ifndef SCANSERVE_WITH_CUDA_KERNELS
  EXPECT_FALSE(available);
  EXPECT_NE(RoiPoolCuda(nullptr, 1, 1, 1, nullptr, 1, 1.0f, 1, 1, nullptr, nullptr), "");
  EXPECT_NE(LegacyNmsMaskCuda(nullptr, 1, 0.5, nullptr, nullptr), "");
#else
  (void)available;
  // Empty inputs are no-ops that launch nothing.
  EXPECT_EQ(LegacyNmsMaskCuda(nullptr, 0, 0.5, nullptr, nullptr), "");
  EXPECT_EQ(RoiPoolCuda(nullptr, 4, 4, 4, nullptr, 0, 1.0f, 2, 2, nullptr, nullptr), "");
#endif
}

#ifdef SCANSERVE_WITH_CUDA_KERNELS

// A device copy of a host vector, freed on scope exit.
template <typename T>
class DeviceBuffer {
 public:
  explicit DeviceBuffer(size_t count) : count_(count) {
    if (cudaMalloc(&ptr_, std::max<size_t>(count, 1) * sizeof(T)) != cudaSuccess) ptr_ = nullptr;
  }
  explicit DeviceBuffer(const std::vector<T>& host) : DeviceBuffer(host.size()) {
    if (ptr_ != nullptr && !host.empty()) {
      cudaMemcpy(ptr_, host.data(), host.size() * sizeof(T), cudaMemcpyHostToDevice);
    }
  }
  ~DeviceBuffer() { cudaFree(ptr_); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  T* get() const { return static_cast<T*>(ptr_); }
  std::vector<T> ToHost() const {
    std::vector<T> host(count_);
    if (count_ > 0) cudaMemcpy(host.data(), ptr_, count_ * sizeof(T), cudaMemcpyDeviceToHost);
    return host;
  }

 private:
  void* ptr_ = nullptr;
  size_t count_;
};

class CudaOpsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!CudaDeviceAvailable()) GTEST_SKIP() << "no CUDA device";
  }
};

struct RoiPoolCase {
  int channels, height, width, num_rois, pooled;
  float scale;
};

TEST_F(CudaOpsTest, RoiPoolMatchesCpu) {
  const std::vector<RoiPoolCase> cases = {
      {1024, 38, 63, 300, 14, 0.0625f},  // the detector's call
      {37, 9, 13, 40, 7, 0.0625f},
      {3, 1, 1, 10, 2, 1.0f},
  };
  std::mt19937 rng(21);
  std::normal_distribution<float> value(0, 2);
  for (size_t k = 0; k < cases.size(); ++k) {
    const RoiPoolCase& c = cases[k];
    std::vector<float> features(static_cast<size_t>(c.channels) * c.height * c.width);
    for (float& v : features) v = value(rng);
    const float extent_w = c.width / c.scale, extent_h = c.height / c.scale;
    std::uniform_real_distribution<float> x(-0.2f * extent_w, 1.2f * extent_w);
    std::uniform_real_distribution<float> y(-0.2f * extent_h, 1.2f * extent_h);
    std::vector<float> rois;
    for (int r = 0; r < c.num_rois; ++r) {
      float x1 = x(rng), y1 = y(rng), x2 = x(rng), y2 = y(rng);
      if (r % 4 != 3) {
        if (x2 < x1) std::swap(x1, x2);
        if (y2 < y1) std::swap(y1, y2);
      }
      if (r % 5 == 0) x1 = (std::floor(x1 * c.scale) + 0.5f) / c.scale;
      rois.insert(rois.end(), {x1, y1, x2, y2});
    }
    const size_t out_size = static_cast<size_t>(c.num_rois) * c.channels * c.pooled * c.pooled;
    std::vector<float> cpu(out_size);
    RoiPoolCpu(features.data(), c.channels, c.height, c.width, rois.data(), c.num_rois, c.scale,
               c.pooled, c.pooled, cpu.data(), nullptr);
    DeviceBuffer<float> d_features(features), d_rois(rois), d_out(out_size);
    ASSERT_NE(d_out.get(), nullptr);
    ASSERT_EQ(RoiPoolCuda(d_features.get(), c.channels, c.height, c.width, d_rois.get(),
                          c.num_rois, c.scale, c.pooled, c.pooled, d_out.get(), nullptr),
              "");
    ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    EXPECT_EQ(d_out.ToHost(), cpu) << "case " << k;
  }
}

TEST_F(CudaOpsTest, NmsMaskMatchesCpu) {
  std::mt19937 rng(22);
  for (int n : {1, 63, 64, 65, 300, 1000, 6000}) {
    for (double threshold : {0.7, 0.3}) {
      // Clustered boxes, integer corners for every third (exact IoU values such as 0.7 / 0.3).
      std::uniform_real_distribution<float> pos(0, 600), jitter(-10, 10), size(4, 200);
      std::vector<float> boxes, scores(n);
      std::uniform_real_distribution<float> uniform(0, 1);
      for (int i = 0; i < n; ++i) {
        float x = pos(rng), y = pos(rng);
        if (i % 2 && i > 0) {
          x = boxes[4 * (i - 1)] + jitter(rng);
          y = boxes[4 * (i - 1) + 1] + jitter(rng);
        }
        float w = size(rng), h = size(rng);
        if (i % 3 == 0) { x = std::round(x); y = std::round(y); w = std::round(w); h = std::round(h); }
        boxes.insert(boxes.end(), {x, y, x + w, y + h});
        scores[i] = std::floor(uniform(rng) * 50) / 50;
      }
      const std::vector<int> order = ScoreDescendingOrder(scores.data(), n);
      std::vector<float> sorted(4 * static_cast<size_t>(n));
      for (int k = 0; k < n; ++k) std::copy_n(&boxes[4 * order[k]], 4, &sorted[4 * k]);
      const int words = (n + 63) / 64;
      DeviceBuffer<float> d_boxes(sorted);
      DeviceBuffer<uint64_t> d_mask(static_cast<size_t>(n) * words);
      ASSERT_EQ(LegacyNmsMaskCuda(d_boxes.get(), n, threshold, d_mask.get(), nullptr), "");
      ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
      const std::vector<uint64_t> mask = d_mask.ToHost();
      // The whole mask, bit for bit (every word written, nothing at or left of the diagonal).
      for (int i = 0; i < n; ++i) {
        for (int j = 0; j < n; ++j) {
          const bool bit = (mask[static_cast<size_t>(i) * words + j / 64] >> (j % 64)) & 1;
          const bool expected =
              j > i && LegacySuppresses(LegacyIou(&sorted[4 * i], &sorted[4 * j]), threshold);
          ASSERT_EQ(bit, expected) << "n " << n << " thr " << threshold << " (" << i << ", " << j << ")";
        }
      }
      std::vector<int> kept;
      for (int position : ReduceNmsMask(mask.data(), n)) kept.push_back(order[position]);
      EXPECT_EQ(kept, LegacyNms(boxes.data(), scores.data(), n, threshold)) << "n " << n;
    }
  }
}

#endif  // SCANSERVE_WITH_CUDA_KERNELS

}  // namespace
}  // namespace scanserve
