// The CPU scorer's building blocks: bf16 conversion, the thread pool, GemmNT.
#include <atomic>
#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <thread>
#include <vector>

#include "engine/common/bfloat16.h"
#include "engine/common/thread_pool.h"
#include "engine/scoring/gemm.h"
#include "gtest/gtest.h"

namespace scanserve {
namespace {

float FromBits(uint32_t b) {
  float f;
  std::memcpy(&f, &b, sizeof(f));
  return f;
}

TEST(BFloat16Test, RoundsToNearestEven) {
  EXPECT_EQ(FloatToBFloat16(1.0f), 0x3f80);
  // 1 + 2^-8 is half-way between 1 and 1 + 2^-7: ties go to the even mantissa (1).
  EXPECT_EQ(FloatToBFloat16(FromBits(0x3f808000u)), 0x3f80);
  // 1 + 3·2^-8 is half-way between 1 + 2^-7 (odd) and 1 + 2^-6 (even): rounds up.
  EXPECT_EQ(FloatToBFloat16(FromBits(0x3f818000u)), 0x3f82);
  // Just above half-way rounds up, just below rounds down.
  EXPECT_EQ(FloatToBFloat16(FromBits(0x3f808001u)), 0x3f81);
  EXPECT_EQ(FloatToBFloat16(FromBits(0x3f807fffu)), 0x3f80);
  EXPECT_EQ(FloatToBFloat16(-2.0f), 0xc000);
  EXPECT_EQ(FloatToBFloat16(std::numeric_limits<float>::infinity()), 0x7f80);
  // The largest finite float rounds up to infinity, as round-to-nearest requires.
  EXPECT_EQ(FloatToBFloat16(std::numeric_limits<float>::max()), 0x7f80);
  EXPECT_TRUE(std::isnan(BFloat16ToFloat(FloatToBFloat16(std::nanf("")))));
  EXPECT_TRUE(std::isnan(BFloat16ToFloat(FloatToBFloat16(FromBits(0x7f800001u)))));  // payload in low bits
}

TEST(BFloat16Test, RoundTripErrorBound) {
  std::mt19937 rng(1);
  std::normal_distribution<float> g(0.0f, 1.0f);
  std::vector<float> x(10000), y(10000);
  std::vector<uint16_t> h(10000);
  for (float& v : x) v = g(rng);
  FloatToBFloat16(x.data(), h.data(), 10000);
  BFloat16ToFloat(h.data(), y.data(), 10000);
  for (int i = 0; i < 10000; ++i) {
    EXPECT_LE(std::abs(y[i] - x[i]), std::abs(x[i]) * (1.0f / 256.0f)) << x[i];  // 2^-8 relative
    EXPECT_EQ(y[i], RoundToBFloat16(x[i]));
  }
}

TEST(ThreadPoolTest, CoversEveryIndexOnce) {
  ThreadPool pool(3);
  EXPECT_EQ(pool.num_threads(), 3);
  for (int64_t n : {0, 1, 5, 1000, 12345}) {
    std::vector<std::atomic<int>> hits(static_cast<size_t>(n));
    std::atomic<int> bad_thread{0};
    pool.ParallelFor(n, 7, [&](int64_t b, int64_t e, int t) {
      if (t < 0 || t >= 3) bad_thread++;
      for (int64_t i = b; i < e; ++i) hits[i]++;
    });
    EXPECT_EQ(bad_thread.load(), 0);
    for (int64_t i = 0; i < n; ++i) ASSERT_EQ(hits[i].load(), 1) << "n " << n << " i " << i;
  }
}

TEST(ThreadPoolTest, ConcurrentCallersAreSerialised) {
  ThreadPool pool(2);
  std::atomic<int64_t> total{0};
  std::vector<std::thread> callers;
  for (int c = 0; c < 4; ++c) {
    callers.emplace_back([&] {
      for (int rep = 0; rep < 50; ++rep) {
        pool.ParallelFor(100, 3, [&](int64_t b, int64_t e, int) { total += e - b; });
      }
    });
  }
  for (std::thread& t : callers) t.join();
  EXPECT_EQ(total.load(), 4 * 50 * 100);
}

TEST(ThreadPoolTest, SingleThreadRunsInline) {
  ThreadPool pool(0);
  EXPECT_EQ(pool.num_threads(), 1);
  int64_t sum = 0;
  pool.ParallelFor(10, 3, [&](int64_t b, int64_t e, int t) {
    EXPECT_EQ(t, 0);
    for (int64_t i = b; i < e; ++i) sum += i;
  });
  EXPECT_EQ(sum, 45);
}

TEST(GemmTest, MatchesNaiveWithStrides) {
  std::mt19937 rng(2);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  const int64_t m = 37, n = 19, k = 70, lda = 75, ldb = 71, ldc = 23;
  std::vector<float> a(m * lda), b(n * ldb), c(m * ldc, -7.0f);
  for (float& x : a) x = u(rng);
  for (float& x : b) x = u(rng);
  ASSERT_TRUE(GemmNT(m, n, k, a.data(), lda, b.data(), ldb, c.data(), ldc).ok());
  for (int64_t i = 0; i < m; ++i) {
    for (int64_t j = 0; j < n; ++j) {
      double ref = 0;
      for (int64_t p = 0; p < k; ++p) ref += static_cast<double>(a[i * lda + p]) * b[j * ldb + p];
      EXPECT_NEAR(c[i * ldc + j], ref, 1e-4) << i << "," << j;
    }
    for (int64_t j = n; j < ldc; ++j) EXPECT_EQ(c[i * ldc + j], -7.0f) << "padding written";
  }
}

TEST(GemmTest, RejectsBadShapes) {
  float x = 0;
  EXPECT_EQ(GemmNT(2, 2, 4, &x, 3, &x, 4, &x, 2).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(GemmNT(0, 5, 5, nullptr, 5, nullptr, 5, nullptr, 5).ok());
}

TEST(GemmTest, ThreadsApplied) {
  SetComputeThreads(2);
  EXPECT_EQ(ComputeThreads(), 2);
  EXPECT_NE(std::string(BlasDescription()).find("LibTorch"), std::string::npos);
  SetBlasThreads(1);
  EXPECT_EQ(ComputeThreads(), 2);  // LibTorch's pool keeps its setting
  SetBlasThreads(0);
}

TEST(GemmTest, CallerOnlyMatchesLibraryThreads) {
  std::mt19937 rng(9);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  const int64_t m = 300, n = 40, k = 256;
  std::vector<float> a(m * k), b(n * k), c1(m * n), c2(m * n);
  for (float& x : a) x = u(rng);
  for (float& x : b) x = u(rng);
  ASSERT_TRUE(GemmNT(m, n, k, a.data(), k, b.data(), k, c1.data(), n, GemmThreading::kLibrary).ok());
  std::vector<std::thread> threads;
  for (int t = 0; t < 3; ++t) {
    threads.emplace_back([&] {
      std::vector<float> c(m * n);
      for (int rep = 0; rep < 5; ++rep) {
        EXPECT_TRUE(GemmNT(m, n, k, a.data(), k, b.data(), k, c.data(), n, GemmThreading::kCaller).ok());
      }
      for (int64_t i = 0; i < m * n; ++i) EXPECT_NEAR(c[i], c1[i], 1e-4);
    });
  }
  for (std::thread& t : threads) t.join();
  if (std::string(BlasDescription()).find("OpenBLAS") != std::string::npos) {
    EXPECT_TRUE(CallerOnlyGemmSupported());
  }
}

}  // namespace
}  // namespace scanserve
