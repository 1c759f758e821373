// engine/detector/anchors: the hard-coded Caffe anchor table against the original generator and
// the spec's numbers, and the anchor count of a 600x1000 input.
#include "engine/detector/anchors.h"

#include <array>
#include <vector>

#include "gtest/gtest.h"

namespace scanserve {
namespace {

TEST(AnchorsTest, TableEqualsGenerateAnchors) {
  const std::vector<double> ratios = {0.5, 1, 2};
  const std::vector<double> scales = {4, 8, 16, 32};
  const std::vector<std::array<double, 4>> generated = GenerateAnchors(16, ratios, scales);
  const auto& table = BottomUpAnchors();
  ASSERT_EQ(generated.size(), table.size());
  for (size_t a = 0; a < table.size(); ++a) {
    for (int k = 0; k < 4; ++k) {
      EXPECT_EQ(static_cast<double>(table[a][k]), generated[a][k]) << "anchor " << a << " coord " << k;
    }
  }
}

TEST(AnchorsTest, TableMatchesSpec) {
  // spec §2.4: (x1, y1, x2, y2) and w x h, ratio-major.
  const std::array<std::array<float, 4>, 12> expected = {{
      {-38, -16, 53, 31}, {-84, -40, 99, 55}, {-176, -88, 191, 103}, {-360, -184, 375, 199},
      {-24, -24, 39, 39}, {-56, -56, 71, 71}, {-120, -120, 135, 135}, {-248, -248, 263, 263},
      {-14, -36, 29, 51}, {-36, -80, 51, 95}, {-80, -168, 95, 183}, {-168, -344, 183, 359},
  }};
  const std::array<std::array<int, 2>, 12> sizes = {{
      {92, 48}, {184, 96}, {368, 192}, {736, 384}, {64, 64}, {128, 128}, {256, 256}, {512, 512},
      {44, 88}, {88, 176}, {176, 352}, {352, 704},
  }};
  const auto& table = BottomUpAnchors();
  for (int a = 0; a < 12; ++a) {
    EXPECT_EQ(table[a], expected[a]) << "anchor " << a;
    EXPECT_EQ(table[a][2] - table[a][0] + 1, sizes[a][0]) << "anchor " << a;
    EXPECT_EQ(table[a][3] - table[a][1] + 1, sizes[a][1]) << "anchor " << a;
    // All centred at (7.5, 7.5) in the +1 convention.
    EXPECT_EQ(table[a][0] + table[a][2], 15) << "anchor " << a;
    EXPECT_EQ(table[a][1] + table[a][3], 15) << "anchor " << a;
  }
}

TEST(AnchorsTest, GeneratorMatchesOriginalDefaultDocstring) {
  // generate_anchors() with its defaults (scales 8, 16, 32), as printed in the original file.
  const std::vector<std::array<double, 4>> generated = GenerateAnchors(16, {0.5, 1, 2}, {8, 16, 32});
  const std::vector<std::array<double, 4>> expected = {
      {-84, -40, 99, 55},   {-176, -88, 191, 103},  {-360, -184, 375, 199},
      {-56, -56, 71, 71},   {-120, -120, 135, 135}, {-248, -248, 263, 263},
      {-36, -80, 51, 95},   {-80, -168, 95, 183},   {-168, -344, 183, 359}};
  EXPECT_EQ(generated, expected);
}

// Caffe output sizes: convolution floors, pooling ceils.
int ConvOut(int n, int kernel, int stride, int pad) { return (n + 2 * pad - kernel) / stride + 1; }
int CeilPoolOut(int n, int kernel, int stride) {
  return (n - kernel + stride - 1) / stride + 1;
}
int Res4Size(int n) {
  n = ConvOut(n, 7, 2, 3);   // conv1
  n = CeilPoolOut(n, 3, 2);  // pool1
  n = ConvOut(n, 1, 2, 0);   // res3a (stride on the 1x1)
  return ConvOut(n, 1, 2, 0);  // res4a
}

TEST(AnchorsTest, AnchorCountFor600x1000) {
  const int feat_h = Res4Size(600);
  const int feat_w = Res4Size(1000);
  EXPECT_EQ(feat_h, 38);
  EXPECT_EQ(feat_w, 63);
  EXPECT_EQ(feat_h * feat_w * kNumBottomUpAnchors, 28728);
}

}  // namespace
}  // namespace scanserve
