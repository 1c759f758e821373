// The full image x caption similarity matrix of one SCAN model or an ensemble: what scan_eval
// evaluates and scan_score writes.
//
// Per model: encode every image's regions and every caption's words (EncodeAll), store one side in
// a Scorer built from the model's attention parameters, score the other side against it in
// batches, and lay the result out as n_images x n_captions. An ensemble averages the models'
// matrices, S = (S_1 + ... + S_M) / M, as the SCAN paper's best results do. Models are processed one
// after another, so only one model's embeddings are alive at a time.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "engine/common/matrix.h"
#include "engine/model/scan_model.h"
#include "engine/scoring/scorer.h"

namespace scanserve {

// Region features of one image, borrowed: num_regions x img_dim floats, row-major.
struct RegionFeaturesView {
  const float* data = nullptr;
  int64_t num_regions = 0;
  int64_t img_dim = 0;
};

// Items of one kind stacked row-wise: item i is rows [offsets[i], offsets[i + 1]) of `rows`.
struct StackedItems {
  FloatMatrix rows;              // total_rows x embed_size
  std::vector<int64_t> offsets;  // size() + 1 entries; offsets[0] == 0

  int64_t size() const { return offsets.empty() ? 0 : static_cast<int64_t>(offsets.size()) - 1; }
  int64_t num_rows(int64_t i) const { return offsets[i + 1] - offsets[i]; }
  ItemView item(int64_t i) const { return ItemView(rows.row(offsets[i]), num_rows(i)); }
};

// One model's embeddings of a set of images and captions.
struct ModelEmbeddings {
  StackedItems images;    // region embeddings, one item per image
  StackedItems captions;  // word embeddings (<start> and <end> included), one item per caption
};

// Called once per model with the caption token ids (that model's vocabulary) and its embeddings,
// before they are scored; an error stops the computation and is returned.
using EmbeddingsCallback = std::function<absl::Status(
    size_t model_index, const std::vector<std::vector<int64_t>>& caption_ids,
    const ModelEmbeddings& embeddings)>;

struct SimilarityOptions {
  ScorerBackend backend = ScorerBackend::kCpu;
  StorageType storage = StorageType::kFloat32;
  ItemKind stored = ItemKind::kImage;  // which side the scorer stores; the other side is queried
  int num_threads = 0;                 // scorer threads; 0 = all cores
  int64_t caption_batch = 128;         // captions per EncodeCaptions call
  int64_t region_batch_rows = 4096;    // region rows (whole images) per EncodeRegions call
  int64_t query_batch = 64;            // queries per ScoreAll call
  bool show_progress = false;          // progress lines on stderr
  EmbeddingsCallback on_embeddings;    // optional, e.g. to dump the embeddings
};

// Token ids of every caption under `model`'s vocabulary. Errors name the caption's index.
absl::StatusOr<std::vector<std::vector<int64_t>>> TokenizeCaptions(
    const ScanModel& model, const std::vector<std::string>& captions);

// Encodes images (EncodeRegions, several images per call) and captions (EncodeCaptions, batched).
// Every image needs >= 1 region of model.config().img_dim features.
absl::StatusOr<ModelEmbeddings> EncodeAll(const ScanModel& model,
                                          absl::Span<const RegionFeaturesView> images,
                                          const std::vector<std::vector<int64_t>>& caption_ids,
                                          const SimilarityOptions& options);

// n_images x n_captions scores of already encoded items under `attention`.
absl::StatusOr<FloatMatrix> ScoreEmbeddings(const ModelEmbeddings& embeddings,
                                            const AttentionParams& attention,
                                            const SimilarityOptions& options);

// The (ensemble-averaged) n_images x n_captions similarity matrix. models is non-empty; each model
// tokenises the captions with its own vocabulary. Empty images or captions give an empty matrix.
absl::StatusOr<FloatMatrix> ComputeSimilarities(const std::vector<const ScanModel*>& models,
                                                absl::Span<const RegionFeaturesView> images,
                                                const std::vector<std::string>& captions,
                                                const SimilarityOptions& options);

}  // namespace scanserve
