// SCAN's stacked-cross-attention hyper-parameters, as the reference code's `opt` names them.
// The semantics are in ../shared/spec/scan-model.md; they come from the checkpoint, never defaults.
#pragma once

#include <string>
#include "absl/strings/string_view.h"

#include "absl/status/statusor.h"

namespace scanserve {

// Which side attends: t2i = words attend over regions (R_t per word), i2t = regions over words.
enum class CrossAttention { kTextToImage, kImageToText };

// How the raw region-word products are normalised before the softmax (`raw_feature_norm`).
enum class RawFeatureNorm { kClippedL2Norm, kL2Norm, kClipped, kNoNorm, kSoftmax };

// How the per-word (t2i) or per-region (i2t) cosines are pooled into one score (`agg_func`).
enum class Pooling { kLogSumExp, kMean, kMax, kSum };

struct AttentionParams {
  CrossAttention cross_attn = CrossAttention::kTextToImage;
  RawFeatureNorm raw_feature_norm = RawFeatureNorm::kClippedL2Norm;
  Pooling pooling = Pooling::kLogSumExp;
  float lambda_softmax = 9.0f;  // λ1: softmax temperature over the context axis
  float lambda_lse = 6.0f;      // λ2: LogSumExp temperature (LogSumExp pooling only)
};

// Parse and print the reference code's spellings ("t2i", "clipped_l2norm", "LogSumExp", ...).
absl::StatusOr<CrossAttention> ParseCrossAttention(absl::string_view s);
absl::StatusOr<RawFeatureNorm> ParseRawFeatureNorm(absl::string_view s);
absl::StatusOr<Pooling> ParsePooling(absl::string_view s);
absl::string_view ToString(CrossAttention v);
absl::string_view ToString(RawFeatureNorm v);
absl::string_view ToString(Pooling v);

}  // namespace scanserve
