#include "engine/scoring/pass_kernel_chooser.h"

#include <cstdint>
#include <functional>
#include <vector>

#include "gtest/gtest.h"

namespace scanserve {
namespace {

// Runs `passes` passes through the chooser with per-kernel times from `seconds`; returns the kernel
// each pass ran.
std::vector<PassKernel> RunPasses(PassKernelChooser& chooser, int passes, int64_t query_rows,
                                  int64_t stored_rows,
                                  const std::function<double(PassKernel)>& seconds) {
  std::vector<PassKernel> ran;
  for (int i = 0; i < passes; ++i) {
    const PassKernel k = chooser.Choose(query_rows, stored_rows);
    chooser.Record(query_rows, stored_rows, k, seconds(k));
    ran.push_back(k);
  }
  return ran;
}

int Count(const std::vector<PassKernel>& ran, PassKernel k, size_t from = 0) {
  int n = 0;
  for (size_t i = from; i < ran.size(); ++i) n += ran[i] == k;
  return n;
}

std::function<double(PassKernel)> Times(double gemm, double fused) {
  return [=](PassKernel k) { return k == PassKernel::kGemm ? gemm : fused; };
}

TEST(PassKernelChooserTest, TimesBothKernelsThenRunsTheFaster) {
  for (const bool fused_faster : {true, false}) {
    SCOPED_TRACE(fused_faster ? "fused faster" : "gemm faster");
    PassKernelChooser chooser({/*timed_passes=*/3, /*reprobe_every=*/1000, 0.05});
    const PassKernel faster = fused_faster ? PassKernel::kFused : PassKernel::kGemm;
    const PassKernel slower = fused_faster ? PassKernel::kGemm : PassKernel::kFused;
    // Each kernel's first pass is slow (module loading): it must not count against it.
    int first_of[2] = {0, 0};
    const std::vector<PassKernel> ran =
        RunPasses(chooser, 100, 12, 36000, [&](PassKernel k) {
          const double t = k == faster ? 1e-3 : 2e-3;
          return first_of[static_cast<int>(k)]++ == 0 ? 1.0 : t;
        });
    // Exploring: 1 untimed + 3 timed passes of each, the GEMM path first.
    EXPECT_EQ(ran[0], PassKernel::kGemm);
    EXPECT_EQ(Count({ran.begin(), ran.begin() + 8}, PassKernel::kGemm), 4);
    EXPECT_EQ(Count({ran.begin(), ran.begin() + 8}, PassKernel::kFused), 4);
    EXPECT_EQ(Count(ran, slower, 8), 0);
    const std::vector<PassKernelChooser::Bucket> buckets = chooser.Buckets();
    ASSERT_EQ(buckets.size(), 1u);
    EXPECT_TRUE(buckets[0].settled);
    EXPECT_EQ(buckets[0].choice, faster);
    EXPECT_EQ(buckets[0].min_query_rows, 9);
    EXPECT_EQ(buckets[0].max_query_rows, 16);
    EXPECT_EQ(buckets[0].stored_rows, 36000);
    EXPECT_DOUBLE_EQ(buckets[0].median_seconds[static_cast<int>(faster)], 1e-3);
    EXPECT_DOUBLE_EQ(buckets[0].median_seconds[static_cast<int>(slower)], 2e-3);
    EXPECT_EQ(buckets[0].passes[static_cast<int>(faster)], 96);
    EXPECT_EQ(buckets[0].passes[static_cast<int>(slower)], 4);
  }
}

TEST(PassKernelChooserTest, ResetForgetsTimesAndFailures) {
  PassKernelChooser chooser({/*timed_passes=*/3, /*reprobe_every=*/1000, 0.05});
  RunPasses(chooser, 20, 12, 36000, Times(2e-3, 1e-3));  // fused chosen
  chooser.RecordFailure(100, PassKernel::kGemm);         // another bucket: gemm failed there
  ASSERT_EQ(chooser.Buckets().size(), 2u);
  chooser.Reset();
  EXPECT_TRUE(chooser.Buckets().empty());
  // Explores afresh, the GEMM path first, and now finds the GEMM path faster.
  const std::vector<PassKernel> ran = RunPasses(chooser, 20, 12, 36000, Times(1e-3, 2e-3));
  EXPECT_EQ(ran[0], PassKernel::kGemm);
  EXPECT_EQ(Count(ran, PassKernel::kFused, 8), 0);
  EXPECT_EQ(chooser.Choose(100, 36000), PassKernel::kGemm);  // its failure is forgotten
}

TEST(PassKernelChooserTest, ChoosesPerBucketOfQueryRows) {
  PassKernelChooser chooser;
  // A lone caption: fused faster. A batch of 64 captions: the GEMM path faster.
  RunPasses(chooser, 20, 14, 1000, Times(2e-3, 1e-3));
  RunPasses(chooser, 20, 800, 1000, Times(5e-3, 9e-3));
  EXPECT_EQ(chooser.Choose(16, 1000), PassKernel::kFused);  // same bucket as 14
  EXPECT_EQ(chooser.Choose(513, 1000), PassKernel::kGemm);  // same bucket as 800
  EXPECT_EQ(chooser.Choose(1, 1000), PassKernel::kGemm);    // new bucket: explores, GEMM first
  const std::vector<PassKernelChooser::Bucket> buckets = chooser.Buckets();
  ASSERT_EQ(buckets.size(), 3u);
  EXPECT_EQ(buckets[0].min_query_rows, 1);
  EXPECT_EQ(buckets[0].max_query_rows, 1);
  EXPECT_FALSE(buckets[0].settled);
  EXPECT_EQ(buckets[1].max_query_rows, 16);
  EXPECT_EQ(buckets[1].choice, PassKernel::kFused);
  EXPECT_EQ(buckets[2].min_query_rows, 513);
  EXPECT_EQ(buckets[2].max_query_rows, 1024);
  EXPECT_EQ(buckets[2].choice, PassKernel::kGemm);
}

TEST(PassKernelChooserTest, ReprobesTheOtherKernelAndFollowsAChange) {
  PassKernelChooser chooser({3, /*reprobe_every=*/10, 0.05});
  RunPasses(chooser, 20, 12, 1000, Times(2e-3, 3e-3));
  ASSERT_EQ(chooser.Buckets()[0].choice, PassKernel::kGemm);
  // The fused kernel gets faster (say another process left the GPU): only the re-probes, one pass
  // in 10, can see it; two of them move its median.
  const std::vector<PassKernel> ran = RunPasses(chooser, 60, 12, 1000, Times(2e-3, 1e-3));
  EXPECT_EQ(Count({ran.begin(), ran.begin() + 10}, PassKernel::kFused), 1);
  EXPECT_EQ(chooser.Buckets()[0].choice, PassKernel::kFused);
  // The GEMM path now runs only as the re-probe, one pass in 10.
  EXPECT_EQ(Count(ran, PassKernel::kGemm, 30), 3);
}

TEST(PassKernelChooserTest, LeavesAKernelThatSlowsDown) {
  PassKernelChooser chooser({3, /*reprobe_every=*/1000, 0.05});
  RunPasses(chooser, 20, 12, 1000, Times(2e-3, 1e-3));
  ASSERT_EQ(chooser.Buckets()[0].choice, PassKernel::kFused);
  // Its own passes update its median: two slow ones are enough.
  const std::vector<PassKernel> ran = RunPasses(chooser, 10, 12, 1000, Times(2e-3, 4e-3));
  EXPECT_EQ(Count({ran.begin(), ran.begin() + 2}, PassKernel::kFused), 2);
  EXPECT_EQ(Count(ran, PassKernel::kFused, 2), 0);
  EXPECT_EQ(chooser.Buckets()[0].choice, PassKernel::kGemm);
}

TEST(PassKernelChooserTest, KeepsItsChoiceWithinTheMargin) {
  PassKernelChooser chooser({3, /*reprobe_every=*/5, 0.05});
  RunPasses(chooser, 20, 12, 1000, Times(1.0e-3, 1.2e-3));
  ASSERT_EQ(chooser.Buckets()[0].choice, PassKernel::kGemm);
  // 3% faster is noise: no switch.
  RunPasses(chooser, 100, 12, 1000, Times(1.0e-3, 0.97e-3));
  EXPECT_EQ(chooser.Buckets()[0].choice, PassKernel::kGemm);
  // 10% faster is not.
  RunPasses(chooser, 100, 12, 1000, Times(1.0e-3, 0.90e-3));
  EXPECT_EQ(chooser.Buckets()[0].choice, PassKernel::kFused);
}

TEST(PassKernelChooserTest, ExploresAgainWhenTheStoreSizeMovesByMoreThanTwice) {
  PassKernelChooser chooser;
  // Small store: fixed overheads make the GEMM path faster.
  RunPasses(chooser, 20, 12, 1000, Times(1e-3, 2e-3));
  ASSERT_EQ(chooser.Buckets()[0].choice, PassKernel::kGemm);
  // Within 2x: the per-row times still compare, no exploration.
  EXPECT_EQ(chooser.Choose(12, 1900), PassKernel::kGemm);
  EXPECT_TRUE(chooser.Buckets()[0].settled);
  // A pass timed at the old size and recorded after the bucket moved on is dropped.
  RunPasses(chooser, 30, 12, 100000, Times(20e-3, 10e-3));
  const PassKernelChooser::Bucket bucket = chooser.Buckets()[0];
  EXPECT_TRUE(bucket.settled);
  EXPECT_EQ(bucket.stored_rows, 100000);
  EXPECT_EQ(bucket.choice, PassKernel::kFused);
  EXPECT_DOUBLE_EQ(bucket.median_seconds[static_cast<int>(PassKernel::kGemm)], 20e-3);
  chooser.Record(12, 1000, PassKernel::kGemm, 1e-6);  // from before: ignored
  EXPECT_DOUBLE_EQ(chooser.Buckets()[0].median_seconds[static_cast<int>(PassKernel::kGemm)], 20e-3);
  // Shrinking by more than 2x explores again too.
  EXPECT_EQ(chooser.Choose(12, 40000), PassKernel::kGemm);
  EXPECT_FALSE(chooser.Buckets()[0].settled);
}

TEST(PassKernelChooserTest, StopsChoosingAKernelThatFailed) {
  for (const PassKernel failing : {PassKernel::kFused, PassKernel::kGemm}) {
    SCOPED_TRACE(PassKernelName(failing));
    PassKernelChooser chooser({/*timed_passes=*/2, /*reprobe_every=*/3, 0.05});
    std::vector<PassKernel> ran;
    for (int i = 0; i < 20; ++i) {
      const PassKernel k = chooser.Choose(12, 1000);
      ran.push_back(k);
      if (k == failing) {
        chooser.RecordFailure(12, k);
      } else {
        chooser.Record(12, 1000, k, 1e-3);
      }
    }
    // One failed pass; from then on the other kernel only, re-probes included.
    EXPECT_EQ(Count(ran, failing), 1);
    const PassKernelChooser::Bucket bucket = chooser.Buckets()[0];
    EXPECT_TRUE(bucket.failed[static_cast<int>(failing)]);
    EXPECT_FALSE(bucket.failed[1 - static_cast<int>(failing)]);
    EXPECT_NE(bucket.choice, failing);
    EXPECT_EQ(bucket.passes[static_cast<int>(failing)], 1);
    // Other buckets are not affected.
    EXPECT_EQ(chooser.Choose(100, 1000), PassKernel::kGemm);
    EXPECT_FALSE(chooser.Buckets()[1].failed[static_cast<int>(failing)]);
  }
  // The chosen, faster kernel fails later: the slower one runs from then on, and stays the
  // reported choice however its times compare with the failed kernel's.
  PassKernelChooser chooser({/*timed_passes=*/2, /*reprobe_every=*/3, 0.05});
  RunPasses(chooser, 10, 12, 1000, Times(2e-3, 1e-3));
  ASSERT_EQ(chooser.Buckets()[0].choice, PassKernel::kFused);
  chooser.RecordFailure(12, PassKernel::kFused);
  const std::vector<PassKernel> ran = RunPasses(chooser, 10, 12, 1000, Times(2e-3, 1e-3));
  EXPECT_EQ(Count(ran, PassKernel::kGemm), 10);
  EXPECT_EQ(chooser.Buckets()[0].choice, PassKernel::kGemm);
}

}  // namespace
}  // namespace scanserve
