// engine/detector/roi_pool: Caffe ROIPooling forward on a ramp with hand-computed maxima, C round()
// quantisation, degenerate / out-of-map RoIs, the float32 bin edges (29, 57, 58, 62 cells), and a
// naive transcription of Caffe's kernel on random data, serial and threaded.
#include "engine/detector/roi_pool.h"

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <random>
#include <vector>

#include "engine/common/thread_pool.h"
#include "gtest/gtest.h"

namespace scanserve {
namespace {

// Caffe's ROIPoolForward, one output element at a time, CHW input.
std::vector<float> NaiveRoiPool(const std::vector<float>& features, int channels, int height,
                                int width, const std::vector<float>& rois, float spatial_scale,
                                int pooled_h, int pooled_w) {
  const int num_rois = static_cast<int>(rois.size() / 4);
  std::vector<float> out(static_cast<size_t>(num_rois) * channels * pooled_h * pooled_w);
  size_t index = 0;
  for (int n = 0; n < num_rois; ++n) {
    const float* roi = &rois[4 * n];
    const int start_w = static_cast<int>(std::round(roi[0] * spatial_scale));
    const int start_h = static_cast<int>(std::round(roi[1] * spatial_scale));
    const int end_w = static_cast<int>(std::round(roi[2] * spatial_scale));
    const int end_h = static_cast<int>(std::round(roi[3] * spatial_scale));
    const int roi_w = std::max(end_w - start_w + 1, 1);
    const int roi_h = std::max(end_h - start_h + 1, 1);
    const float bin_h = static_cast<float>(roi_h) / static_cast<float>(pooled_h);
    const float bin_w = static_cast<float>(roi_w) / static_cast<float>(pooled_w);
    for (int c = 0; c < channels; ++c) {
      for (int ph = 0; ph < pooled_h; ++ph) {
        for (int pw = 0; pw < pooled_w; ++pw, ++index) {
          int hstart = static_cast<int>(std::floor(static_cast<float>(ph) * bin_h));
          int wstart = static_cast<int>(std::floor(static_cast<float>(pw) * bin_w));
          int hend = static_cast<int>(std::ceil(static_cast<float>(ph + 1) * bin_h));
          int wend = static_cast<int>(std::ceil(static_cast<float>(pw + 1) * bin_w));
          hstart = std::min(std::max(hstart + start_h, 0), height);
          hend = std::min(std::max(hend + start_h, 0), height);
          wstart = std::min(std::max(wstart + start_w, 0), width);
          wend = std::min(std::max(wend + start_w, 0), width);
          const bool empty = hend <= hstart || wend <= wstart;
          float maxval = empty ? 0 : -FLT_MAX;
          for (int h = hstart; h < hend; ++h) {
            for (int w = wstart; w < wend; ++w) {
              const float v = features[(static_cast<size_t>(c) * height + h) * width + w];
              if (v > maxval) maxval = v;
            }
          }
          out[index] = maxval;
        }
      }
    }
  }
  return out;
}

// f[c][h][w] = 1000c + 8h + w - offset: strictly increasing along h and w.
std::vector<float> Ramp(int channels, int height, int width, float offset = 0) {
  std::vector<float> f(static_cast<size_t>(channels) * height * width);
  for (int c = 0; c < channels; ++c)
    for (int h = 0; h < height; ++h)
      for (int w = 0; w < width; ++w) f[(c * height + h) * width + w] = 1000.0f * c + 8 * h + w - offset;
  return f;
}

std::vector<float> Pool(const std::vector<float>& features, int channels, int height, int width,
                        const std::vector<float>& rois, float scale, int pooled_h, int pooled_w,
                        ThreadPool* pool = nullptr) {
  const int num_rois = static_cast<int>(rois.size() / 4);
  std::vector<float> out(static_cast<size_t>(num_rois) * channels * pooled_h * pooled_w, -12345.0f);
  RoiPoolCpu(features.data(), channels, height, width, rois.data(), num_rois, scale, pooled_h,
             pooled_w, out.data(), pool);
  return out;
}

TEST(RoiPoolTest, RampHandComputedMaxima) {
  const std::vector<float> f = Ramp(2, 6, 8);
  // x2 = y2 = 5 px at scale 0.5 -> 2.5 -> round half away from zero = 3: a 4 x 4-cell RoI,
  // bins [0, 2) and [2, 4). (Round-half-even would give 3 cells and other windows.)
  const std::vector<float> out = Pool(f, 2, 6, 8, {0, 0, 5, 5}, 0.5f, 2, 2);
  EXPECT_EQ(out, (std::vector<float>{9, 11, 25, 27, 1009, 1011, 1025, 1027}));
}

TEST(RoiPoolTest, NegativeCoordinatesRoundAwayFromZero) {
  const std::vector<float> f = Ramp(1, 6, 8, -100);  // 100 + 8h + w
  // x1 = -5 px -> -2.5 -> -3 (half-even would give -2): the RoI spans cells -3..3 (7 cells); with
  // 7 one-cell bins, columns -3..-1 are off the map (empty -> 0), then cells 0..3 of row 0.
  const std::vector<float> out = Pool(f, 1, 6, 8, {-5, 0, 6, 0}, 0.5f, 1, 7);
  EXPECT_EQ(out, (std::vector<float>{0, 0, 0, 100, 101, 102, 103}));
}

TEST(RoiPoolTest, MalformedRoiBecomesOneCell) {
  const std::vector<float> f = Ramp(1, 6, 8);
  // (10, 10) -> (2, 2) px: start 5, end 1 -> forced to 1 x 1 at cell (5, 5); both bins of each
  // axis ([0, 1) of a 0.5-cell bin) read that cell.
  const std::vector<float> out = Pool(f, 1, 6, 8, {10, 10, 2, 2}, 0.5f, 2, 2);
  EXPECT_EQ(out, (std::vector<float>(4, 8 * 5 + 5)));
}

TEST(RoiPoolTest, ZeroSizeRoiIsOneCell) {
  const std::vector<float> f = Ramp(1, 6, 8);
  const std::vector<float> out = Pool(f, 1, 6, 8, {6, 4, 6, 4}, 0.5f, 3, 3);
  EXPECT_EQ(out, (std::vector<float>(9, 8 * 2 + 3)));
}

TEST(RoiPoolTest, OutOfMapRoiGivesZeros) {
  // All-negative features, so an empty window's 0 differs from any max.
  const std::vector<float> f = Ramp(3, 6, 8, 1e5f);
  std::vector<float> out = Pool(f, 3, 6, 8, {100, 100, 120, 120}, 0.5f, 2, 2);
  EXPECT_EQ(out, std::vector<float>(12, 0.0f));
  out = Pool(f, 3, 6, 8, {-40, -40, -30, -30}, 0.5f, 2, 2);
  EXPECT_EQ(out, std::vector<float>(12, 0.0f));
  // Partly outside: the last row/column clip to the map.
  out = Pool(f, 1, 6, 8, {8, 8, 40, 40}, 0.5f, 2, 2);
  const std::vector<float> naive = NaiveRoiPool(f, 1, 6, 8, {8, 8, 40, 40}, 0.5f, 2, 2);
  EXPECT_EQ(out, naive);
  // Cells 4..20 (17, bins of 8.5): bin (0, 0) is rows [4, 13) and columns [4, 13), clipped to
  // the map; bin (1, 1) starts at 12, beyond it.
  EXPECT_EQ(out[0], 8 * 5 + 7 - 1e5f);
  EXPECT_EQ(out[3], 0.0f);
}

TEST(RoiPoolTest, EmptyMapGivesZeros) {
  std::vector<float> out(2 * 4 * 4, 7.0f);
  const float roi[4] = {0, 0, 10, 10};
  RoiPoolCpu(nullptr, 2, 0, 5, roi, 1, 0.0625f, 4, 4, out.data(), nullptr);
  EXPECT_EQ(out, std::vector<float>(32, 0.0f));
}

TEST(RoiPoolTest, Float32BinEdges) {
  // RoIs of exactly `cells` cells starting at cell 0 (x2 = 16 (cells - 1) px at scale 1/16), 14
  // bins, on a map large enough not to clip. In float32: 29 cells -> the last bin ends at 29 (30
  // in double); 57 -> last bin ends at 58 (57 exact); 58 -> bin 6 ends at 29 and bin 13 at 58 (30
  // and 59 in double); 62 -> bin 7 starts at 30 (31 exact).
  struct Case {
    int cells, bin, start, end;
  };
  const std::vector<Case> cases = {
      {29, 13, 26, 29}, {57, 13, 52, 58}, {58, 6, 24, 29}, {58, 13, 53, 58}, {62, 7, 30, 36}};
  for (const Case& c : cases) {
    const float roi[4] = {0, 0, 16.0f * (c.cells - 1), 16.0f * (c.cells - 1)};
    const RoiBin bin = CaffeRoiBin(roi, 0.0625f, 100, 100, 14, 14, c.bin, c.bin);
    EXPECT_EQ(bin.h_start, c.start) << c.cells << " cells, bin " << c.bin;
    EXPECT_EQ(bin.h_end, c.end) << c.cells << " cells, bin " << c.bin;
    EXPECT_EQ(bin.w_start, c.start) << c.cells << " cells, bin " << c.bin;
    EXPECT_EQ(bin.w_end, c.end) << c.cells << " cells, bin " << c.bin;
  }
  // The pooled output sees it: a 57-cell RoI's last bin includes row/column 57 of a ramp.
  const int size = 70;
  std::vector<float> f(size * size);
  for (int h = 0; h < size; ++h)
    for (int w = 0; w < size; ++w) f[h * size + w] = static_cast<float>(h * size + w);
  const std::vector<float> out = Pool(f, 1, size, size, {0, 0, 16 * 56, 16 * 56}, 0.0625f, 14, 14);
  EXPECT_EQ(out.back(), static_cast<float>(57 * size + 57));
}

struct RandomCase {
  int channels, height, width, num_rois, pooled;
  float scale;
};

TEST(RoiPoolTest, MatchesNaiveOnRandomData) {
  const std::vector<RandomCase> cases = {
      {37, 9, 13, 20, 7, 0.0625f},    // channels not a multiple of the 16-channel block
      {64, 38, 63, 50, 14, 0.0625f},  // the detector's geometry, fewer channels
      {16, 5, 4, 30, 3, 0.5f},
      {1, 1, 1, 5, 2, 1.0f},
  };
  std::mt19937 rng(5);
  std::normal_distribution<float> value(0, 3);
  ThreadPool pool(3);
  for (size_t k = 0; k < cases.size(); ++k) {
    const RandomCase& rc = cases[k];
    std::vector<float> f(static_cast<size_t>(rc.channels) * rc.height * rc.width);
    for (float& v : f) v = value(rng);
    // Pixel extent of the map, and RoIs partly outside it, degenerate, and at .5 rounding points.
    const float extent_w = rc.width / rc.scale, extent_h = rc.height / rc.scale;
    std::uniform_real_distribution<float> x(-0.2f * extent_w, 1.2f * extent_w);
    std::uniform_real_distribution<float> y(-0.2f * extent_h, 1.2f * extent_h);
    std::vector<float> rois;
    for (int r = 0; r < rc.num_rois; ++r) {
      float x1 = x(rng), y1 = y(rng), x2 = x(rng), y2 = y(rng);
      if (r % 4 != 3) {  // mostly well-formed
        if (x2 < x1) std::swap(x1, x2);
        if (y2 < y1) std::swap(y1, y2);
      }
      if (r % 5 == 0) {  // exactly half-way between cells
        x1 = (std::floor(x1 * rc.scale) + 0.5f) / rc.scale;
        y2 = (std::floor(y2 * rc.scale) + 0.5f) / rc.scale;
      }
      rois.insert(rois.end(), {x1, y1, x2, y2});
    }
    const std::vector<float> naive =
        NaiveRoiPool(f, rc.channels, rc.height, rc.width, rois, rc.scale, rc.pooled, rc.pooled);
    EXPECT_EQ(Pool(f, rc.channels, rc.height, rc.width, rois, rc.scale, rc.pooled, rc.pooled),
              naive) << "case " << k << " serial";
    EXPECT_EQ(Pool(f, rc.channels, rc.height, rc.width, rois, rc.scale, rc.pooled, rc.pooled, &pool),
              naive) << "case " << k << " threaded";
  }
}

TEST(RoiPoolTest, PoolerReusedAcrossChunksAndThreads) {
  const int channels = 40, height = 12, width = 17, num_rois = 33, pooled = 5;
  std::mt19937 rng(6);
  std::normal_distribution<float> value(0, 1);
  std::uniform_real_distribution<float> coord(-20, 300);
  std::vector<float> f(static_cast<size_t>(channels) * height * width);
  for (float& v : f) v = value(rng);
  std::vector<float> rois(4 * num_rois);
  for (float& v : rois) v = coord(rng);
  const std::vector<float> naive = NaiveRoiPool(f, channels, height, width, rois, 0.0625f, pooled, pooled);
  ThreadPool pool(2);
  const RoiPooler pooler(f.data(), channels, height, width, &pool);
  const int per_roi = channels * pooled * pooled;
  std::vector<float> out(naive.size(), -1.0f);
  // Chunks of 4 RoIs from the pool's threads, each pooling serially on the shared map.
  pool.ParallelFor(num_rois, 4, [&](int64_t begin, int64_t end, int) {
    pooler.Pool(&rois[4 * begin], static_cast<int>(end - begin), 0.0625f, pooled, pooled,
                &out[begin * per_roi], nullptr);
  });
  EXPECT_EQ(out, naive);
}

}  // namespace
}  // namespace scanserve
