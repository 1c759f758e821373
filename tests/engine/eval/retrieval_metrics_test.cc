// engine/eval/retrieval_metrics: SCAN's i2t / t2i protocol on hand-made matrices with known ranks,
// ties, medians, 5-fold averaging, and a comparison against numpy's evaluation code (skipped when
// /usr/bin/python3 lacks numpy).
#include "engine/eval/retrieval_metrics.h"

#include <stdlib.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"

namespace scanserve {
namespace {

constexpr char kPython[] = "/usr/bin/python3";
// Recalls are count-based, so they match numpy exactly; medr/meanr too (integer sums).
constexpr double kExact = 0.0;
// Fold means are sums of five doubles divided by five, like numpy; allow last-bit differences.
constexpr double kFoldMeanTol = 1e-9;

// A matrix where caption c's own image scores `own` and every other image scores 0.
FloatMatrix DiagonalSims(int64_t n_images, float own = 1.0f) {
  FloatMatrix sims(n_images, 5 * n_images);
  for (int64_t c = 0; c < sims.cols; ++c) sims.at(c / 5, c) = own;
  return sims;
}

TEST(RetrievalMetricsTest, PerfectMatrixHasRankZeroEverywhere) {
  const FloatMatrix sims = DiagonalSims(4);
  auto metrics = EvaluateRetrieval(sims);
  ASSERT_TRUE(metrics.ok()) << metrics.status();
  EXPECT_EQ(metrics->n_images, 4);
  EXPECT_EQ(metrics->n_captions, 20);
  for (const RecallMetrics& m : {metrics->i2t, metrics->t2i}) {
    EXPECT_EQ(m.r1, 100.0);
    EXPECT_EQ(m.r5, 100.0);
    EXPECT_EQ(m.r10, 100.0);
    EXPECT_EQ(m.medr, 1.0);
    EXPECT_EQ(m.meanr, 1.0);
  }
  EXPECT_EQ(metrics->rsum, 600.0);
}

TEST(RetrievalMetricsTest, KnownRanks) {
  // 3 images, 15 captions; scores chosen so the ranks are easy to count.
  FloatMatrix sims(3, 15);
  for (int64_t i = 0; i < 3; ++i) {
    for (int64_t c = 0; c < 15; ++c) sims.at(i, c) = 0.01f * static_cast<float>(c);  // ascending
  }
  // Image 0: its captions 0..4 score lowest (0..0.04); best own = 0.04 -> 10 captions above: rank 10.
  // Image 1: its captions 5..9 score 0.05..0.09; best own = 0.09 -> 5 above: rank 5.
  // Image 2: its captions 10..14 are the top: rank 0.
  auto i2t = ImageToTextRanks(sims);
  ASSERT_TRUE(i2t.ok()) << i2t.status();
  EXPECT_EQ(*i2t, (std::vector<int64_t>{10, 5, 0}));

  // Every column is constant across images -> all ties -> optimistic rank 0.
  auto t2i = TextToImageRanks(sims);
  ASSERT_TRUE(t2i.ok()) << t2i.status();
  EXPECT_EQ(*t2i, std::vector<int64_t>(15, 0));

  // Now make image 2 the best match of every caption of image 0 and 1, image 1 second.
  for (int64_t c = 0; c < 15; ++c) {
    sims.at(0, c) = 0.0f;
    sims.at(1, c) = 0.5f;
    sims.at(2, c) = 1.0f;
  }
  t2i = TextToImageRanks(sims);
  ASSERT_TRUE(t2i.ok());
  // Captions of image 0: two images above -> 2; of image 1: one above -> 1; of image 2: 0.
  EXPECT_EQ(*t2i, (std::vector<int64_t>{2, 2, 2, 2, 2, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0}));
  auto metrics = EvaluateRetrieval(sims);
  ASSERT_TRUE(metrics.ok());
  EXPECT_DOUBLE_EQ(metrics->t2i.r1, 100.0 / 3);
  EXPECT_EQ(metrics->t2i.r5, 100.0);
  EXPECT_EQ(metrics->t2i.medr, 2.0);   // median of {0 x5, 1 x5, 2 x5} = 1
  EXPECT_EQ(metrics->t2i.meanr, 2.0);  // mean 1
}

TEST(RetrievalMetricsTest, I2tTakesTheBestOfFiveCaptions) {
  FloatMatrix sims = DiagonalSims(3, 0.0f);
  // Image 1: own captions 5..9; caption 8 scores 0.9, and 4 foreign captions score above it.
  for (int64_t c : {0, 1, 12, 13}) sims.at(1, c) = 0.95f;
  sims.at(1, 8) = 0.9f;
  sims.at(1, 10) = 0.9f;  // a tie with the best own caption does not count against it
  auto ranks = ImageToTextRanks(sims);
  ASSERT_TRUE(ranks.ok());
  EXPECT_EQ((*ranks)[1], 4);
}

TEST(RetrievalMetricsTest, TiesCountOnlyStrictlyGreaterScores) {
  FloatMatrix sims(2, 10);  // all zero: everything ties
  auto metrics = EvaluateRetrieval(sims);
  ASSERT_TRUE(metrics.ok());
  EXPECT_EQ(metrics->i2t.r1, 100.0);
  EXPECT_EQ(metrics->t2i.r1, 100.0);
  EXPECT_EQ(metrics->rsum, 600.0);
}

TEST(RetrievalMetricsTest, MedianOddAndEvenCounts) {
  // numpy: median([0, 3, 7]) = 3 -> medr 4; median([0, 1, 4, 8]) = 2.5 -> floor + 1 = 3.
  EXPECT_EQ(SummarizeRanks({7, 0, 3}).medr, 4.0);
  EXPECT_EQ(SummarizeRanks({8, 0, 4, 1}).medr, 3.0);
  EXPECT_EQ(SummarizeRanks({5, 4}).medr, 5.0);  // 4.5 -> 4 + 1
  EXPECT_EQ(SummarizeRanks({2}).medr, 3.0);
  const RecallMetrics m = SummarizeRanks({0, 0, 4, 9, 10, 30});
  EXPECT_DOUBLE_EQ(m.r1, 100.0 * 2 / 6);
  EXPECT_DOUBLE_EQ(m.r5, 100.0 * 3 / 6);
  EXPECT_DOUBLE_EQ(m.r10, 100.0 * 4 / 6);
  EXPECT_EQ(m.medr, 7.0);  // median (4 + 9) / 2 = 6.5 -> 6 + 1
  EXPECT_DOUBLE_EQ(m.meanr, 53.0 / 6 + 1);
}

TEST(RetrievalMetricsTest, RejectsWrongCaptionCount) {
  FloatMatrix sims(3, 14);
  auto metrics = EvaluateRetrieval(sims);
  EXPECT_EQ(metrics.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(metrics.status().message().find("3 x 14"), std::string::npos) << metrics.status();
  EXPECT_NE(metrics.status().message().find("15"), std::string::npos) << metrics.status();
  EXPECT_EQ(ImageToTextRanks(FloatMatrix(2, 2)).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(TextToImageRanks(FloatMatrix(0, 0)).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(RetrievalMetricsTest, RejectsNaN) {
  FloatMatrix sims = DiagonalSims(2);
  sims.at(1, 3) = std::nanf("");
  auto metrics = EvaluateRetrieval(sims);
  EXPECT_EQ(metrics.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(metrics.status().message().find("image 1 and caption 3"), std::string::npos)
      << metrics.status();
}

// 5-fold on a 5000-caption matrix (1000 images, folds of 200): each fold sees only its diagonal
// block, and the summary is the per-fold mean.
TEST(RetrievalMetricsTest, Fold5AveragesDiagonalBlocks) {
  constexpr int64_t kImages = 1000, kFold = 200;
  FloatMatrix sims = DiagonalSims(kImages, 1.0f);
  // Fold f: in its first f * 40 images, a foreign caption (of the next image, inside the fold)
  // outscores all of the image's own captions -> i2t rank 1 for those images.
  for (int f = 0; f < 5; ++f) {
    for (int64_t j = 0; j < f * 40; ++j) {
      const int64_t image = f * kFold + j;
      sims.at(image, 5 * (image + 1)) = 2.0f;
    }
  }
  // Off-block scores are huge: they would wreck every rank if folds were not isolated.
  for (int64_t c = 0; c < sims.cols; ++c) {
    const int64_t other = (c / 5 + kFold) % kImages;
    sims.at(other, c) = 100.0f;
  }
  auto folds = EvaluateRetrievalFold5(sims, kFold);
  ASSERT_TRUE(folds.ok()) << folds.status();
  ASSERT_EQ(folds->folds.size(), 5u);
  double r1_sum = 0, rsum_sum = 0;
  for (int f = 0; f < 5; ++f) {
    const RetrievalMetrics& m = folds->folds[static_cast<size_t>(f)];
    EXPECT_EQ(m.n_images, kFold);
    EXPECT_EQ(m.n_captions, 5 * kFold);
    EXPECT_DOUBLE_EQ(m.i2t.r1, 100.0 * static_cast<double>(kFold - f * 40) / kFold) << f;
    EXPECT_EQ(m.i2t.r5, 100.0) << f;
    // Column 5 * (image + 1) has 2.0 at `image`, above its own image's 1.0: t2i rank 1.
    EXPECT_DOUBLE_EQ(m.t2i.r1, 100.0 * static_cast<double>(5 * kFold - f * 40) / (5 * kFold)) << f;
    r1_sum += m.i2t.r1;
    rsum_sum += m.rsum;
  }
  EXPECT_NEAR(folds->mean.i2t.r1, r1_sum / 5, kFoldMeanTol);
  EXPECT_NEAR(folds->mean.rsum, rsum_sum / 5, kFoldMeanTol);
  EXPECT_EQ(folds->mean.n_images, kImages);
  EXPECT_EQ(folds->mean.n_captions, 5 * kImages);

  // The full-matrix evaluation sees the off-block 100s.
  auto full = EvaluateRetrieval(sims);
  ASSERT_TRUE(full.ok());
  EXPECT_EQ(full->t2i.r1, 0.0);

  EXPECT_EQ(EvaluateRetrievalFold5(sims).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(EvaluateRetrievalFold5(sims, 0).status().code(), absl::StatusCode::kInvalidArgument);
}

// ---- Against numpy: SCAN's own i2t / t2i code (argsort-based) on random matrices.

class NumpyParityTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (access(kPython, X_OK) != 0 ||
        std::system(absl::StrCat(kPython, " -c 'import numpy' >/dev/null 2>&1").c_str()) != 0) {
      GTEST_SKIP() << kPython << " with numpy is not available";
    }
    std::string tmpl = ::testing::TempDir() + "metrics_test_XXXXXX";
    ASSERT_NE(mkdtemp(tmpl.data()), nullptr);
    dir_ = tmpl;
  }
  void TearDown() override {
    if (!dir_.empty()) std::system(("rm -rf '" + dir_ + "'").c_str());
  }

  // Writes sims as raw float32, runs the reference evaluation in numpy, and returns its numbers:
  // per fold (or the whole matrix) r1 r5 r10 medr meanr (i2t), the same (t2i), rsum.
  std::vector<std::vector<double>> NumpyMetrics(const FloatMatrix& sims, bool fold5) {
    const std::string bin = dir_ + "/sims.f32";
    std::ofstream(bin, std::ios::binary)
        .write(reinterpret_cast<const char*>(sims.data.data()),
               static_cast<std::streamsize>(sims.data.size() * sizeof(float)));
    const std::string out = dir_ + "/out.txt";
    const std::string script = dir_ + "/ref.py";
    std::ofstream(script) << R"(import sys, numpy
# SCAN evaluation.py i2t / t2i, verbatim apart from taking the sims matrix directly.
def i2t(npts, sims):
    ranks = numpy.zeros(npts)
    for index in range(npts):
        inds = numpy.argsort(sims[index])[::-1]
        rank = 1e20
        for i in range(5 * index, 5 * index + 5, 1):
            tmp = numpy.where(inds == i)[0][0]
            if tmp < rank:
                rank = tmp
        ranks[index] = rank
    r1 = 100.0 * len(numpy.where(ranks < 1)[0]) / len(ranks)
    r5 = 100.0 * len(numpy.where(ranks < 5)[0]) / len(ranks)
    r10 = 100.0 * len(numpy.where(ranks < 10)[0]) / len(ranks)
    medr = numpy.floor(numpy.median(ranks)) + 1
    meanr = ranks.mean() + 1
    return (r1, r5, r10, medr, meanr)
def t2i(npts, sims):
    ranks = numpy.zeros(5 * npts)
    sims = sims.T
    for index in range(npts):
        for i in range(5):
            inds = numpy.argsort(sims[5 * index + i])[::-1]
            ranks[5 * index + i] = numpy.where(inds == index)[0][0]
    r1 = 100.0 * len(numpy.where(ranks < 1)[0]) / len(ranks)
    r5 = 100.0 * len(numpy.where(ranks < 5)[0]) / len(ranks)
    r10 = 100.0 * len(numpy.where(ranks < 10)[0]) / len(ranks)
    medr = numpy.floor(numpy.median(ranks)) + 1
    meanr = ranks.mean() + 1
    return (r1, r5, r10, medr, meanr)
path, n, fold5, out = sys.argv[1], int(sys.argv[2]), sys.argv[3] == '1', sys.argv[4]
sims = numpy.fromfile(path, dtype=numpy.float32).reshape(n, 5 * n)
blocks = [sims[i * n // 5:(i + 1) * n // 5, i * n:(i + 1) * n] for i in range(5)] if fold5 else [sims]
with open(out, 'w') as f:
    for b in blocks:
        r, ri = i2t(b.shape[0], b), t2i(b.shape[0], b)
        rsum = r[0] + r[1] + r[2] + ri[0] + ri[1] + ri[2]
        f.write(' '.join(repr(float(x)) for x in list(r) + list(ri) + [rsum]) + '\n')
)";
    const std::string cmd = absl::StrCat(kPython, " ", script, " ", bin, " ", sims.rows, " ",
                                         fold5 ? 1 : 0, " ", out);
    EXPECT_EQ(std::system(cmd.c_str()), 0) << cmd;
    std::vector<std::vector<double>> rows;
    std::ifstream in(out);
    std::string line;
    while (std::getline(in, line)) {
      std::vector<double> values;
      std::istringstream fields(line);
      double v;
      while (fields >> v) values.push_back(v);
      rows.push_back(values);
    }
    return rows;
  }

  static std::vector<double> Flatten(const RetrievalMetrics& m) {
    return {m.i2t.r1, m.i2t.r5, m.i2t.r10, m.i2t.medr, m.i2t.meanr,
            m.t2i.r1, m.t2i.r5, m.t2i.r10, m.t2i.medr, m.t2i.meanr, m.rsum};
  }

  // Random scores with a planted signal so recalls are neither 0 nor 100; continuous values, so
  // no ties and the argsort order is unambiguous.
  static FloatMatrix RandomSims(int64_t n_images, float signal, uint32_t seed) {
    std::mt19937 rng(seed);
    std::normal_distribution<float> noise(0.0f, 1.0f);
    FloatMatrix sims(n_images, 5 * n_images);
    for (int64_t i = 0; i < n_images; ++i) {
      for (int64_t c = 0; c < sims.cols; ++c) sims.at(i, c) = noise(rng) + (c / 5 == i ? signal : 0.0f);
    }
    return sims;
  }

  std::string dir_;
};

TEST_F(NumpyParityTest, FullMatrixMatchesReference) {
  for (auto [n, signal] : {std::pair<int64_t, float>{37, 1.5f}, {100, 2.5f}, {200, 0.5f}}) {
    const FloatMatrix sims = RandomSims(n, signal, static_cast<uint32_t>(n));
    auto ours = EvaluateRetrieval(sims);
    ASSERT_TRUE(ours.ok()) << ours.status();
    const auto ref = NumpyMetrics(sims, /*fold5=*/false);
    ASSERT_EQ(ref.size(), 1u);
    const std::vector<double> mine = Flatten(*ours);
    ASSERT_EQ(ref[0].size(), mine.size());
    for (size_t k = 0; k < mine.size(); ++k) {
      EXPECT_NEAR(mine[k], ref[0][k], kExact) << "n=" << n << " metric " << k;
    }
  }
}

TEST_F(NumpyParityTest, Fold5MatchesReference) {
  const FloatMatrix sims = RandomSims(250, 2.0f, 7);  // folds of 50 images
  auto ours = EvaluateRetrievalFold5(sims, 50);
  ASSERT_TRUE(ours.ok()) << ours.status();
  const auto ref = NumpyMetrics(sims, /*fold5=*/true);
  ASSERT_EQ(ref.size(), 5u);
  std::vector<double> ref_mean(11, 0.0);
  for (size_t f = 0; f < 5; ++f) {
    const std::vector<double> mine = Flatten(ours->folds[f]);
    for (size_t k = 0; k < mine.size(); ++k) {
      EXPECT_NEAR(mine[k], ref[f][k], kExact) << "fold " << f << " metric " << k;
      ref_mean[k] += ref[f][k];
    }
  }
  const std::vector<double> mean = Flatten(ours->mean);
  for (size_t k = 0; k < mean.size(); ++k) {
    EXPECT_NEAR(mean[k], ref_mean[k] / 5, kFoldMeanTol) << "mean metric " << k;
  }
}

}  // namespace
}  // namespace scanserve
