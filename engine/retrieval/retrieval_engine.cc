// ScanRetrievalEngine: creation, loading, encoding, publishing, stats and lifecycle
// (scan_retrieval_engine.h says how the implementation is split).
#include "engine/retrieval/scan_retrieval_engine.h"

#include <algorithm>
#include <atomic>
#include <filesystem>
#include <mutex>
#include <shared_mutex>
#include <utility>

#include "engine/retrieval/models_fingerprint.h"
#include "engine/retrieval/synthetic_items.h"
#include "engine/store/rocksdb_feature_store.h"

namespace scanserve {
namespace retrieval_internal {

namespace {

FloatMatrix CopyItem(const StackedItems& stacked, int64_t i) {
  FloatMatrix m(stacked.num_rows(i), stacked.rows.cols);
  std::copy(stacked.rows.row(stacked.offsets[i]), stacked.rows.row(stacked.offsets[i + 1]),
            m.data.begin());
  return m;
}

EncoderDevice ResolveEncoderDevice(const RetrievalEngineOptions& o) {
  if (o.encoder_device.has_value()) return *o.encoder_device;
  // MakeScorer's CUDA scorer runs on device 0; the encoders' outputs then stay near it.
  if (o.backend == ScorerBackend::kCuda && ScanModel::CudaAvailable()) return EncoderDevice::Cuda(0);
  return EncoderDevice::Cpu();
}

absl::Status ValidateOptions(const RetrievalEngineOptions& o) {
  if (o.model_dirs.empty() || o.model_dirs.size() > 2) {
    return absl::InvalidArgumentError(absl::StrCat(
        "RetrievalEngineOptions: give 1 model, or 2 for an ensemble; got ", o.model_dirs.size()));
  }
  if (o.num_threads < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("RetrievalEngineOptions: num_threads must be >= 0, got ", o.num_threads));
  }
  if (o.max_images < 0 || o.max_captions < 0 || o.max_feature_bytes < 0) {
    return absl::InvalidArgumentError("RetrievalEngineOptions: capacities must be >= 0");
  }
  if (o.synthetic_images < 0 || o.synthetic_captions < 0) {
    return absl::InvalidArgumentError("RetrievalEngineOptions: synthetic item counts must be >= 0");
  }
  if (o.max_top_k < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("RetrievalEngineOptions: max_top_k must be >= 1, got ", o.max_top_k));
  }
  if (o.max_query_words < 3 || o.max_query_words > Scorer::kMaxRows) {
    return absl::InvalidArgumentError(
        absl::StrCat("RetrievalEngineOptions: max_query_words must be in 3..", Scorer::kMaxRows,
                     " (<start> and <end> count), got ", o.max_query_words));
  }
  return absl::OkStatus();
}

}  // namespace

// max_feature_bytes, or less when a scorer's memory is bounded (CUDA: device memory). Every
// scorer is still empty here, so each reports the device's capacity; they share it.
int64_t FeatureBytesLimit(const RetrievalEngineOptions& options,
                          const std::vector<ModelSlot>& models) {
  int64_t limit = options.max_feature_bytes;
  for (const ModelSlot& slot : models) {
    for (const Scorer* scorer : {slot.images.get(), slot.captions.get()}) {
      const int64_t capacity = scorer->MemoryCapacityBytes();
      if (capacity >= 0 && capacity < limit) {
        EngineLog(EngineLogLevel::kInfo,
                  absl::StrCat("RetrievalEngine: scorer memory limited to ", capacity,
                               " bytes by device memory (max_feature_bytes ", limit, ")"));
        limit = capacity;
      }
    }
  }
  return limit;
}

int64_t ScanRetrievalEngine::EstimateBytes(int64_t rows, ItemKind kind) const {
  int64_t total = 0;
  for (const ModelSlot& slot : models_) {
    const ModelConfig& config = slot.model->config();
    const bool t2i = config.attention.cross_attn == CrossAttention::kTextToImage;
    const bool stored_is_context = (kind == ItemKind::kImage) == t2i;
    total += rows * StoredRowBytes(options_.storage, config.embed_size) + rows * 4 + kItemOverhead;
    if (stored_is_context) total += rows * rows * 4;
  }
  return total;
}

