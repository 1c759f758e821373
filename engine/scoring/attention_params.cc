#include "engine/scoring/attention_params.h"

#include "absl/strings/str_cat.h"

namespace scanserve {

absl::StatusOr<CrossAttention> ParseCrossAttention(absl::string_view s) {
  if (s == "t2i") return CrossAttention::kTextToImage;
  if (s == "i2t") return CrossAttention::kImageToText;
  return absl::InvalidArgumentError(absl::StrCat("unknown cross_attn '", s, "' (expected t2i or i2t)"));
}

absl::StatusOr<RawFeatureNorm> ParseRawFeatureNorm(absl::string_view s) {
  if (s == "clipped_l2norm") return RawFeatureNorm::kClippedL2Norm;
  if (s == "l2norm") return RawFeatureNorm::kL2Norm;
  if (s == "clipped") return RawFeatureNorm::kClipped;
  if (s == "no_norm") return RawFeatureNorm::kNoNorm;
  if (s == "softmax") return RawFeatureNorm::kSoftmax;
  if (s == "l1norm" || s == "clipped_l1norm") {
    return absl::InvalidArgumentError(absl::StrCat(
        "raw_feature_norm '", s, "' is not supported: it crashes in the reference SCAN code, so no "
        "checkpoint trained with it exists"));
  }
  return absl::InvalidArgumentError(absl::StrCat("unknown raw_feature_norm '", s, "'"));
}

absl::StatusOr<Pooling> ParsePooling(absl::string_view s) {
  if (s == "LogSumExp") return Pooling::kLogSumExp;
  if (s == "Mean") return Pooling::kMean;
  if (s == "Max") return Pooling::kMax;
  if (s == "Sum") return Pooling::kSum;
  return absl::InvalidArgumentError(
      absl::StrCat("unknown agg_func '", s, "' (expected LogSumExp, Mean, Max or Sum)"));
}

absl::string_view ToString(CrossAttention v) {
  return v == CrossAttention::kTextToImage ? "t2i" : "i2t";
}

absl::string_view ToString(RawFeatureNorm v) {
  switch (v) {
    case RawFeatureNorm::kClippedL2Norm: return "clipped_l2norm";
    case RawFeatureNorm::kL2Norm: return "l2norm";
    case RawFeatureNorm::kClipped: return "clipped";
    case RawFeatureNorm::kNoNorm: return "no_norm";
    case RawFeatureNorm::kSoftmax: return "softmax";
  }
  return "?";
}

absl::string_view ToString(Pooling v) {
  switch (v) {
    case Pooling::kLogSumExp: return "LogSumExp";
    case Pooling::kMean: return "Mean";
    case Pooling::kMax: return "Max";
    case Pooling::kSum: return "Sum";
  }
  return "?";
}

}  // namespace scanserve
