// SCAN's retrieval metrics (evaluation.py's i2t / t2i / evalrank), computed from a similarity matrix.
//
// Layout: sims is n_images x n_captions with n_captions == 5 * n_images; captions 5i .. 5i+4 belong
// to image i (the precomputed splits' order).
//  - Sentence retrieval (image -> text, "i2t"): per image, the best (smallest) rank among its five
//    captions in that image's row.
//  - Image retrieval (text -> image, "t2i"): per caption, the rank of its image in that caption's
//    column.
//  - A rank is the 0-based position in descending score order. Ties are resolved optimistically:
//    rank = the number of candidates with a STRICTLY greater score. (The reference takes positions
//    from numpy's unstable argsort, so its tie order is unspecified; with real-valued scores ties
//    do not occur.) NaN scores are INVALID_ARGUMENT.
//  - R@K = 100 * fraction of ranks < K (K = 1, 5, 10); medr = floor(median(ranks)) + 1, the median
//    being numpy's (the mean of the two middle values for an even count); meanr = mean(ranks) + 1;
//    rsum = the six recalls summed.
//  - 5-fold (COCO 1K): five folds of `fold_images` images (1000 in SCAN) and their captions, the
//    diagonal blocks of the full matrix; every metric, rsum included, is the mean over folds.
//    (The reference's fold-5 summary prints 6 x the mean i2t recall as "rsum", a known slip; we
//    report the mean of the per-fold rsums, which is what the papers tabulate.)
#pragma once

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/common/matrix.h"

namespace scanserve {

inline constexpr int64_t kCaptionsPerImage = 5;
inline constexpr int64_t kFold5ImagesPerFold = 1000;  // COCO 1K
inline constexpr int kNumFolds = 5;

// One direction's numbers, in the reference's order (r1, r5, r10, medr, meanr).
struct RecallMetrics {
  double r1 = 0;     // percent
  double r5 = 0;     // percent
  double r10 = 0;    // percent
  double medr = 0;   // 1-based
  double meanr = 0;  // 1-based
};

struct RetrievalMetrics {
  int64_t n_images = 0;
  int64_t n_captions = 0;
  RecallMetrics i2t;  // sentence retrieval
  RecallMetrics t2i;  // image retrieval
  double rsum = 0;    // i2t r1+r5+r10 + t2i r1+r5+r10
};

struct Fold5Metrics {
  std::vector<RetrievalMetrics> folds;  // kNumFolds entries
  RetrievalMetrics mean;                // element-wise mean over folds; n_* are the totals
};

// Per-image best rank among its captions (size n_images) and per-caption rank of its image
// (size n_captions). INVALID_ARGUMENT when n_captions != 5 * n_images, the matrix is empty, or a
// score is NaN.
absl::StatusOr<std::vector<int64_t>> ImageToTextRanks(const FloatMatrix& sims);
absl::StatusOr<std::vector<int64_t>> TextToImageRanks(const FloatMatrix& sims);

// R@1/5/10, medr, meanr of a set of 0-based ranks (non-empty).
RecallMetrics SummarizeRanks(const std::vector<int64_t>& ranks);

absl::StatusOr<RetrievalMetrics> EvaluateRetrieval(const FloatMatrix& sims);

// Five folds of `fold_images` images each; n_images must equal 5 * fold_images.
absl::StatusOr<Fold5Metrics> EvaluateRetrievalFold5(const FloatMatrix& sims,
                                                    int64_t fold_images = kFold5ImagesPerFold);

}  // namespace scanserve
