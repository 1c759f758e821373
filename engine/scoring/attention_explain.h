// SCAN's text->image attention weights for one (caption, image) pair, for `explain`: which region
// each word attends to. Plain C++ (no BLAS): a caption has tens of words and an image tens of
// regions, and only the returned hits are explained.
//
// Steps 1-4 of attend() in scan-model.md with query = the caption's words E (n x dim) and
// context = the image's regions V (k x dim):
//   A = V Eᵀ (k x n); normalise A by raw_feature_norm along the WORD axis (per region);
//   W = softmax over the REGION axis of λ1 · Aᵀ (n x k): row t = word t's weights over regions.
// Whatever the model's cross_attn, this is the t2i direction (a word's view of the image).
#pragma once

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/common/matrix.h"
#include "engine/scoring/attention_params.h"

namespace scanserve {

// W (words.rows x regions.rows), each row summing to 1. INVALID_ARGUMENT for empty items, a
// non-positive dim or a non-finite lambda_softmax.
absl::StatusOr<FloatMatrix> TextToImageAttention(ItemView words, ItemView regions, int64_t dim,
                                                 RawFeatureNorm raw_feature_norm,
                                                 float lambda_softmax);

struct WordAttention {
  int64_t region = -1;  // argmax of the word's row of W (the first one on ties)
  float weight = 0;     // W[word, region]
};

// One entry per word: the region with the highest attention weight.
absl::StatusOr<std::vector<WordAttention>> BestRegionPerWord(ItemView words, ItemView regions,
                                                             int64_t dim,
                                                             RawFeatureNorm raw_feature_norm,
                                                             float lambda_softmax);

}  // namespace scanserve