std::vector<Encoded> ScanRetrievalEngine::EncodeRegions(
    const std::vector<const FloatMatrix*>& features) const {
  std::vector<Encoded> out(features.size());
  if (features.empty()) return out;
  std::vector<RegionFeaturesView> views;
  views.reserve(features.size());
  for (const FloatMatrix* f : features) views.push_back({f->data.data(), f->rows, f->cols});
  for (size_t m = 0; m < num_models(); ++m) {
    const ScanModel& model = *models_[m].model;
    absl::StatusOr<ModelEmbeddings> batch = EncodeAll(model, views, {}, encode_options_);
    if (batch.ok()) {
      for (size_t i = 0; i < out.size(); ++i)
        out[i].per_model.push_back(CopyItem(batch->images, static_cast<int64_t>(i)));
      continue;
    }
    for (size_t i = 0; i < out.size(); ++i) {
      absl::StatusOr<ModelEmbeddings> one =
          EncodeAll(model, absl::MakeConstSpan(&views[i], 1), {}, encode_options_);
      if (!one.ok()) {
        if (out[i].status.ok())
          out[i].status = Prefixed(one.status(), absl::StrCat("model ", m + 1, ": "));
        out[i].per_model.push_back(FloatMatrix());
      } else {
        out[i].per_model.push_back(CopyItem(one->images, 0));
      }
    }
  }
  return out;
}

absl::StatusOr<std::vector<FloatMatrix>> ScanRetrievalEngine::EncodeTokensOfModel(
    size_t m, const std::vector<std::vector<int64_t>>& ids) const {
  SCANSERVE_ASSIGN_OR_RETURN(ModelEmbeddings embeddings,
                             EncodeAll(*models_[m].model, {}, ids, encode_options_));
  std::vector<FloatMatrix> out;
  out.reserve(ids.size());
  for (size_t i = 0; i < ids.size(); ++i)
    out.push_back(CopyItem(embeddings.captions, static_cast<int64_t>(i)));
  return out;
}

std::vector<Encoded> ScanRetrievalEngine::EncodeTokens(
    const std::vector<std::vector<std::vector<int64_t>>>& ids) const {
  std::vector<Encoded> out(ids.size());
  if (ids.empty()) return out;
  for (size_t m = 0; m < num_models(); ++m) {
    std::vector<std::vector<int64_t>> of_model;
    of_model.reserve(ids.size());
    for (const auto& item : ids) of_model.push_back(item[m]);
    absl::StatusOr<std::vector<FloatMatrix>> batch = EncodeTokensOfModel(m, of_model);
    if (batch.ok()) {
      for (size_t i = 0; i < out.size(); ++i) out[i].per_model.push_back(std::move((*batch)[i]));
      continue;
    }
    for (size_t i = 0; i < out.size(); ++i) {
      absl::StatusOr<std::vector<FloatMatrix>> one = EncodeTokensOfModel(m, {of_model[i]});
      if (!one.ok()) {
        if (out[i].status.ok())
          out[i].status = Prefixed(one.status(), absl::StrCat("model ", m + 1, ": "));
        out[i].per_model.push_back(FloatMatrix());
      } else {
        out[i].per_model.push_back(std::move(one->front()));
      }
    }
  }
  return out;
}

// ---- Loading ----------------------------------------------------------------------------------

