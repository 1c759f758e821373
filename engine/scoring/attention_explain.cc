#include "engine/scoring/attention_explain.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "absl/strings/str_cat.h"
#include "engine/common/status_macros.h"

namespace scanserve {
namespace {

constexpr double kL2NormEps = 1e-8;  // added to the norm, as the reference's l2norm
constexpr double kLeakySlope = 0.1;

double LeakyRelu(double x) { return x >= 0 ? x : kLeakySlope * x; }

}  // namespace

absl::StatusOr<FloatMatrix> TextToImageAttention(ItemView words, ItemView regions, int64_t dim,
                                                 RawFeatureNorm raw_feature_norm,
                                                 float lambda_softmax) {
  if (words.data == nullptr || regions.data == nullptr || words.rows < 1 || regions.rows < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("TextToImageAttention: needs >= 1 word and >= 1 region, got ", words.rows,
                     " and ", regions.rows));
  }
  if (dim < 1)
    return absl::InvalidArgumentError(absl::StrCat("TextToImageAttention: dim is ", dim));
  if (!std::isfinite(lambda_softmax)) {
    return absl::InvalidArgumentError(
        absl::StrCat("TextToImageAttention: lambda_softmax must be finite, got ", lambda_softmax));
  }
  const int64_t n = words.rows;
  const int64_t k = regions.rows;

  // a[i * n + t] = <v_i, e_t>, then normalised per region i over the words t.
  std::vector<double> a(static_cast<size_t>(k * n));
  for (int64_t i = 0; i < k; ++i) {
    const float* v = regions.data + i * dim;
    for (int64_t t = 0; t < n; ++t) {
      const float* e = words.data + t * dim;
      double dot = 0;
      for (int64_t d = 0; d < dim; ++d) dot += static_cast<double>(v[d]) * e[d];
      a[static_cast<size_t>(i * n + t)] = dot;
    }
    double* row = a.data() + i * n;
    switch (raw_feature_norm) {
      case RawFeatureNorm::kClippedL2Norm:
      case RawFeatureNorm::kL2Norm: {
        if (raw_feature_norm == RawFeatureNorm::kClippedL2Norm) {
          for (int64_t t = 0; t < n; ++t) row[t] = LeakyRelu(row[t]);
        }
        double sq = 0;
        for (int64_t t = 0; t < n; ++t) sq += row[t] * row[t];
        const double norm = std::sqrt(sq) + kL2NormEps;
        for (int64_t t = 0; t < n; ++t) row[t] /= norm;
        break;
      }
      case RawFeatureNorm::kClipped:
        for (int64_t t = 0; t < n; ++t) row[t] = LeakyRelu(row[t]);
        break;
      case RawFeatureNorm::kSoftmax: {
        const double max = *std::max_element(row, row + n);
        double sum = 0;
        for (int64_t t = 0; t < n; ++t) sum += (row[t] = std::exp(row[t] - max));
        for (int64_t t = 0; t < n; ++t) row[t] /= sum;
        break;
      }
      case RawFeatureNorm::kNoNorm:
        break;
    }
  }

  // W[t, i] = softmax_i(λ1 a[i, t]), max-shifted.
  FloatMatrix w(n, k);
  std::vector<double> logits(static_cast<size_t>(k));
  for (int64_t t = 0; t < n; ++t) {
    double max = -std::numeric_limits<double>::infinity();
    for (int64_t i = 0; i < k; ++i) {
      logits[static_cast<size_t>(i)] =
          static_cast<double>(lambda_softmax) * a[static_cast<size_t>(i * n + t)];
      max = std::max(max, logits[static_cast<size_t>(i)]);
    }
    double sum = 0;
    for (double& l : logits) sum += (l = std::exp(l - max));
    for (int64_t i = 0; i < k; ++i)
      w.at(t, i) = static_cast<float>(logits[static_cast<size_t>(i)] / sum);
  }
  return w;
}

absl::StatusOr<std::vector<WordAttention>> BestRegionPerWord(ItemView words, ItemView regions,
                                                             int64_t dim,
                                                             RawFeatureNorm raw_feature_norm,
                                                             float lambda_softmax) {
  SCANSERVE_ASSIGN_OR_RETURN(
      FloatMatrix w, TextToImageAttention(words, regions, dim, raw_feature_norm, lambda_softmax));
  std::vector<WordAttention> best(static_cast<size_t>(w.rows));
  for (int64_t t = 0; t < w.rows; ++t) {
    const float* row = w.row(t);
    const int64_t i = std::max_element(row, row + w.cols) - row;
    best[static_cast<size_t>(t)] = WordAttention{i, row[i]};
  }
  return best;
}

}  // namespace scanserve
