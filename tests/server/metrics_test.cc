// ServerMetrics' engine-stats refresh: cumulative engine values become counters that only move
// forward, per direction for the search phases.
#include "server/metrics.h"

#include <gtest/gtest.h>

namespace scanserve {
namespace {

TEST(ServerMetricsTest, SearchPhasesBecomeCountersPerDirection) {
  ServerMetrics metrics("test");
  EngineStats stats;
  stats.text_to_image = {1.5, 4.0};
  stats.image_to_text = {0.25, 0.5};
  metrics.UpdateFromStats(stats);
  EXPECT_DOUBLE_EQ(metrics.engine_phase_seconds(SearchDirection::kTextToImage, false).Value(), 1.5);
  EXPECT_DOUBLE_EQ(metrics.engine_phase_seconds(SearchDirection::kTextToImage, true).Value(), 4.0);
  EXPECT_DOUBLE_EQ(metrics.engine_phase_seconds(SearchDirection::kImageToText, false).Value(), 0.25);
  EXPECT_DOUBLE_EQ(metrics.engine_phase_seconds(SearchDirection::kImageToText, true).Value(), 0.5);

  stats.text_to_image.score = 6.0;  // grew by 2
  metrics.UpdateFromStats(stats);
  metrics.UpdateFromStats(stats);  // no growth: no change
  EXPECT_DOUBLE_EQ(metrics.engine_phase_seconds(SearchDirection::kTextToImage, true).Value(), 6.0);
  EXPECT_DOUBLE_EQ(metrics.engine_phase_seconds(SearchDirection::kTextToImage, false).Value(), 1.5);

  stats.image_to_text.encode = 0.1;  // a smaller value never moves a counter back
  metrics.UpdateFromStats(stats);
  EXPECT_DOUBLE_EQ(metrics.engine_phase_seconds(SearchDirection::kImageToText, false).Value(), 0.25);
}

TEST(ServerMetricsTest, FeatureMemoryLimitAndCommittedAreGauges) {
  ServerMetrics metrics("test");
  EngineStats stats;
  stats.feature_bytes_limit = 1000;
  stats.feature_bytes_committed = 250;
  metrics.UpdateFromStats(stats);
  EXPECT_EQ(metrics.feature_bytes_limit().Value(), 1000);
  EXPECT_EQ(metrics.feature_bytes_committed().Value(), 250);
  stats.feature_bytes_committed = 100;  // deletes lower it
  metrics.UpdateFromStats(stats);
  EXPECT_EQ(metrics.feature_bytes_committed().Value(), 100);
}

}  // namespace
}  // namespace scanserve