absl::Status ScanRetrievalEngine::Load() {
  std::lock_guard<std::mutex> writer(writer_mu_);
  std::unique_lock<WriterPreferringSharedMutex> state(state_mu_);

  // Checks a record against the models; a mismatch under a matching fingerprint is corruption.
  const auto check_embeddings = [&](const std::vector<FloatMatrix>& embeddings, int64_t rows,
                                    absl::string_view kind, const std::string& id) -> absl::Status {
    const auto corrupt = [&](absl::string_view why) {
      return absl::DataLossError(absl::StrCat("the stored ", kind, " ", QuoteId(id), " ", why,
                                              " although the store's models fingerprint matches"));
    };
    if (embeddings.size() != num_models()) {
      return corrupt(
          absl::StrCat("has embeddings for ", embeddings.size(), " models, not ", num_models()));
    }
    if (rows < 1 || rows > Scorer::kMaxRows) return corrupt(absl::StrCat("has ", rows, " rows"));
    for (size_t m = 0; m < num_models(); ++m) {
      const FloatMatrix& e = embeddings[m];
      if (e.rows != rows || e.cols != models_[m].model->config().embed_size) {
        return corrupt(
            absl::StrCat("has ", e.rows, " x ", e.cols, " embeddings for model ", m + 1));
      }
    }
    return absl::OkStatus();
  };

  // The store must fit the scorer memory limit: refuse to start, saying by how much, rather than
  // serve part of what was acked (or fill the GPU and fail midway). Checked before each chunk is
  // published, against what the catalogs already count.
  const auto check_fits = [&](const auto& chunk, ItemKind kind) -> absl::Status {
    int64_t loaded_bytes = images_.feature_bytes + captions_.feature_bytes;
    for (const auto& record : chunk) loaded_bytes += EstimateBytes(RowsOf(record), kind);
    if (loaded_bytes <= feature_bytes_limit_) return absl::OkStatus();
    return absl::ResourceExhaustedError(absl::StrCat(
        "the store does not fit the scorer memory limit: after ", images_.size(), " images and ",
        captions_.size(), " captions it already needs ~", loaded_bytes, " bytes of the limit ",
        feature_bytes_limit_, " (", LimitSource(),
        "); raise --max-feature-bytes, choose a narrower --storage (bf16, fp8), or use a larger "
        "device"));
  };

  std::vector<StoredImage> image_chunk;
  const auto flush_images = [&]() -> absl::Status {
    if (image_chunk.empty()) return absl::OkStatus();
    SCANSERVE_RETURN_IF_ERROR(check_fits(image_chunk, ItemKind::kImage));
    SCANSERVE_RETURN_IF_ERROR(Publish(image_chunk, ItemKind::kImage));
    image_chunk.clear();
    return absl::OkStatus();
  };
  SCANSERVE_RETURN_IF_ERROR(store_->ScanImages([&](StoredImage& image) -> absl::Status {
    SCANSERVE_RETURN_IF_ERROR(
        check_embeddings(image.embeddings, image.num_regions, "image", image.id));
    if ((!image.boxes.empty() && static_cast<int64_t>(image.boxes.size()) != image.num_regions) ||
        (!image.labels.empty() && static_cast<int64_t>(image.labels.size()) != image.num_regions)) {
      return absl::DataLossError(absl::StrCat("the stored image ", QuoteId(image.id),
                                              " has boxes or labels that do not match its ",
                                              image.num_regions, " regions"));
    }
    image_chunk.push_back(std::move(image));
    return image_chunk.size() >= kLoadChunk ? flush_images() : absl::OkStatus();
  }));
  SCANSERVE_RETURN_IF_ERROR(flush_images());

  std::vector<StoredCaption> caption_chunk;
  const auto flush_captions = [&]() -> absl::Status {
    if (caption_chunk.empty()) return absl::OkStatus();
    SCANSERVE_RETURN_IF_ERROR(check_fits(caption_chunk, ItemKind::kCaption));
    SCANSERVE_RETURN_IF_ERROR(Publish(caption_chunk, ItemKind::kCaption));
    caption_chunk.clear();
    return absl::OkStatus();
  };
  SCANSERVE_RETURN_IF_ERROR(store_->ScanCaptions([&](StoredCaption& caption) -> absl::Status {
    const int64_t rows = caption.embeddings.empty() ? 0 : caption.embeddings.front().rows;
    SCANSERVE_RETURN_IF_ERROR(check_embeddings(caption.embeddings, rows, "caption", caption.id));
    caption_chunk.push_back(std::move(caption));
    return caption_chunk.size() >= kLoadChunk ? flush_captions() : absl::OkStatus();
  }));
  return flush_captions();
}

