// ServerMetrics' engine-stats refresh: cumulative engine values become counters that only move
// forward, per direction for the search phases and per direction and path for ranked queries.
#include "server/metrics.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <string>
#include <vector>

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

TEST(ServerMetricsTest, RankedQueriesBecomeCountersPerDirectionAndPath) {
  ServerMetrics metrics("test");
  const auto value = [&](SearchDirection d, const char* path) {
    return metrics.engine_ranked_queries(d, path).Value();
  };
  EngineStats stats;
  stats.text_to_image_ranking = {7, 3, 1};
  stats.image_to_text_ranking = {0, 0, 5};
  metrics.UpdateFromStats(stats);
  EXPECT_DOUBLE_EQ(value(SearchDirection::kTextToImage, "scorer_top_k"), 7);
  EXPECT_DOUBLE_EQ(value(SearchDirection::kTextToImage, "top_lists"), 3);
  EXPECT_DOUBLE_EQ(value(SearchDirection::kTextToImage, "full_scores"), 1);
  EXPECT_DOUBLE_EQ(value(SearchDirection::kImageToText, "scorer_top_k"), 0);
  EXPECT_DOUBLE_EQ(value(SearchDirection::kImageToText, "full_scores"), 5);
  stats.text_to_image_ranking.top_lists = 10;  // grew by 7
  metrics.UpdateFromStats(stats);
  metrics.UpdateFromStats(stats);
  EXPECT_DOUBLE_EQ(value(SearchDirection::kTextToImage, "top_lists"), 10);
  EXPECT_DOUBLE_EQ(value(SearchDirection::kTextToImage, "scorer_top_k"), 7);
}

TEST(ServerMetricsTest, DeviceMemoryGaugesOnlyForAGpuBackend) {
  ServerMetrics metrics("test");
  EngineStats stats;
  stats.backend = "cpu";
  metrics.UpdateFromStats(stats);
  const auto families = [&] {
    std::vector<std::string> names;
    for (const auto& f : metrics.registry()->Collect()) {
      if (!f.metric.empty()) names.push_back(f.name);
    }
    return names;
  };
  auto names = families();
  EXPECT_EQ(std::count(names.begin(), names.end(), "scanserve_device_memory_free_bytes"), 0);
  stats.backend = "cuda:0";
  stats.device_memory_free_bytes = 3 << 20;
  stats.device_memory_total_bytes = 8 << 20;
  metrics.UpdateFromStats(stats);
  EXPECT_EQ(metrics.device_memory_free("cuda:0").Value(), 3 << 20);
  EXPECT_EQ(metrics.device_memory_total("cuda:0").Value(), 8 << 20);
  names = families();
  EXPECT_EQ(std::count(names.begin(), names.end(), "scanserve_device_memory_total_bytes"), 1);
}

// Scoring passes per kernel follow the engine's cumulative counts; none exist on the CPU.
TEST(ServerMetricsTest, ScorerPassesByKernel) {
  ServerMetrics metrics("test");
  EngineStats stats;
  metrics.UpdateFromStats(stats);
  for (const auto& f : metrics.registry()->Collect()) {
    if (f.name == "scanserve_scorer_passes_total") EXPECT_TRUE(f.metric.empty());
  }
  stats.scorer_passes = {{"fused", 3}, {"gemm", 1}};
  metrics.UpdateFromStats(stats);
  stats.scorer_passes["fused"] = 8;
  metrics.UpdateFromStats(stats);
  metrics.UpdateFromStats(stats);
  EXPECT_DOUBLE_EQ(metrics.scorer_passes("fused").Value(), 8);
  EXPECT_DOUBLE_EQ(metrics.scorer_passes("gemm").Value(), 1);
}

// --cuda-kernels auto: the chosen kernel per direction and query rows is 1, the other 0 (both 0
// while it still times them), beside the median times it chose by; absent without choices.
TEST(ServerMetricsTest, ScorerInfo) {
  ServerMetrics metrics("test");
  EngineStats stats;
  stats.backend = "cuda:0";
  stats.storage = "bf16";
  stats.query_precision = "bf16";
  metrics.UpdateFromStats(stats);
  metrics.UpdateFromStats(stats);
  int series = 0;
  for (const auto& f : metrics.registry()->Collect()) {
    if (f.name != "scanserve_scorer_info") continue;
    for (const auto& m : f.metric) {
      ++series;
      std::map<std::string, std::string> labels;
      for (const auto& l : m.label) labels[l.name] = l.value;
      EXPECT_EQ(labels, (std::map<std::string, std::string>{
                            {"backend", "cuda:0"}, {"storage", "bf16"}, {"query_precision", "bf16"}}));
      EXPECT_EQ(m.gauge.value, 1);
    }
  }
  EXPECT_EQ(series, 1);
}

