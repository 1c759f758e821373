// CompareRegions: each reference region's best-IoU match, and the feature drift over the matches.
#include "engine/detector/region_drift.h"

#include <gtest/gtest.h>

#include <cmath>

namespace scanserve {
namespace {

DetectedRegions Regions(std::vector<std::array<float, 4>> boxes, std::vector<std::vector<float>> features) {
  DetectedRegions d;
  d.boxes = std::move(boxes);
  d.features = FloatMatrix(static_cast<int64_t>(features.size()), 3);
  for (size_t r = 0; r < features.size(); ++r) {
    std::copy(features[r].begin(), features[r].end(), d.features.row(static_cast<int64_t>(r)));
  }
  return d;
}

TEST(RegionDriftTest, IdenticalDetectionsHaveNoDrift) {
  const DetectedRegions a = Regions({{0, 0, 10, 10}, {20, 20, 40, 30}}, {{1, 2, 3}, {0, 1, 0}});
  const RegionDrift drift = CompareRegions(a, a);
  EXPECT_EQ(drift.reference_regions, 2);
  EXPECT_EQ(drift.matched, 2);
  EXPECT_DOUBLE_EQ(drift.mean_best_iou, 1.0);
  EXPECT_NEAR(drift.mean_cosine, 1.0, 1e-12);
  EXPECT_NEAR(drift.min_cosine, 1.0, 1e-12);
  EXPECT_DOUBLE_EQ(drift.max_relative_l2, 0.0);
}

TEST(RegionDriftTest, MatchesByBestIoUInAnyOrderAndMeasuresTheFeatures) {
  const DetectedRegions reference =
      Regions({{0, 0, 10, 10}, {20, 20, 40, 30}, {100, 100, 110, 110}}, {{3, 4, 0}, {0, 1, 0}, {1, 1, 1}});
  // Reordered; the first box shifted by 0.25 px (IoU 0.956 with inclusive pixels), the third found
  // nowhere.
  const DetectedRegions other =
      Regions({{20, 20, 40, 30}, {0.25f, 0, 10.25f, 10}, {50, 50, 60, 60}}, {{0, 2, 0}, {3, 4, 1}, {9, 9, 9}});
  const RegionDrift drift = CompareRegions(reference, other);
  EXPECT_EQ(drift.reference_regions, 3);
  EXPECT_EQ(drift.other_regions, 3);
  EXPECT_EQ(drift.matched, 2) << "the third region has no box above IoU 0.9";
  const double shifted_iou = 10.75 * 11 / (242 - 10.75 * 11);  // boxes 11 x 11 pixels
  EXPECT_NEAR(drift.mean_best_iou, (shifted_iou + 1.0 + 0.0) / 3, 1e-6);
  // (3,4,0) vs (3,4,1): cosine 25 / (5 * sqrt(26)), |diff| / |a| = 1/5; (0,1,0) vs (0,2,0): 1, 1.
  const double cosine = 25 / (5 * std::sqrt(26.0));
  EXPECT_NEAR(drift.mean_cosine, (cosine + 1.0) / 2, 1e-9);
  EXPECT_NEAR(drift.min_cosine, cosine, 1e-9);
  EXPECT_NEAR(drift.max_relative_l2, 1.0, 1e-9) << "(0,1,0) -> (0,2,0) moves by all of |a|";
}

TEST(RegionDriftTest, EmptyDetections) {
  const DetectedRegions none;
  const DetectedRegions some = Regions({{0, 0, 10, 10}}, {{1, 0, 0}});
  EXPECT_EQ(CompareRegions(none, some).matched, 0);
  const RegionDrift missing = CompareRegions(some, none);
  EXPECT_EQ(missing.reference_regions, 1);
  EXPECT_EQ(missing.matched, 0);
  EXPECT_DOUBLE_EQ(missing.mean_best_iou, 0.0);
}

}  // namespace
}  // namespace scanserve