absl::Status ScanRetrievalEngine::AddSynthetic(ItemKind kind, int64_t count) {
  if (count == 0) return absl::OkStatus();
  std::lock_guard<std::mutex> writer(writer_mu_);
  std::unique_lock<WriterPreferringSharedMutex> state(state_mu_);
  const bool image = kind == ItemKind::kImage;
  const char* kind_name = image ? "images" : "captions";
  Catalog& items = catalog(kind);
  const int64_t max_count = image ? options_.max_images : options_.max_captions;

  std::vector<int64_t> dims;
  for (const ModelSlot& slot : models_) dims.push_back(slot.model->config().embed_size);
  const SyntheticPool pool = MakeSyntheticPool(kind, count, dims);

  constexpr int64_t kChunk = 4096;  // items per Scorer::Add
  int64_t added = 0;
  int64_t committed = images_.feature_bytes + captions_.feature_bytes;
  for (int64_t begin = 0; begin < count; begin += kChunk) {
    const int64_t end = std::min(count, begin + kChunk);
    std::vector<int64_t> keys;
    std::vector<CatalogEntry> entries;
    std::vector<std::vector<ItemView>> views(num_models());
    for (int64_t i = begin; i < end; ++i) {
      std::string id = SyntheticId(i);
      if (items.key_of_id.contains(id)) continue;  // the stored item of that id wins
      const int64_t bytes = EstimateBytes(pool.item(0, i).rows, kind);
      if (items.size() + static_cast<int64_t>(keys.size()) >= max_count ||
          committed + bytes > feature_bytes_limit_) {
        return absl::ResourceExhaustedError(absl::StrCat(
            count, " synthetic ", kind_name, " do not fit: after ", added, " of them the store holds ",
            items.size() + static_cast<int64_t>(keys.size()), " ", kind_name, " (limit ", max_count,
            ") and ~", committed, " scorer bytes (limit ", feature_bytes_limit_, ", ", LimitSource(),
            ")"));
      }
      committed += bytes;
      keys.push_back(next_key_++);
      for (size_t m = 0; m < num_models(); ++m) views[m].emplace_back(pool.item(m, i));
      CatalogEntry entry{std::move(id), kSyntheticCollection, {}, image ? "" : "(synthetic)", bytes};
      entry.synthetic_index = i;
      entries.push_back(std::move(entry));
    }
    for (size_t m = 0; m < num_models(); ++m) {
      SCANSERVE_RETURN_IF_ERROR(
          Prefixed((models_[m].*side(kind))->Add(keys, views[m]),
                   absl::StrCat("adding synthetic ", kind_name, ": ")));
    }
    for (size_t i = 0; i < keys.size(); ++i) items.Insert(keys[i], std::move(entries[i]));
    added += static_cast<int64_t>(keys.size());
  }
  EngineLog(EngineLogLevel::kInfo, absl::StrCat("RetrievalEngine: added ", added, " synthetic ",
                                                kind_name, " (benchmark items, not stored)"));
  return absl::OkStatus();
}

// ---- Publishing (loads and writes) -----------------------------------------------------------

namespace {

CatalogEntry EntryOf(const StoredImage& image, int64_t bytes) {
  return CatalogEntry{image.id, image.collection, image.metadata, "", bytes};
}
CatalogEntry EntryOf(const StoredCaption& caption, int64_t bytes) {
  return CatalogEntry{caption.id, caption.collection, caption.metadata, caption.text, bytes};
}

}  // namespace

