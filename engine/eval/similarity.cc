#include "engine/eval/similarity.h"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <numeric>
#include <utility>

#include "absl/strings/str_cat.h"
#include "engine/common/status_macros.h"

namespace scanserve {
namespace {

// A throttled "label: done/total" line on stderr: rewritten in place on a terminal, otherwise
// at most one line every few seconds plus the final one.
class Progress {
 public:
  Progress(bool enabled, std::string label, int64_t total)
      : enabled_(enabled && total > 0), label_(std::move(label)), total_(total),
        tty_(isatty(STDERR_FILENO) != 0), last_(std::chrono::steady_clock::now()) {}

  void Advance(int64_t n) {
    done_ += n;
    if (!enabled_) return;
    const auto now = std::chrono::steady_clock::now();
    const bool finished = done_ >= total_;
    if (!finished && now - last_ < (tty_ ? std::chrono::milliseconds(200) : std::chrono::seconds(5))) {
      return;
    }
    last_ = now;
    std::fprintf(stderr, "%s%s: %lld/%lld%s", tty_ ? "\r" : "", label_.c_str(),
                 static_cast<long long>(done_), static_cast<long long>(total_),
                 tty_ && !finished ? "" : "\n");
    std::fflush(stderr);
  }

 private:
  bool enabled_;
  std::string label_;
  int64_t total_;
  bool tty_;
  std::chrono::steady_clock::time_point last_;
  int64_t done_ = 0;
};

std::string ModelLabel(size_t index, size_t count) {
  return count > 1 ? absl::StrCat("[model ", index + 1, "/", count, "] ") : std::string();
}

absl::Status ValidateOptions(const SimilarityOptions& options) {
  if (options.caption_batch < 1 || options.region_batch_rows < 1 || options.query_batch < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("SimilarityOptions: batch sizes must be >= 1 (caption_batch ",
                     options.caption_batch, ", region_batch_rows ", options.region_batch_rows,
                     ", query_batch ", options.query_batch, ")"));
  }
  return absl::OkStatus();
}

absl::Status ValidateImages(const ScanModel& model, absl::Span<const RegionFeaturesView> images) {
  for (size_t i = 0; i < images.size(); ++i) {
    const RegionFeaturesView& image = images[i];
    if (image.num_regions < 1 || image.data == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat("image ", i, " has no regions"));
    }
    if (image.img_dim != model.config().img_dim) {
      return absl::InvalidArgumentError(absl::StrCat(
          "image ", i, " has ", image.img_dim, "-d region features; the model in ",
          model.model_dir(), " expects ", model.config().img_dim, "-d"));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<StackedItems> EncodeImages(const ScanModel& model,
                                          absl::Span<const RegionFeaturesView> images,
                                          const SimilarityOptions& options, const std::string& label) {
  SCANSERVE_RETURN_IF_ERROR(ValidateImages(model, images));
  StackedItems out;
  out.offsets.resize(images.size() + 1, 0);
  for (size_t i = 0; i < images.size(); ++i) out.offsets[i + 1] = out.offsets[i] + images[i].num_regions;
  const int64_t embed = model.config().embed_size;
  out.rows = FloatMatrix(out.offsets.back(), embed);

  const int64_t img_dim = model.config().img_dim;
  Progress progress(options.show_progress, label + "encoding images", static_cast<int64_t>(images.size()));
  // The region encoder is row-wise (FC + l2norm per region), so several images go in one call.
  for (size_t begin = 0; begin < images.size();) {
    size_t end = begin + 1;
    while (end < images.size() &&
           out.offsets[end + 1] - out.offsets[begin] <= options.region_batch_rows) {
      ++end;
    }
    const int64_t row_begin = out.offsets[begin];
    FloatMatrix features(out.offsets[end] - row_begin, img_dim);
    for (size_t i = begin; i < end; ++i) {
      std::memcpy(features.row(out.offsets[i] - row_begin), images[i].data,
                  static_cast<size_t>(images[i].num_regions * img_dim) * sizeof(float));
    }
    absl::StatusOr<FloatMatrix> encoded = model.EncodeRegions(features);
    if (!encoded.ok()) {
      return absl::Status(encoded.status().code(),
                          absl::StrCat("encoding images ", begin, "..", end - 1, ": ",
                                       encoded.status().message()));
    }
    if (encoded->rows != features.rows || encoded->cols != embed) {
      return absl::InternalError(absl::StrCat("EncodeRegions returned ", encoded->rows, " x ",
                                              encoded->cols, " for ", features.rows,
                                              " regions; expected embed_size ", embed));
    }
    std::memcpy(out.rows.row(row_begin), encoded->data.data(), encoded->data.size() * sizeof(float));
    progress.Advance(static_cast<int64_t>(end - begin));
    begin = end;
  }
  return out;
}

absl::StatusOr<StackedItems> EncodeCaptionIds(const ScanModel& model,
                                              const std::vector<std::vector<int64_t>>& ids,
                                              const SimilarityOptions& options,
                                              const std::string& label) {
  StackedItems out;
  out.offsets.resize(ids.size() + 1, 0);
  for (size_t i = 0; i < ids.size(); ++i) {
    if (ids[i].empty()) return absl::InvalidArgumentError(absl::StrCat("caption ", i, " has no tokens"));
    out.offsets[i + 1] = out.offsets[i] + static_cast<int64_t>(ids[i].size());
  }
  const int64_t embed = model.config().embed_size;
  out.rows = FloatMatrix(out.offsets.back(), embed);

  Progress progress(options.show_progress, label + "encoding captions", static_cast<int64_t>(ids.size()));
  const size_t batch = static_cast<size_t>(options.caption_batch);
  for (size_t begin = 0; begin < ids.size(); begin += batch) {
    const size_t end = std::min(ids.size(), begin + batch);
    const std::vector<std::vector<int64_t>> chunk(ids.begin() + static_cast<std::ptrdiff_t>(begin),
                                                  ids.begin() + static_cast<std::ptrdiff_t>(end));
    absl::StatusOr<std::vector<FloatMatrix>> encoded = model.EncodeCaptions(chunk);
    if (!encoded.ok()) {
      return absl::Status(encoded.status().code(),
                          absl::StrCat("encoding captions ", begin, "..", end - 1, ": ",
                                       encoded.status().message()));
    }
    if (encoded->size() != chunk.size()) {
      return absl::InternalError(absl::StrCat("EncodeCaptions returned ", encoded->size(),
                                              " captions for ", chunk.size()));
    }
    for (size_t i = begin; i < end; ++i) {
      const FloatMatrix& words = (*encoded)[i - begin];
      if (words.rows != out.num_rows(static_cast<int64_t>(i)) || words.cols != embed) {
        return absl::InternalError(absl::StrCat("EncodeCaptions returned ", words.rows, " x ",
                                                words.cols, " for caption ", i, " of ",
                                                ids[i].size(), " tokens"));
      }
      std::memcpy(out.rows.row(out.offsets[i]), words.data.data(), words.data.size() * sizeof(float));
    }
    progress.Advance(static_cast<int64_t>(end - begin));
  }
  return out;
}

std::vector<ItemView> Views(const StackedItems& items, int64_t begin, int64_t end) {
  std::vector<ItemView> views;
  views.reserve(static_cast<size_t>(end - begin));
  for (int64_t i = begin; i < end; ++i) views.push_back(items.item(i));
  return views;
}

// A scorer holding the `options.stored` side of `embeddings`, item i under key i.
absl::StatusOr<std::unique_ptr<Scorer>> BuildScorer(const StackedItems& stored, int64_t dim,
                                                    const AttentionParams& attention,
                                                    const SimilarityOptions& options) {
  ScorerConfig config;
  config.dim = dim;
  config.stored_kind = options.stored;
  config.attention = attention;
  config.storage = options.storage;
  config.num_threads = options.num_threads;
  SCANSERVE_ASSIGN_OR_RETURN(std::unique_ptr<Scorer> scorer, MakeScorer(options.backend, config));
  if (scorer == nullptr) return absl::InternalError("MakeScorer returned no scorer");
  // Added in chunks so Add's per-item precomputation never needs all views at once.
  constexpr int64_t kAddChunk = 4096;
  for (int64_t begin = 0; begin < stored.size(); begin += kAddChunk) {
    const int64_t end = std::min(stored.size(), begin + kAddChunk);
    std::vector<int64_t> keys(static_cast<size_t>(end - begin));
    std::iota(keys.begin(), keys.end(), begin);
    SCANSERVE_RETURN_IF_ERROR(scorer->Add(keys, Views(stored, begin, end)));
  }
  return scorer;
}

// Scores every query against the scorer and writes (when `first`) or adds the scores into
// `sims` (n_images x n_captions), transposing when the queries are captions.
absl::Status ScoreQueriesInto(const Scorer& scorer, const StackedItems& queries, bool first,
                              const SimilarityOptions& options, const std::string& label,
                              FloatMatrix* sims) {
  const bool queries_are_captions = options.stored == ItemKind::kImage;
  const std::vector<int64_t> column_keys = scorer.keys();  // column j of ScoreAll = this key
  if (static_cast<int64_t>(column_keys.size()) != (queries_are_captions ? sims->rows : sims->cols)) {
    return absl::InternalError(absl::StrCat("the scorer holds ", column_keys.size(), " items"));
  }
  Progress progress(options.show_progress, label + (queries_are_captions ? "scoring captions" : "scoring images"),
                    queries.size());
  FloatMatrix scores;
  for (int64_t begin = 0; begin < queries.size(); begin += options.query_batch) {
    const int64_t end = std::min(queries.size(), begin + options.query_batch);
    SCANSERVE_RETURN_IF_ERROR(scorer.ScoreAll(Views(queries, begin, end), &scores));
    if (scores.rows != end - begin || scores.cols != static_cast<int64_t>(column_keys.size())) {
      return absl::InternalError(absl::StrCat("ScoreAll returned ", scores.rows, " x ", scores.cols,
                                              " for ", end - begin, " queries"));
    }
    for (int64_t q = 0; q < scores.rows; ++q) {
      const float* row = scores.row(q);
      for (size_t j = 0; j < column_keys.size(); ++j) {
        // Always (image, caption): the query is the caption when images are stored.
        const int64_t stored_index = column_keys[j];
        float& cell = queries_are_captions ? sims->at(stored_index, begin + q)
                                           : sims->at(begin + q, stored_index);
        // Each addition rounds once from double, so a two-model mean equals the reference's
        // float64 (sims1 + sims2) / 2 rounded to float32.
        cell = first ? row[j] : static_cast<float>(static_cast<double>(cell) + row[j]);
      }
    }
    progress.Advance(end - begin);
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::vector<std::vector<int64_t>>> TokenizeCaptions(
    const ScanModel& model, const std::vector<std::string>& captions) {
  std::vector<std::vector<int64_t>> ids;
  ids.reserve(captions.size());
  for (size_t i = 0; i < captions.size(); ++i) {
    absl::StatusOr<std::vector<int64_t>> caption_ids = model.CaptionToIds(captions[i]);
    if (!caption_ids.ok()) {
      return absl::Status(caption_ids.status().code(),
                          absl::StrCat("caption ", i, ": ", caption_ids.status().message()));
    }
    ids.push_back(*std::move(caption_ids));
  }
  return ids;
}

absl::StatusOr<ModelEmbeddings> EncodeAll(const ScanModel& model,
                                          absl::Span<const RegionFeaturesView> images,
                                          const std::vector<std::vector<int64_t>>& caption_ids,
                                          const SimilarityOptions& options) {
  SCANSERVE_RETURN_IF_ERROR(ValidateOptions(options));
  ModelEmbeddings embeddings;
  SCANSERVE_ASSIGN_OR_RETURN(embeddings.images, EncodeImages(model, images, options, ""));
  SCANSERVE_ASSIGN_OR_RETURN(embeddings.captions, EncodeCaptionIds(model, caption_ids, options, ""));
  return embeddings;
}

absl::StatusOr<FloatMatrix> ScoreEmbeddings(const ModelEmbeddings& embeddings,
                                            const AttentionParams& attention,
                                            const SimilarityOptions& options) {
  SCANSERVE_RETURN_IF_ERROR(ValidateOptions(options));
  FloatMatrix sims(embeddings.images.size(), embeddings.captions.size());
  if (sims.rows == 0 || sims.cols == 0) return sims;
  if (embeddings.images.rows.cols != embeddings.captions.rows.cols) {
    return absl::InvalidArgumentError(absl::StrCat(
        "image embeddings are ", embeddings.images.rows.cols, "-d but caption embeddings are ",
        embeddings.captions.rows.cols, "-d"));
  }
  const bool images_stored = options.stored == ItemKind::kImage;
  const StackedItems& stored = images_stored ? embeddings.images : embeddings.captions;
  const StackedItems& queries = images_stored ? embeddings.captions : embeddings.images;
  SCANSERVE_ASSIGN_OR_RETURN(std::unique_ptr<Scorer> scorer,
                             BuildScorer(stored, stored.rows.cols, attention, options));
  SCANSERVE_RETURN_IF_ERROR(ScoreQueriesInto(*scorer, queries, /*first=*/true, options, "", &sims));
  return sims;
}

absl::StatusOr<FloatMatrix> ComputeSimilarities(const std::vector<const ScanModel*>& models,
                                                absl::Span<const RegionFeaturesView> images,
                                                const std::vector<std::string>& captions,
                                                const SimilarityOptions& options) {
  if (models.empty()) return absl::InvalidArgumentError("ComputeSimilarities: no models");
  for (size_t m = 0; m < models.size(); ++m) {
    if (models[m] == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat("ComputeSimilarities: model ", m, " is null"));
    }
  }
  SCANSERVE_RETURN_IF_ERROR(ValidateOptions(options));
  FloatMatrix sims(static_cast<int64_t>(images.size()), static_cast<int64_t>(captions.size()));
  if (sims.rows == 0 || sims.cols == 0) return sims;

  const bool images_stored = options.stored == ItemKind::kImage;
  for (size_t m = 0; m < models.size(); ++m) {
    const ScanModel& model = *models[m];
    const std::string label = ModelLabel(m, models.size());
    ModelEmbeddings embeddings;
    SCANSERVE_ASSIGN_OR_RETURN(std::vector<std::vector<int64_t>> ids, TokenizeCaptions(model, captions));
    SCANSERVE_ASSIGN_OR_RETURN(embeddings.images, EncodeImages(model, images, options, label));
    SCANSERVE_ASSIGN_OR_RETURN(embeddings.captions, EncodeCaptionIds(model, ids, options, label));
    if (options.on_embeddings) SCANSERVE_RETURN_IF_ERROR(options.on_embeddings(m, ids, embeddings));

    StackedItems& stored = images_stored ? embeddings.images : embeddings.captions;
    const StackedItems& queries = images_stored ? embeddings.captions : embeddings.images;
    SCANSERVE_ASSIGN_OR_RETURN(std::unique_ptr<Scorer> scorer,
                               BuildScorer(stored, model.config().embed_size,
                                           model.config().attention, options));
    stored = StackedItems();  // the scorer keeps its own copy
    SCANSERVE_RETURN_IF_ERROR(ScoreQueriesInto(*scorer, queries, /*first=*/m == 0, options, label, &sims));
  }
  if (models.size() > 1) {
    const double count = static_cast<double>(models.size());
    for (float& s : sims.data) s = static_cast<float>(static_cast<double>(s) / count);
  }
  return sims;
}

}  // namespace scanserve
