// The ensemble's score of a pair: the mean of its models' scores, in the one order of operations
// every ensemble path uses (a running sum through double, rounded to float after each model, then
// one division), so that the full-score path and the top-list path agree bit for bit. Each step
// rounds monotonically, so the mean never decreases when one model's score grows: the top-list
// search's bounds rely on that.
#pragma once

#include <cstddef>

#include "absl/types/span.h"

namespace scanserve {

// The running sum after adding one more model's score.
inline float AddModelScore(float sum, float score) {
  return static_cast<float>(static_cast<double>(sum) + score);
}

// The mean from the running sum over `models` models (one model: the score itself).
inline float FinishModelMean(float sum, int models) {
  return models > 1 ? static_cast<float>(static_cast<double>(sum) / models) : sum;
}

// scores: one per model, in model order.
inline float ModelMean(absl::Span<const float> scores) {
  float sum = scores[0];
  for (size_t m = 1; m < scores.size(); ++m) sum = AddModelScore(sum, scores[m]);
  return FinishModelMean(sum, static_cast<int>(scores.size()));
}

}  // namespace scanserve