// Adds records to every model's scorer of `kind` and to the catalog; replaced ids keep their key.
// Caller holds writer_mu_ and state_mu_ exclusively. On failure nothing of the batch is visible:
// the scorers and catalog no longer hold any of its ids (a replaced item's old version is gone
// too), and the caller removes them from the store.
template <typename Record>
absl::Status ScanRetrievalEngine::Publish(const std::vector<Record>& records, ItemKind kind) {
  Catalog& items = catalog(kind);
  std::vector<int64_t> keys;
  std::vector<int64_t> replaced;  // keys already stored before this batch
  keys.reserve(records.size());
  for (const Record& record : records) {
    auto it = items.key_of_id.find(record.id);
    if (it != items.key_of_id.end()) {
      keys.push_back(it->second);
      replaced.push_back(it->second);
    } else {
      keys.push_back(next_key_++);
    }
  }
  for (size_t m = 0; m < num_models(); ++m) {
    std::vector<ItemView> views;
    views.reserve(records.size());
    for (const Record& record : records) views.push_back(ItemView(record.embeddings[m]));
    const absl::Status added = (models_[m].*side(kind))->Add(keys, views);
    if (added.ok()) continue;
    // Scorers before m hold the whole batch, scorers from m on only the replaced keys.
    for (size_t r = 0; r < num_models(); ++r) {
      const absl::Status removed = (models_[r].*side(kind))->Remove(r < m ? keys : replaced);
      if (!removed.ok()) NoteOutOfSync(r, removed);
    }
    for (int64_t key : replaced) items.Erase(key);
    return added;
  }
  for (size_t i = 0; i < records.size(); ++i) {
    items.Erase(keys[i]);
    items.Insert(keys[i], EntryOf(records[i], EstimateBytes(RowsOf(records[i]), kind)));
  }
  return absl::OkStatus();
}

// ---- Stats and lifecycle ----------------------------------------------------------------------

EngineStats ScanRetrievalEngine::Stats() const {
  EngineStats stats;
  for (const ModelSlot& slot : models_) {
    stats.model_summaries.push_back(
        absl::StrCat(slot.model->model_dir(), ": ", slot.model->config().Summary()));
  }
  stats.backend = ScorerBackendName(options_.backend);
  stats.encoder_device = models_.front().model->device().ToString();
  stats.storage = StorageTypeName(options_.storage);
  stats.query_precision =
      options_.backend == ScorerBackend::kCuda && options_.storage != StorageType::kFloat32
          ? CudaQueryPrecisionName(options_.scorer_tuning.cuda_query_precision)
          : "fp32";
  stats.feature_bytes_limit = feature_bytes_limit_;
  {
    std::shared_lock<WriterPreferringSharedMutex> state(state_mu_);
    stats.images = images_.size();
    stats.captions = captions_.size();
    stats.synthetic_images = images_.synthetic;
    stats.synthetic_captions = captions_.synthetic;
    stats.feature_bytes_committed = images_.feature_bytes + captions_.feature_bytes;
    if (!closed_) {
      for (const ModelSlot& slot : models_) {
        stats.feature_bytes += slot.images->memory_bytes() + slot.captions->memory_bytes();
        for (const Scorer* scorer : {slot.images.get(), slot.captions.get()}) {
          for (const auto& [kernel, passes] : scorer->KernelPasses()) {
            stats.scorer_passes[kernel] += passes;
          }
        }
      }
      stats.text_to_image_kernels = models_.front().images->KernelChoices();
      stats.image_to_text_kernels = models_.front().captions->KernelChoices();
      // Every scorer of one engine shares the device: the first one that knows says.
      if (const auto device = models_.front().images->DeviceMemoryInfo(); device.has_value()) {
        stats.device_memory_free_bytes = device->free_bytes;
        stats.device_memory_total_bytes = device->total_bytes;
      }
    }
  }
  const FeatureStoreStats store = store_->Stats();
  stats.store_disk_bytes = store.disk_bytes;
  stats.store_wal_bytes = store.wal_bytes;
  stats.store_synced_writes = store.synced_writes;
  stats.store_sync_seconds = store.sync_write_seconds;
  stats.store_failed_writes = store.failed_writes;
  stats.store_disk_free_bytes = store.disk_free_bytes;
  stats.store_writes_stopped = store.writes_stopped;
  stats.store_reopens = store.reopens;
  stats.last_change_sequence = store.last_change_sequence;
  stats.changes_trimmed_through = store.changes_trimmed_through;
  stats.change_log_id = store.change_log_id;
  const auto seconds = [this](Direction d, Phase p) {
    return 1e-9 * static_cast<double>(phase_ns_[d][p].load(std::memory_order_relaxed));
  };
  stats.text_to_image = {seconds(kT2i, kEncode), seconds(kT2i, kScore)};
  stats.image_to_text = {seconds(kI2t, kEncode), seconds(kI2t, kScore)};
  const auto ranked = [this](Direction d) {
    return RankingCounts{ranked_[d][kScorerTopK].load(std::memory_order_relaxed),
                         ranked_[d][kTopLists].load(std::memory_order_relaxed),
                         ranked_[d][kFullScores].load(std::memory_order_relaxed)};
  };
  stats.text_to_image_ranking = ranked(kT2i);
  stats.image_to_text_ranking = ranked(kI2t);
  return stats;
}

