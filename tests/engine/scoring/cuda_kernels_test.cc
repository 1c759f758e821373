// The CUDA scoring kernels' building blocks against their host definitions, where comparing
// scores cannot reach: fp8 -> bf16 widening (the fused pass's and the GEMM path's) for every code
// at the extreme row scales. A subnormal code weighs at most 1/28672 of its row's largest value,
// so a wrong one would hide below any score tolerance. Skips without a CUDA device.
#ifdef SCANSERVE_WITH_CUDA

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "engine/common/bfloat16.h"
#include "engine/common/fp8_e4m3.h"
#include "engine/scoring/cuda/scan_kernels.h"
#include "engine/scoring/cuda_scorer.h"

namespace scanserve {
namespace {

// Device memory for one test, freed on scope exit.
template <typename T>
struct DeviceArray {
  T* ptr = nullptr;
  explicit DeviceArray(size_t n) {
    EXPECT_EQ(cudaMalloc(reinterpret_cast<void**>(&ptr), n * sizeof(T)), cudaSuccess);
  }
  ~DeviceArray() { cudaFree(ptr); }
};

TEST(CudaKernelsTest, Fp8WideningIsExactForEveryCodeAndScale) {
  std::string why;
  if (!CudaScorer::DeviceAvailable(&why)) GTEST_SKIP() << "no CUDA device: " << why;
  // Every row holds every code. The dim is odd, so a pair converted together spans the end of
  // even row r and the start of row r + 1: those two rows get different scales, and each scale
  // goes to two rows of opposite parity, where every code sits in the other half of its pair.
  const std::vector<int> exponents = {-kFp8MaxScaleExponent, -60, -9, 0, 7, 8, 60,
                                      kFp8MaxScaleExponent};
  const int64_t dim = 257, rows = 2 * static_cast<int64_t>(exponents.size()), n = rows * dim;
  std::vector<uint8_t> codes(n);
  std::vector<int> row_exponent(rows);
  std::vector<float> scales(rows);
  for (int64_t r = 0; r < rows; ++r) {
    row_exponent[r] = exponents[((r + 1) / 2) % exponents.size()];
    scales[r] = Fp8ScaleOf(row_exponent[r]);
    // (+5: the codes meeting across a row boundary are not zero, whose scale would not show.)
    for (int64_t j = 0; j < dim; ++j) codes[r * dim + j] = static_cast<uint8_t>((j + 5) % 256);
  }
  DeviceArray<uint8_t> codes_dev(n);
  DeviceArray<float> scales_dev(rows);
  DeviceArray<uint16_t> out_dev(n);
  ASSERT_EQ(cudaMemcpy(codes_dev.ptr, codes.data(), n, cudaMemcpyHostToDevice), cudaSuccess);
  ASSERT_EQ(cudaMemcpy(scales_dev.ptr, scales.data(), rows * sizeof(float), cudaMemcpyHostToDevice),
            cudaSuccess);
  ASSERT_EQ(cuda_kernels::Fp8RowsToBf16(codes_dev.ptr, scales_dev.ptr, rows, dim, out_dev.ptr,
                                        nullptr),
            cudaSuccess);
  std::vector<uint16_t> out(n);
  ASSERT_EQ(cudaMemcpy(out.data(), out_dev.ptr, n * sizeof(uint16_t), cudaMemcpyDeviceToHost),
            cudaSuccess);
  for (int64_t i = 0; i < n; ++i) {
    const float want = Fp8E4M3ToFloat(codes[i]) * scales[i / dim];
    const std::string what = "code " + std::to_string(codes[i]) + " at index " + std::to_string(i) +
                             ", scale 2^" + std::to_string(row_exponent[i / dim]);
    if (std::isnan(want)) {
      EXPECT_TRUE(std::isnan(BFloat16ToFloat(out[i]))) << what;
    } else {
      ASSERT_EQ(out[i], FloatToBFloat16(want)) << what;
      ASSERT_EQ(BFloat16ToFloat(out[i]), want) << what << ": not exact";
    }
  }
}

}  // namespace
}  // namespace scanserve

#endif  // SCANSERVE_WITH_CUDA
