#include "engine/eval/retrieval_metrics.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "absl/strings/str_cat.h"
#include "engine/common/status_macros.h"

namespace scanserve {
namespace {

// A block of the similarity matrix: images [image_begin, +n_images) x captions
// [5 * image_begin, +5 * n_images), so a fold is evaluated in place without copying.
struct SimsBlock {
  const FloatMatrix* sims = nullptr;
  int64_t image_begin = 0;
  int64_t n_images = 0;

  int64_t n_captions() const { return kCaptionsPerImage * n_images; }
  // Score of (local image i, local caption c).
  float at(int64_t i, int64_t c) const {
    return sims->at(image_begin + i, kCaptionsPerImage * image_begin + c);
  }
};

absl::Status ValidateSims(const FloatMatrix& sims) {
  if (sims.rows <= 0) {
    return absl::InvalidArgumentError("the similarity matrix has no images");
  }
  if (sims.cols != kCaptionsPerImage * sims.rows) {
    return absl::InvalidArgumentError(absl::StrCat(
        "expected 5 captions per image: the similarity matrix is ", sims.rows, " x ", sims.cols,
        ", so n_captions should be ", kCaptionsPerImage * sims.rows));
  }
  if (static_cast<int64_t>(sims.data.size()) != sims.rows * sims.cols) {
    return absl::InvalidArgumentError(absl::StrCat("the similarity matrix holds ", sims.data.size(),
                                                   " values, not ", sims.rows, " x ", sims.cols));
  }
  for (int64_t i = 0; i < sims.rows; ++i) {
    const float* row = sims.row(i);
    for (int64_t c = 0; c < sims.cols; ++c) {
      if (std::isnan(row[c])) {
        return absl::InvalidArgumentError(
            absl::StrCat("the similarity of image ", i, " and caption ", c, " is NaN"));
      }
    }
  }
  return absl::OkStatus();
}

std::vector<int64_t> ImageToTextRanksOf(const SimsBlock& block) {
  std::vector<int64_t> ranks(static_cast<size_t>(block.n_images));
  const int64_t n_captions = block.n_captions();
  for (int64_t i = 0; i < block.n_images; ++i) {
    // The best of the image's own captions: every other caption scoring strictly higher outranks it.
    float best = -std::numeric_limits<float>::infinity();
    for (int64_t k = 0; k < kCaptionsPerImage; ++k) {
      best = std::max(best, block.at(i, kCaptionsPerImage * i + k));
    }
    int64_t rank = 0;
    for (int64_t c = 0; c < n_captions; ++c) rank += block.at(i, c) > best ? 1 : 0;
    ranks[static_cast<size_t>(i)] = rank;
  }
  return ranks;
}

std::vector<int64_t> TextToImageRanksOf(const SimsBlock& block) {
  const int64_t n_captions = block.n_captions();
  std::vector<int64_t> ranks(static_cast<size_t>(n_captions), 0);
  std::vector<float> own(static_cast<size_t>(n_captions));
  for (int64_t c = 0; c < n_captions; ++c) own[static_cast<size_t>(c)] = block.at(c / kCaptionsPerImage, c);
  // Row-major walk: for each image row, bump the rank of every caption it outscores.
  for (int64_t i = 0; i < block.n_images; ++i) {
    for (int64_t c = 0; c < n_captions; ++c) {
      ranks[static_cast<size_t>(c)] += block.at(i, c) > own[static_cast<size_t>(c)] ? 1 : 0;
    }
  }
  return ranks;
}

RetrievalMetrics EvaluateBlock(const SimsBlock& block) {
  RetrievalMetrics m;
  m.n_images = block.n_images;
  m.n_captions = block.n_captions();
  m.i2t = SummarizeRanks(ImageToTextRanksOf(block));
  m.t2i = SummarizeRanks(TextToImageRanksOf(block));
  m.rsum = m.i2t.r1 + m.i2t.r5 + m.i2t.r10 + m.t2i.r1 + m.t2i.r5 + m.t2i.r10;
  return m;
}

void Accumulate(const RecallMetrics& x, RecallMetrics* sum) {
  sum->r1 += x.r1;
  sum->r5 += x.r5;
  sum->r10 += x.r10;
  sum->medr += x.medr;
  sum->meanr += x.meanr;
}

void Divide(double n, RecallMetrics* m) {
  m->r1 /= n;
  m->r5 /= n;
  m->r10 /= n;
  m->medr /= n;
  m->meanr /= n;
}

}  // namespace

RecallMetrics SummarizeRanks(const std::vector<int64_t>& ranks) {
  RecallMetrics m;
  if (ranks.empty()) return m;
  const double n = static_cast<double>(ranks.size());
  int64_t below1 = 0, below5 = 0, below10 = 0;
  double sum = 0;
  for (int64_t r : ranks) {
    below1 += r < 1;
    below5 += r < 5;
    below10 += r < 10;
    sum += static_cast<double>(r);
  }
  // Same expression order as the reference: 100.0 * count / len.
  m.r1 = 100.0 * static_cast<double>(below1) / n;
  m.r5 = 100.0 * static_cast<double>(below5) / n;
  m.r10 = 100.0 * static_cast<double>(below10) / n;

  std::vector<int64_t> sorted = ranks;
  const size_t mid = sorted.size() / 2;
  std::nth_element(sorted.begin(), sorted.begin() + static_cast<std::ptrdiff_t>(mid), sorted.end());
  double median = static_cast<double>(sorted[mid]);
  if (sorted.size() % 2 == 0) {
    const int64_t lower = *std::max_element(sorted.begin(), sorted.begin() + static_cast<std::ptrdiff_t>(mid));
    median = (static_cast<double>(lower) + median) / 2.0;
  }
  m.medr = std::floor(median) + 1.0;
  m.meanr = sum / n + 1.0;
  return m;
}

absl::StatusOr<std::vector<int64_t>> ImageToTextRanks(const FloatMatrix& sims) {
  SCANSERVE_RETURN_IF_ERROR(ValidateSims(sims));
  return ImageToTextRanksOf(SimsBlock{&sims, 0, sims.rows});
}

absl::StatusOr<std::vector<int64_t>> TextToImageRanks(const FloatMatrix& sims) {
  SCANSERVE_RETURN_IF_ERROR(ValidateSims(sims));
  return TextToImageRanksOf(SimsBlock{&sims, 0, sims.rows});
}

absl::StatusOr<RetrievalMetrics> EvaluateRetrieval(const FloatMatrix& sims) {
  SCANSERVE_RETURN_IF_ERROR(ValidateSims(sims));
  return EvaluateBlock(SimsBlock{&sims, 0, sims.rows});
}

absl::StatusOr<Fold5Metrics> EvaluateRetrievalFold5(const FloatMatrix& sims, int64_t fold_images) {
  if (fold_images <= 0) {
    return absl::InvalidArgumentError(absl::StrCat("fold size must be positive, got ", fold_images));
  }
  SCANSERVE_RETURN_IF_ERROR(ValidateSims(sims));
  if (sims.rows != kNumFolds * fold_images) {
    return absl::InvalidArgumentError(absl::StrCat(
        "5-fold evaluation needs exactly ", kNumFolds, " x ", fold_images, " = ",
        kNumFolds * fold_images, " images, got ", sims.rows));
  }
  Fold5Metrics result;
  RetrievalMetrics& mean = result.mean;
  mean.n_images = sims.rows;
  mean.n_captions = sims.cols;
  // Sum in fold order, then divide: numpy's mean(axis=0) over the reference's per-fold rows.
  for (int f = 0; f < kNumFolds; ++f) {
    result.folds.push_back(EvaluateBlock(SimsBlock{&sims, f * fold_images, fold_images}));
    const RetrievalMetrics& fold = result.folds.back();
    Accumulate(fold.i2t, &mean.i2t);
    Accumulate(fold.t2i, &mean.t2i);
    mean.rsum += fold.rsum;
  }
  Divide(kNumFolds, &mean.i2t);
  Divide(kNumFolds, &mean.t2i);
  mean.rsum /= kNumFolds;
  return result;
}

}  // namespace scanserve