absl::Status ScanRetrievalEngine::RecoverStoreWrites() {
  if (!store_->WritesStopped()) return absl::OkStatus();  // the common case takes no lock
  std::lock_guard<std::mutex> writer(writer_mu_);
  SCANSERVE_RETURN_IF_ERROR(Refusal());
  return PrepareStoreWrite();
}

absl::Status ScanRetrievalEngine::Health() const {
  std::shared_lock<WriterPreferringSharedMutex> state(state_mu_);
  SCANSERVE_RETURN_IF_ERROR(Refusal());
  for (size_t m = 0; m < num_models(); ++m) {
    for (const Scorer* scorer : {models_[m].images.get(), models_[m].captions.get()}) {
      if (absl::Status health = scorer->Health(); !health.ok()) {
        return Prefixed(health, absl::StrCat("model ", m + 1, ": "));
      }
    }
  }
  return absl::OkStatus();
}

absl::Status ScanRetrievalEngine::Close() {
  std::lock_guard<std::mutex> writer(writer_mu_);
  std::unique_lock<WriterPreferringSharedMutex> state(state_mu_);
  if (closed_) return absl::OkStatus();
  closed_ = true;  // scorers and models are freed with the engine
  images_.Clear();
  captions_.Clear();
  return store_->Close();
}


// Publish is the one way items enter the scorers: Load here, and the writes
// (retrieval_engine_writes.cc) after their durable write.
template absl::Status ScanRetrievalEngine::Publish(const std::vector<StoredImage>&, ItemKind);
template absl::Status ScanRetrievalEngine::Publish(const std::vector<StoredCaption>&, ItemKind);

}  // namespace retrieval_internal

using retrieval_internal::kEngineFormat;
using retrieval_internal::kMetaEngineFormat;
using retrieval_internal::kMetaFingerprint;
using retrieval_internal::kMetaModels;
using retrieval_internal::kStoreSubdir;
using retrieval_internal::ModelSlot;
using retrieval_internal::ResolveEncoderDevice;
using retrieval_internal::ScanRetrievalEngine;
using retrieval_internal::ValidateOptions;

absl::StatusOr<std::unique_ptr<RetrievalEngine>> RetrievalEngine::Create(
    const RetrievalEngineOptions& options) {
  SCANSERVE_RETURN_IF_ERROR(ValidateOptions(options));
  if (options.data_dir.empty())
    return absl::InvalidArgumentError("RetrievalEngineOptions: data_dir is empty");
  const std::string path = (std::filesystem::path(options.data_dir) / kStoreSubdir).string();
  SCANSERVE_ASSIGN_OR_RETURN(std::unique_ptr<RocksDbFeatureStore> store,
                             RocksDbFeatureStore::Open(
                                 path, {.change_log_retention_s = options.change_log_retention_s}));
  return CreateWithStore(options, std::move(store));
}