TEST(ServerMetricsTest, ScorerKernelChoices) {
  ServerMetrics metrics("test");
  EngineStats stats;
  metrics.UpdateFromStats(stats);
  for (const auto& f : metrics.registry()->Collect()) {
    if (f.name == "scanserve_scorer_kernel_chosen" ||
        f.name == "scanserve_scorer_kernel_pass_seconds") {
      EXPECT_TRUE(f.metric.empty()) << f.name;
    }
  }
  Scorer::KernelChoice lone;
  lone.min_query_rows = 9;
  lone.max_query_rows = 16;
  lone.kernel = "fused";
  lone.median_seconds = {{"gemm", 0.030}, {"fused", 0.021}};
  Scorer::KernelChoice timing;  // still timing both: one kernel timed so far
  timing.min_query_rows = timing.max_query_rows = 1;
  timing.median_seconds = {{"gemm", 0.025}};
  Scorer::KernelChoice batch;
  batch.min_query_rows = 513;
  batch.max_query_rows = 1024;
  batch.kernel = "gemm";
  stats.text_to_image_kernels = {lone, timing};
  stats.image_to_text_kernels = {batch};
  metrics.UpdateFromStats(stats);
  const SearchDirection t2i = SearchDirection::kTextToImage, i2t = SearchDirection::kImageToText;
  EXPECT_EQ(metrics.scorer_kernel_chosen(t2i, "9-16", "fused").Value(), 1);
  EXPECT_EQ(metrics.scorer_kernel_chosen(t2i, "9-16", "gemm").Value(), 0);
  EXPECT_DOUBLE_EQ(metrics.scorer_kernel_pass_seconds(t2i, "9-16", "gemm").Value(), 0.030);
  EXPECT_DOUBLE_EQ(metrics.scorer_kernel_pass_seconds(t2i, "9-16", "fused").Value(), 0.021);
  EXPECT_EQ(metrics.scorer_kernel_chosen(t2i, "1", "fused").Value(), 0);
  EXPECT_EQ(metrics.scorer_kernel_chosen(t2i, "1", "gemm").Value(), 0);
  EXPECT_DOUBLE_EQ(metrics.scorer_kernel_pass_seconds(t2i, "1", "gemm").Value(), 0.025);
  EXPECT_EQ(metrics.scorer_kernel_chosen(i2t, "513-1024", "gemm").Value(), 1);
  EXPECT_EQ(metrics.scorer_kernel_chosen(i2t, "513-1024", "fused").Value(), 0);
  // The choice turns: the gauges follow.
  stats.image_to_text_kernels[0].kernel = "fused";
  metrics.UpdateFromStats(stats);
  EXPECT_EQ(metrics.scorer_kernel_chosen(i2t, "513-1024", "gemm").Value(), 0);
  EXPECT_EQ(metrics.scorer_kernel_chosen(i2t, "513-1024", "fused").Value(), 1);
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

// The store's write failures only move forward (the engine's count is cumulative); its disk's free
// space is a gauge, absent until the engine knows it.
TEST(ServerMetricsTest, StoreFailedWritesAndDiskFreeSpace) {
  ServerMetrics metrics("test");
  EngineStats stats;
  metrics.UpdateFromStats(stats);
  EXPECT_EQ(metrics.store_failed_writes().Value(), 0);
  for (const auto& f : metrics.registry()->Collect()) {
    if (f.name == "scanserve_store_disk_free_bytes") EXPECT_TRUE(f.metric.empty());
  }
  stats.store_failed_writes = 3;
  stats.store_disk_free_bytes = 4096;
  metrics.UpdateFromStats(stats);
  EXPECT_EQ(metrics.store_failed_writes().Value(), 3);
  EXPECT_EQ(metrics.store_disk_free_bytes().Value(), 4096);
  stats.store_failed_writes = 5;
  stats.store_disk_free_bytes = 1 << 30;
  metrics.UpdateFromStats(stats);
  EXPECT_EQ(metrics.store_failed_writes().Value(), 5);
  EXPECT_EQ(metrics.store_disk_free_bytes().Value(), 1 << 30);
}

// Writes stopped by an I/O error: a gauge that follows the engine; reopens only move forward.
TEST(ServerMetricsTest, StoreWritesStoppedAndReopens) {
  ServerMetrics metrics("test");
  EngineStats stats;
  metrics.UpdateFromStats(stats);
  EXPECT_EQ(metrics.store_writes_stopped().Value(), 0);
  EXPECT_EQ(metrics.store_reopens().Value(), 0);
  stats.store_writes_stopped = true;
  metrics.UpdateFromStats(stats);
  EXPECT_EQ(metrics.store_writes_stopped().Value(), 1);
  stats.store_writes_stopped = false;
  stats.store_reopens = 2;
  metrics.UpdateFromStats(stats);
  EXPECT_EQ(metrics.store_writes_stopped().Value(), 0);
  EXPECT_EQ(metrics.store_reopens().Value(), 2);
  metrics.UpdateFromStats(stats);
  EXPECT_EQ(metrics.store_reopens().Value(), 2);
}

// The change log's ends follow the engine, both ways: a restored snapshot starts a log of its own.
TEST(ServerMetricsTest, StoreChangeLogEnds) {
  ServerMetrics metrics("test");
  EngineStats stats;
  metrics.UpdateFromStats(stats);
  EXPECT_EQ(metrics.store_change_log_last_sequence().Value(), 0);
  EXPECT_EQ(metrics.store_change_log_trimmed_through().Value(), 0);
  stats.last_change_sequence = 1234;
  stats.changes_trimmed_through = 1000;
  metrics.UpdateFromStats(stats);
  EXPECT_EQ(metrics.store_change_log_last_sequence().Value(), 1234);
  EXPECT_EQ(metrics.store_change_log_trimmed_through().Value(), 1000);
  stats.last_change_sequence = 7;
  stats.changes_trimmed_through = 0;
  metrics.UpdateFromStats(stats);
  EXPECT_EQ(metrics.store_change_log_last_sequence().Value(), 7);
  EXPECT_EQ(metrics.store_change_log_trimmed_through().Value(), 0);
}

}  // namespace
}  // namespace scanserve