absl::StatusOr<std::unique_ptr<RetrievalEngine>> RetrievalEngine::CreateWithStore(
    const RetrievalEngineOptions& options, std::unique_ptr<FeatureStore> store) {
  SCANSERVE_RETURN_IF_ERROR(ValidateOptions(options));
  if (store == nullptr)
    return absl::InvalidArgumentError("RetrievalEngine::CreateWithStore: no store");

  std::vector<ModelSlot> models;
  std::string description;
  const EncoderDevice encoder_device = ResolveEncoderDevice(options);
  for (size_t m = 0; m < options.model_dirs.size(); ++m) {
    ModelLoadOptions load;
    load.num_threads = options.num_threads;
    load.device = encoder_device;
    ModelSlot slot;
    SCANSERVE_ASSIGN_OR_RETURN(slot.model, ScanModel::Load(options.model_dirs[m], load));
    const ModelConfig& config = slot.model->config();
    if (!models.empty() && config.img_dim != models.front().model->config().img_dim) {
      return absl::InvalidArgumentError(absl::StrCat(
          "the ensemble's models take different region features: ", options.model_dirs[0],
          " has img_dim ", models.front().model->config().img_dim, ", ", options.model_dirs[m],
          " has ", config.img_dim));
    }
    for (ItemKind kind : {ItemKind::kImage, ItemKind::kCaption}) {
      ScorerConfig scorer;
      scorer.dim = config.embed_size;
      scorer.stored_kind = kind;
      scorer.attention = config.attention;
      scorer.storage = options.storage;
      scorer.num_threads = options.num_threads;
      SCANSERVE_ASSIGN_OR_RETURN(std::unique_ptr<Scorer> made,
                                 MakeScorer(options.backend, scorer, options.scorer_tuning));
      if (made == nullptr) return absl::InternalError("MakeScorer returned no scorer");
      (kind == ItemKind::kImage ? slot.images : slot.captions) = std::move(made);
    }
    absl::StrAppend(&description, m == 0 ? "" : "; ", options.model_dirs[m], " (", config.Summary(),
                    ")");
    models.push_back(std::move(slot));
  }

  // The store must have been built by these exact models (or be new).
  SCANSERVE_ASSIGN_OR_RETURN(const std::string fingerprint, ModelsFingerprint(options.model_dirs));
  SCANSERVE_ASSIGN_OR_RETURN(std::optional<std::string> format, store->GetMeta(kMetaEngineFormat));
  SCANSERVE_ASSIGN_OR_RETURN(std::optional<std::string> stored, store->GetMeta(kMetaFingerprint));
  if (format.has_value() && *format != kEngineFormat) {
    return absl::FailedPreconditionError(absl::StrCat(
        "the store has engine format ", *format, "; this scanserve reads format ", kEngineFormat));
  }
  if (stored.has_value() && *stored != fingerprint) {
    SCANSERVE_ASSIGN_OR_RETURN(std::optional<std::string> built_with, store->GetMeta(kMetaModels));
    return absl::FailedPreconditionError(absl::StrCat(
        "the store was built with other models: ", built_with.value_or("(not recorded)"),
        ". Its embeddings are only valid for those exact weights; serve it with them, or use "
        "another "
        "data_dir for these models (",
        description, ")"));
  }
  if (!stored.has_value()) {
    SCANSERVE_RETURN_IF_ERROR(store->SetMeta(kMetaEngineFormat, kEngineFormat));
    SCANSERVE_RETURN_IF_ERROR(store->SetMeta(kMetaModels, description));
    SCANSERVE_RETURN_IF_ERROR(store->SetMeta(kMetaFingerprint, fingerprint));
  }

  auto engine = std::make_unique<ScanRetrievalEngine>(options, std::move(models), std::move(store));
  SCANSERVE_RETURN_IF_ERROR(engine->Load());
  SCANSERVE_RETURN_IF_ERROR(engine->AddSynthetic(ItemKind::kImage, options.synthetic_images));
  SCANSERVE_RETURN_IF_ERROR(engine->AddSynthetic(ItemKind::kCaption, options.synthetic_captions));
  return std::unique_ptr<RetrievalEngine>(std::move(engine));
}

}  // namespace scanserve
