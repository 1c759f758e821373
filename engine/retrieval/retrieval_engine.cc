// ScanRetrievalEngine: the RetrievalEngine over ScanModels, Scorers and a FeatureStore.
//
// Locking (two locks, always taken in this order):
//  - writer_mu_ serialises writers (upserts, deletes, Close) from capacity check to publish, so
//    capacity accounting and the store never race. Encoding happens before it, in parallel.
//    CreateSnapshot holds it too, so that a snapshot falls between two writes.
//  - state_mu_ (a writer-preferring shared mutex) guards what searches read: the scorers' contents
//  and the catalogs.
//    Searches hold it shared for scoring and filling hits; writers take it exclusively only to
//    publish (Scorer::Add/Remove and catalog updates), never across an fsync.
//  Catalogs are written under both locks, so a writer holding writer_mu_ may read them alone.
//
// Keys: each stored id gets an int64 scorer key from one counter (never reused within a process;
// reassigned at load). The same key names the item in every model's scorer of its kind.
//
// Capacity: counts per kind against max_images / max_captions, and an estimate of the scorer bytes
// of every item (rows x embed x storage width, row norms, and the Gram matrix where the stored side
// is the attention context, summed over models) against max_feature_bytes. The check runs before
// the durable write, so a refused item is never stored and an accepted one never overflows.
#include "engine/retrieval/retrieval_engine.h"

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <iterator>
#include <limits>
#include <mutex>
#include <numeric>
#include <shared_mutex>
#include <type_traits>
#include <utility>

#include "absl/container/btree_map.h"
#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "engine/common/engine_log.h"
#include "engine/common/new_directory.h"
#include "engine/common/status_macros.h"
#include "engine/eval/similarity.h"
#include "engine/model/scan_model.h"
#include "engine/retrieval/item_validation.h"
#include "engine/retrieval/model_mean.h"
#include "engine/retrieval/models_fingerprint.h"
#include "engine/retrieval/synthetic_items.h"
#include "engine/retrieval/top_list_search.h"
#include "engine/retrieval/writer_preferring_mutex.h"
#include "engine/scoring/attention_explain.h"
#include "engine/store/feature_store.h"
#include "engine/store/rocksdb_feature_store.h"
#include "engine/text/tokenizer.h"

namespace scanserve {
namespace {

constexpr char kMetaEngineFormat[] = "engine_format";
constexpr char kMetaFingerprint[] = "models_fingerprint";
constexpr char kMetaModels[] = "models_description";
constexpr char kEngineFormat[] = "1";
constexpr char kStoreSubdir[] = "store";  // the feature store's directory inside data_dir
constexpr size_t kLoadChunk = 256;      // records per Scorer::Add while loading
constexpr size_t kCommitItems = 1024;   // items per durable write batch of an upsert
constexpr int64_t kCommitRows = 16384;  // region / word rows per batch: ~64 MB of fp32 per model
constexpr int64_t kItemOverhead = 64;   // per item per scorer: slot, key maps (an estimate)

// What hits report about a stored item, and what capacity accounting needs.
struct CatalogEntry {
  std::string id;
  std::string collection;
  Metadata metadata;
  std::string text;           // captions only
  int64_t feature_bytes = 0;  // estimated scorer bytes over all models
  // Synthetic item i (RetrievalEngineOptions::synthetic_*: added at start, not stored), or -1.
  int64_t synthetic_index = -1;
  bool synthetic() const { return synthetic_index >= 0; }
};

const char* KindName(ItemKind kind) { return kind == ItemKind::kImage ? "image" : "caption"; }

absl::Status NotStoredError(ItemKind kind, const std::string& id) {
  return absl::NotFoundError(absl::StrCat("no stored ", KindName(kind), " ", QuoteId(id)));
}

// The stored items of one kind.
struct Catalog {
  absl::btree_map<std::string, int64_t> key_of_id;  // ordered: List pages through it
  absl::flat_hash_map<int64_t, CatalogEntry> entries;
  int64_t feature_bytes = 0;
  int64_t synthetic = 0;  // synthetic entries

  int64_t size() const { return static_cast<int64_t>(entries.size()); }
  // The entry of a key the scorers returned: every scorer key has one (an invariant).
  const CatalogEntry& Get(int64_t key) const {
    auto it = entries.find(key);
    SCANSERVE_CHECK(it != entries.end());
    return it->second;
  }
  // The entry of `id` when it is a synthetic item (in the catalog only, never stored); else null.
  const CatalogEntry* FindSynthetic(const std::string& id) const {
    auto it = key_of_id.find(id);
    if (it == key_of_id.end()) return nullptr;
    const CatalogEntry& entry = Get(it->second);
    return entry.synthetic() ? &entry : nullptr;
  }
  void Insert(int64_t key, CatalogEntry entry) {
    feature_bytes += entry.feature_bytes;
    synthetic += entry.synthetic() ? 1 : 0;
    key_of_id[entry.id] = key;
    entries[key] = std::move(entry);
  }
  void Erase(int64_t key) {
    auto it = entries.find(key);
    if (it == entries.end()) return;
    feature_bytes -= it->second.feature_bytes;
    synthetic -= it->second.synthetic() ? 1 : 0;
    key_of_id.erase(it->second.id);
    entries.erase(it);
  }
  void Clear() {
    key_of_id.clear();
    entries.clear();
    feature_bytes = 0;
    synthetic = 0;
  }
};

struct ModelSlot {
  std::unique_ptr<ScanModel> model;
  std::unique_ptr<Scorer> images;    // stored images, queried by captions (text->image)
  std::unique_ptr<Scorer> captions;  // stored captions, queried by images (image->text)
};

// One item's outcome of encoding: its embeddings per model, or why it failed.
struct Encoded {
  absl::Status status;
  std::vector<FloatMatrix> per_model;
};

FloatMatrix CopyItem(const StackedItems& stacked, int64_t i) {
  FloatMatrix m(stacked.num_rows(i), stacked.rows.cols);
  std::copy(stacked.rows.row(stacked.offsets[i]), stacked.rows.row(stacked.offsets[i + 1]),
            m.data.begin());
  return m;
}

absl::Status Prefixed(const absl::Status& status, absl::string_view prefix) {
  if (status.ok()) return status;
  return absl::Status(status.code(), absl::StrCat(prefix, status.message()));
}

const char* BackendName(ScorerBackend backend) {
  switch (backend) {
    case ScorerBackend::kCpu:
      return "cpu";
    case ScorerBackend::kReference:
      return "reference";
    case ScorerBackend::kCuda:
      return "cuda";
  }
  return "unknown";
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

int64_t RowsOf(const StoredImage& image) { return image.num_regions; }
int64_t RowsOf(const StoredCaption& caption) { return caption.embeddings.front().rows; }

int64_t FeatureBytesLimit(const RetrievalEngineOptions& options,
                          const std::vector<ModelSlot>& models);

class ScanRetrievalEngine final : public RetrievalEngine {
 public:
  ScanRetrievalEngine(const RetrievalEngineOptions& options, std::vector<ModelSlot> models,
                      std::unique_ptr<FeatureStore> store)
      : options_(options),
        models_(std::move(models)),
        store_(std::move(store)),
        img_dim_(models_.front().model->config().img_dim),
        feature_bytes_limit_(FeatureBytesLimit(options_, models_)) {}

  ~ScanRetrievalEngine() override {
    const absl::Status closed = Close();
    if (!closed.ok())
      EngineLog(EngineLogLevel::kError, absl::StrCat("RetrievalEngine: closing: ", closed.ToString()));
  }

  // Reads every stored item into the scorers (Create, before anyone else sees the engine).
  absl::Status Load();
  // Adds options_.synthetic_images / synthetic_captions (Create, after Load).
  absl::Status AddSynthetic(ItemKind kind, int64_t count);

  std::vector<ItemResult> UpsertImages(std::vector<ImageItem> items) override;
  std::vector<ItemResult> UpsertCaptions(std::vector<CaptionItem> items) override;
  std::vector<ItemResult> DeleteImages(absl::Span<const std::string> ids) override;
  std::vector<ItemResult> DeleteCaptions(absl::Span<const std::string> ids) override;
  std::vector<ItemResult> UpdateImages(const std::vector<ItemUpdate>& updates) override;
  std::vector<ItemResult> UpdateCaptions(const std::vector<ItemUpdate>& updates) override;
  using RetrievalEngine::GetImages;
  absl::StatusOr<std::vector<StoredImageInfo>> GetImages(absl::Span<const std::string> ids,
                                                         bool with_region_features) const override;
  absl::StatusOr<std::vector<StoredCaptionInfo>> GetCaptions(
      absl::Span<const std::string> ids) const override;
  absl::StatusOr<ItemPage> ListImages(const ListParams& params) const override;
  absl::StatusOr<ItemPage> ListCaptions(const ListParams& params) const override;
  absl::StatusOr<ItemChangePage> ListChanges(uint64_t after, int64_t max_changes) const override;
  absl::StatusOr<SnapshotInfo> CreateSnapshot(const std::string& data_dir) override;
  absl::StatusOr<std::vector<std::vector<ImageHit>>> SearchImages(
      const std::vector<std::string>& queries, const SearchParams& params) const override;
  absl::StatusOr<std::vector<std::vector<CaptionHit>>> SearchCaptions(
      const std::vector<ImageQuery>& queries, const SearchParams& params) const override;
  absl::Status ValidateSearchImages(const std::vector<std::string>& queries,
                                    const SearchParams& params) const override;
  absl::Status ValidateSearchCaptions(const std::vector<ImageQuery>& queries,
                                      const SearchParams& params) const override;
  EngineStats Stats() const override;
  absl::Status Health() const override;
  absl::Status Close() override;
  absl::Status RecoverStoreWrites() override;

 private:
  using ScorerOf = std::unique_ptr<Scorer> ModelSlot::*;

  size_t num_models() const { return models_.size(); }
  // Estimated scorer bytes of an item of `rows` rows, over every model.
  int64_t EstimateBytes(int64_t rows, ItemKind kind) const;
  // Where feature_bytes_limit_ comes from, for error messages.
  std::string LimitSource() const {
    return feature_bytes_limit_ < options_.max_feature_bytes
               ? absl::StrCat("the scorers' device memory; max_feature_bytes is ",
                              options_.max_feature_bytes)
               : std::string("max_feature_bytes");
  }

  // Encoding, batched per model; a failing batch is retried item by item so that one item's
  // error stays its own.
  std::vector<Encoded> EncodeRegions(const std::vector<const FloatMatrix*>& features) const;
  // ids[i][m]: item i's tokens under model m (all OK).
  std::vector<Encoded> EncodeTokens(
      const std::vector<std::vector<std::vector<int64_t>>>& ids) const;
  absl::StatusOr<std::vector<FloatMatrix>> EncodeTokensOfModel(
      size_t m, const std::vector<std::vector<int64_t>>& ids) const;

  // Capacity check, durable write and publish of prepared records; fills results[index[i]].
  template <typename Record>
  void Commit(std::vector<Record> records, const std::vector<size_t>& index, ItemKind kind,
              std::vector<ItemResult>* results);
  template <typename Record>
  absl::Status Publish(const std::vector<Record>& records, ItemKind kind);
  std::vector<ItemResult> Delete(absl::Span<const std::string> ids, ItemKind kind);
  template <typename Record>
  std::vector<ItemResult> Update(const std::vector<ItemUpdate>& updates, ItemKind kind);
  template <typename Info>
  absl::StatusOr<std::vector<Info>> Get(absl::Span<const std::string> ids, ItemKind kind,
                                        bool with_region_features) const;
  // Fills item.region_features of the OK infos that have them (has_region_features).
  absl::Status ReadRegionFeatures(std::vector<StoredImageInfo>* infos) const;
  absl::StatusOr<ItemPage> List(const ListParams& params, ItemKind kind) const;

  absl::Status ValidateParams(const SearchParams& params, size_t num_queries) const;
  // INVALID_ARGUMENT for a query with both a stored id and region features, or bad features.
  absl::Status CheckImageQuery(const ImageQuery& query, size_t q) const;
  // Each query's token ids per model ([model][query]); INVALID_ARGUMENT for a query over
  // kMaxQueryBytes, without words, or over max_query_words.
  absl::StatusOr<std::vector<std::vector<std::vector<int64_t>>>> TokenizeQueries(
      const std::vector<std::string>& queries) const;
  // Model-averaged scores of queries (per model: one view per query) against the `side` scorers,
  // columns in the order of *keys. Caller holds state_mu_.
  absl::Status ScoreAveraged(const std::vector<std::vector<ItemView>>& queries, ScorerOf side,
                             FloatMatrix* scores, std::vector<int64_t>* keys) const;
  // The top_k items per query that pass params.filter, best first, ties to the smaller key.
  // One model without a filter: the scorer's own Search (the CUDA backend selects on the device,
  // so only k results per query leave it, not a score per stored item). A filter or an ensemble,
  // on such backends: exact from the models' top lists (top_list_search.h), full scores for the
  // queries those leave undecided; elsewhere full (averaged) scores. Caller holds state_mu_.
  absl::StatusOr<std::vector<std::vector<ScoredKey>>> Rank(
      const std::vector<std::vector<ItemView>>& queries, ScorerOf side, const Catalog& catalog,
      const SearchParams& params) const;
  // Top-k per row over the columns whose item passes the filter. Caller holds state_mu_.
  std::vector<std::vector<ScoredKey>> TopK(const FloatMatrix& scores,
                                           const std::vector<int64_t>& keys, const Catalog& catalog,
                                           const SearchParams& params) const;
  absl::Status Explain(const std::vector<std::string>& queries,
                       const std::vector<std::vector<int64_t>>& ids, const StackedItems& words,
                       std::vector<std::vector<ImageHit>>* results) const;

  Catalog& catalog(ItemKind kind) { return kind == ItemKind::kImage ? images_ : captions_; }
  const Catalog& catalog(ItemKind kind) const {
    return kind == ItemKind::kImage ? images_ : captions_;
  }
  static ScorerOf side(ItemKind kind) {
    return kind == ItemKind::kImage ? &ModelSlot::images : &ModelSlot::captions;
  }

  const RetrievalEngineOptions options_;
  const std::vector<ModelSlot> models_;  // the models are immutable; the scorers are guarded below
  const std::unique_ptr<FeatureStore> store_;  // thread-safe itself
  const int64_t img_dim_;                      // shared by every model
  // max_feature_bytes, lowered to what the scorers' device can hold (FeatureBytesLimit).
  const int64_t feature_bytes_limit_;
  // Search time per phase, nanoseconds since start: [direction][encode, score].
  mutable std::atomic<int64_t> phase_ns_[2][2] = {};
  enum Direction { kT2i = 0, kI2t = 1 };
  enum Phase { kEncode = 0, kScore = 1 };
  void AddPhase(Direction direction, Phase phase, std::chrono::steady_clock::time_point since) const {
    phase_ns_[direction][phase].fetch_add(
        std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now() - since)
            .count(),
        std::memory_order_relaxed);
  }
  // Queries ranked per path since start: [direction][scorer top k, top lists, full scores].
  enum RankingPath { kScorerTopK = 0, kTopLists = 1, kFullScores = 2 };
  mutable std::atomic<int64_t> ranked_[2][3] = {};
  void CountRanked(ScorerOf side, RankingPath path, size_t queries) const {
    ranked_[side == &ModelSlot::images ? kT2i : kI2t][path].fetch_add(
        static_cast<int64_t>(queries), std::memory_order_relaxed);
  }
  SimilarityOptions encode_options_;           // batch sizes for EncodeAll

  std::mutex writer_mu_;  // serialises writers; guards next_key_ (see the top of the file)
  int64_t next_key_ = 0;

  // Guards the scorers' contents, the catalogs and closed_ (closed_ and the catalogs are written
  // under writer_mu_ too, so writers read them holding either).
  mutable WriterPreferringSharedMutex state_mu_;
  Catalog images_;
  Catalog captions_;
  bool closed_ = false;
  // Set when a scorer could not apply a change the store holds (a device failure in the CUDA
  // backend): from then on the scorers may hold what the store no longer does, so the engine
  // refuses to serve and reports unhealthy until a restart reloads the store. Guarded like closed_.
  absl::Status out_of_sync_;

  // Records that model m's scorer failed to apply a committed change.
  void NoteOutOfSync(size_t m, const absl::Status& failure);
  // Takes keys of `kind`, which every scorer of that kind holds, out of the scorers and the
  // catalog; a scorer failing to is out of sync. Caller holds writer_mu_ and state_mu_.
  void Unpublish(ItemKind kind, const std::vector<int64_t>& keys);

  // Ids of each kind ([image, caption]) whose store write failed: the store may hold the write or
  // not (a failed log sync leaves its bytes to be replayed when the store is reopened), so before
  // the next write they are read back and the scorers and catalog made to match the store.
  // Guarded by writer_mu_.
  absl::flat_hash_set<std::string> doubtful_[2];
  absl::flat_hash_set<std::string>& doubtful(ItemKind kind) {
    return doubtful_[kind == ItemKind::kImage ? 0 : 1];
  }
  void NoteDoubtfulIds(ItemKind kind, absl::Span<const std::string> ids) {
    doubtful(kind).insert(ids.begin(), ids.end());
  }
  template <typename Record>
  void NoteDoubtfulRecords(ItemKind kind, const std::vector<Record>& records) {
    for (const Record& record : records) doubtful(kind).insert(record.id);
  }
  // Before a store write: reopens the store if an I/O error stopped its writes, then settles the
  // doubtful ids. Caller holds writer_mu_.
  absl::Status PrepareStoreWrite();
  template <typename Record>
  absl::Status SettleDoubtful(ItemKind kind);
  // Why the engine refuses work now (closed, or out of sync with the store); OK while it serves.
  // Callers hold writer_mu_ or state_mu_.
  absl::Status Refusal() const {
    if (closed_) return absl::FailedPreconditionError("the engine is closed");
    return out_of_sync_;
  }
};

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

// ---- Writing ----------------------------------------------------------------------------------

CatalogEntry EntryOf(const StoredImage& image, int64_t bytes) {
  return CatalogEntry{image.id, image.collection, image.metadata, "", bytes};
}
CatalogEntry EntryOf(const StoredCaption& caption, int64_t bytes) {
  return CatalogEntry{caption.id, caption.collection, caption.metadata, caption.text, bytes};
}

absl::Status PutRecords(FeatureStore& store, const std::vector<StoredImage>& records) {
  return store.PutImages(records);
}
absl::Status PutRecords(FeatureStore& store, const std::vector<StoredCaption>& records) {
  return store.PutCaptions(records);
}
absl::Status DeleteRecords(FeatureStore& store, const std::vector<std::string>& ids,
                           ItemKind kind) {
  return kind == ItemKind::kImage ? store.DeleteImages(ids) : store.DeleteCaptions(ids);
}

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

template <typename Record>
void ScanRetrievalEngine::Commit(std::vector<Record> records, const std::vector<size_t>& index,
                                 ItemKind kind, std::vector<ItemResult>* results) {
  const char* kind_name = KindName(kind);
  std::lock_guard<std::mutex> writer(writer_mu_);
  if (const absl::Status refused = Refusal(); !refused.ok()) {
    for (size_t i : index) (*results)[i].status = refused;
    return;
  }
  // Capacity, item by item in request order.
  Catalog& items = catalog(kind);
  const int64_t max_count = kind == ItemKind::kImage ? options_.max_images : options_.max_captions;
  int64_t count = items.size();
  int64_t bytes = images_.feature_bytes + captions_.feature_bytes;
  std::vector<Record> accepted;
  std::vector<size_t> accepted_index;
  for (size_t i = 0; i < records.size(); ++i) {
    auto it = items.key_of_id.find(records[i].id);
    const bool exists = it != items.key_of_id.end();
    const int64_t need = EstimateBytes(RowsOf(records[i]), kind);
    const int64_t freed = exists ? items.Get(it->second).feature_bytes : 0;
    absl::Status& status = (*results)[index[i]].status;
    if (!exists && count + 1 > max_count) {
      status = absl::ResourceExhaustedError(
          absl::StrCat("the store is full: it holds ", count, " ", kind_name,
                       "s, the configured maximum (max_", kind_name, "s)"));
    } else if (bytes - freed + need > feature_bytes_limit_) {
      status = absl::ResourceExhaustedError(absl::StrCat(
          "scorer memory is full: this ", kind_name, " needs ~", need, " bytes and ", bytes,
          " of the limit ", feature_bytes_limit_, " are in use (", LimitSource(), ")"));
    } else {
      count += exists ? 0 : 1;
      bytes += need - freed;
      accepted.push_back(std::move(records[i]));
      accepted_index.push_back(index[i]);
    }
  }
  if (accepted.empty()) return;

  // Durable first: an item is acked only once it is in the fsync'd log.
  absl::Status written = PrepareStoreWrite();
  if (written.ok()) {
    written = PutRecords(*store_, accepted);
    if (!written.ok()) NoteDoubtfulRecords(kind, accepted);
  }
  if (!written.ok()) {
    for (size_t i : accepted_index) (*results)[i].status = written;
    return;
  }
  absl::Status published;
  {
    std::unique_lock<WriterPreferringSharedMutex> state(state_mu_);
    published = Publish(accepted, kind);
  }
  if (published.ok()) return;
  // Keep the store equal to what is served: the batch is out of the scorers, so out of the store.
  std::vector<std::string> ids;
  for (const Record& record : accepted) ids.push_back(record.id);
  const absl::Status undone = DeleteRecords(*store_, ids, kind);
  if (!undone.ok()) {
    std::fprintf(
        stderr,
        "RetrievalEngine: %zu %ss are stored but could not be served (%s) nor removed (%s); "
        "they come back at the next start\n",
        ids.size(), kind_name, published.ToString().c_str(), undone.ToString().c_str());
  }
  for (size_t i : accepted_index) {
    (*results)[i].status = Prefixed(published, "not stored: ");
  }
}

// Splits positions 0..n-1 into consecutive runs of at most kCommitItems items and, unless one
// item alone exceeds it, kCommitRows rows. Each run is encoded and committed (one fsync) on its
// own, so the memory of one call stays bounded however many items it brings.
template <typename RowsOf>
std::vector<std::pair<size_t, size_t>> CommitRuns(size_t n, RowsOf rows_of) {
  std::vector<std::pair<size_t, size_t>> runs;
  size_t begin = 0;
  int64_t rows = 0;
  for (size_t j = 0; j < n; ++j) {
    const int64_t r = rows_of(j);
    if (j > begin && (j - begin >= kCommitItems || rows + r > kCommitRows)) {
      runs.emplace_back(begin, j);
      begin = j;
      rows = 0;
    }
    rows += r;
  }
  if (begin < n) runs.emplace_back(begin, n);
  return runs;
}

std::vector<ItemResult> ScanRetrievalEngine::UpsertImages(std::vector<ImageItem> items) {
  std::vector<ItemResult> results(items.size());
  std::vector<size_t> valid;
  absl::flat_hash_set<std::string> seen;
  for (size_t i = 0; i < items.size(); ++i) {
    results[i].id = items[i].id;
    absl::Status status = ValidateImageItem(items[i], img_dim_);
    if (status.ok() && !seen.insert(items[i].id).second) {
      status = absl::InvalidArgumentError("the id appears more than once in this request");
    }
    if (status.ok()) {
      valid.push_back(i);
    } else {
      results[i].status = status;
    }
  }
  const auto rows_of = [&](size_t j) { return items[valid[j]].region_features.rows; };
  for (const auto& [begin, end] : CommitRuns(valid.size(), rows_of)) {
    std::vector<const FloatMatrix*> features;
    for (size_t j = begin; j < end; ++j) features.push_back(&items[valid[j]].region_features);
    std::vector<Encoded> encoded = EncodeRegions(features);

    std::vector<StoredImage> records;
    std::vector<size_t> index;
    for (size_t j = begin; j < end; ++j) {
      ImageItem& item = items[valid[j]];
      Encoded& embeddings = encoded[j - begin];
      if (!embeddings.status.ok()) {
        results[valid[j]].status = embeddings.status;
        continue;
      }
      StoredImage record;
      record.id = item.id;
      record.collection = std::move(item.collection);
      record.metadata = std::move(item.metadata);
      record.num_regions = item.region_features.rows;
      for (const Box& b : item.boxes) record.boxes.push_back({b.x1, b.y1, b.x2, b.y2});
      record.labels = std::move(item.labels);
      record.embeddings = std::move(embeddings.per_model);
      if (options_.keep_region_features) {
        record.region_features = std::move(item.region_features);
        record.has_region_features = true;
      }
      item.region_features = FloatMatrix();
      records.push_back(std::move(record));
      index.push_back(valid[j]);
    }
    Commit(std::move(records), index, ItemKind::kImage, &results);
  }
  return results;
}

std::vector<ItemResult> ScanRetrievalEngine::UpsertCaptions(std::vector<CaptionItem> items) {
  std::vector<ItemResult> results(items.size());
  std::vector<size_t> valid;
  std::vector<std::vector<std::vector<int64_t>>> ids;  // [valid item][model]
  absl::flat_hash_set<std::string> seen;
  for (size_t i = 0; i < items.size(); ++i) {
    results[i].id = items[i].id;
    absl::Status status = ValidateCaptionItem(items[i]);
    if (status.ok() && !seen.insert(items[i].id).second) {
      status = absl::InvalidArgumentError("the id appears more than once in this request");
    }
    std::vector<std::vector<int64_t>> per_model;
    for (size_t m = 0; m < num_models() && status.ok(); ++m) {
      absl::StatusOr<std::vector<int64_t>> tokens = models_[m].model->CaptionToIds(items[i].text);
      if (!tokens.ok()) {
        status = tokens.status();
      } else if (static_cast<int64_t>(tokens->size()) > Scorer::kMaxRows) {
        status = absl::InvalidArgumentError(absl::StrCat("the caption has ", tokens->size(),
                                                         " tokens; at most ", Scorer::kMaxRows,
                                                         " are allowed"));
      } else {
        per_model.push_back(*std::move(tokens));
      }
    }
    if (status.ok()) {
      valid.push_back(i);
      ids.push_back(std::move(per_model));
    } else {
      results[i].status = status;
    }
  }
  const auto rows_of = [&](size_t j) { return static_cast<int64_t>(ids[j].front().size()); };
  for (const auto& [begin, end] : CommitRuns(valid.size(), rows_of)) {
    std::vector<Encoded> encoded = EncodeTokens({ids.begin() + begin, ids.begin() + end});

    std::vector<StoredCaption> records;
    std::vector<size_t> index;
    for (size_t j = begin; j < end; ++j) {
      CaptionItem& item = items[valid[j]];
      Encoded& embeddings = encoded[j - begin];
      if (!embeddings.status.ok()) {
        results[valid[j]].status = embeddings.status;
        continue;
      }
      StoredCaption record;
      record.id = item.id;
      record.collection = std::move(item.collection);
      record.metadata = std::move(item.metadata);
      record.text = std::move(item.text);
      record.token_ids = std::move(ids[j]);
      record.embeddings = std::move(embeddings.per_model);
      records.push_back(std::move(record));
      index.push_back(valid[j]);
    }
    Commit(std::move(records), index, ItemKind::kCaption, &results);
  }
  return results;
}

std::vector<ItemResult> ScanRetrievalEngine::Delete(absl::Span<const std::string> ids,
                                                    ItemKind kind) {
  std::vector<ItemResult> results(ids.size());
  for (size_t i = 0; i < ids.size(); ++i) results[i].id = ids[i];
  std::lock_guard<std::mutex> writer(writer_mu_);
  if (const absl::Status refused = Refusal(); !refused.ok()) {
    for (ItemResult& r : results) r.status = refused;
    return results;
  }
  Catalog& items = catalog(kind);
  std::vector<std::string> doomed;
  std::vector<int64_t> keys;
  std::vector<size_t> index;  // results that depend on the write
  absl::flat_hash_set<std::string> seen;
  for (size_t i = 0; i < ids.size(); ++i) {
    auto it = items.key_of_id.find(ids[i]);
    if (it == items.key_of_id.end()) {
      results[i].status = NotStoredError(kind, ids[i]);
      continue;
    }
    index.push_back(i);  // a repeated id reports like its first occurrence
    if (seen.insert(ids[i]).second) {
      doomed.push_back(ids[i]);
      keys.push_back(it->second);
    }
  }
  if (doomed.empty()) return results;
  absl::Status deleted = PrepareStoreWrite();
  if (deleted.ok()) {
    deleted = DeleteRecords(*store_, doomed, kind);
    if (!deleted.ok()) NoteDoubtfulIds(kind, doomed);
  }
  if (!deleted.ok()) {
    for (size_t i : index) results[i].status = deleted;
    return results;
  }
  // The delete is durable: a scorer failing to apply it is out of sync.
  std::unique_lock<WriterPreferringSharedMutex> state(state_mu_);
  Unpublish(kind, keys);
  return results;
}

std::vector<ItemResult> ScanRetrievalEngine::DeleteImages(absl::Span<const std::string> ids) {
  return Delete(ids, ItemKind::kImage);
}

std::vector<ItemResult> ScanRetrievalEngine::DeleteCaptions(absl::Span<const std::string> ids) {
  return Delete(ids, ItemKind::kCaption);
}

// ---- Reading back -----------------------------------------------------------------------------

constexpr size_t kGetChunk = 64;  // records read from the store at once (each decodes its embeddings)

absl::StatusOr<std::vector<std::optional<StoredImage>>> ReadRecords(
    const FeatureStore& store, absl::Span<const std::string> ids, const StoredImage*) {
  return store.GetImages(ids);
}
absl::StatusOr<std::vector<std::optional<StoredCaption>>> ReadRecords(
    const FeatureStore& store, absl::Span<const std::string> ids, const StoredCaption*) {
  return store.GetCaptions(ids);
}

// The store record behind each Info type.
template <typename Info>
using RecordOf = std::conditional_t<std::is_same_v<Info, StoredImageInfo>, StoredImage, StoredCaption>;

void FillInfo(StoredImage& record, StoredImageInfo* info) {
  info->has_region_features = record.has_region_features;
  info->item.collection = std::move(record.collection);
  info->item.metadata = std::move(record.metadata);
  info->num_regions = record.num_regions;
  for (const std::array<float, 4>& b : record.boxes) {
    info->item.boxes.push_back(Box{b[0], b[1], b[2], b[3]});
  }
  info->item.labels = std::move(record.labels);
}
void FillInfo(StoredCaption& record, StoredCaptionInfo* info) {
  info->item.collection = std::move(record.collection);
  info->item.metadata = std::move(record.metadata);
  info->item.text = std::move(record.text);
}

// Synthetic items live in the catalog only.
void FillSynthetic(const CatalogEntry& entry, StoredImageInfo* info) {
  info->item.collection = entry.collection;
  info->item.metadata = entry.metadata;
  info->num_regions = kSyntheticImageRegions;
  info->synthetic = true;
}
void FillSynthetic(const CatalogEntry& entry, StoredCaptionInfo* info) {
  info->item.collection = entry.collection;
  info->item.metadata = entry.metadata;
  info->item.text = entry.text;
  info->synthetic = true;
}

// From the store, whose records are what was acknowledged; ids it lacks may be synthetic.
template <typename Info>
absl::StatusOr<std::vector<Info>> ScanRetrievalEngine::Get(absl::Span<const std::string> ids,
                                                           ItemKind kind,
                                                           bool with_region_features) const {
  const char* kind_name = KindName(kind);
  if (ids.size() > RetrievalLimits::kMaxGetIds) {
    return absl::InvalidArgumentError(absl::StrCat("at most ", RetrievalLimits::kMaxGetIds, " ",
                                                   kind_name, " ids per call, got ", ids.size()));
  }
  if (with_region_features && ids.size() > RetrievalLimits::kMaxGetIdsWithRegionFeatures) {
    return absl::InvalidArgumentError(
        absl::StrCat("at most ", RetrievalLimits::kMaxGetIdsWithRegionFeatures,
                     " image ids per call with their region features, got ", ids.size()));
  }
  {
    std::shared_lock<WriterPreferringSharedMutex> state(state_mu_);
    if (closed_) return absl::FailedPreconditionError("the engine is closed");
  }
  std::vector<Info> out(ids.size());
  std::vector<std::string> wanted;
  std::vector<size_t> index;  // out's index of each wanted id
  for (size_t i = 0; i < ids.size(); ++i) {
    out[i].item.id = ids[i];
    out[i].status = ValidateId(ids[i]);
    if (!out[i].status.ok()) continue;
    wanted.push_back(ids[i]);
    index.push_back(i);
  }
  std::vector<size_t> absent;
  for (size_t begin = 0; begin < wanted.size(); begin += kGetChunk) {
    const absl::Span<const std::string> chunk =
        absl::MakeConstSpan(wanted).subspan(begin, kGetChunk);
    SCANSERVE_ASSIGN_OR_RETURN(
        auto records, ReadRecords(*store_, chunk, static_cast<const RecordOf<Info>*>(nullptr)));
    for (size_t j = 0; j < chunk.size(); ++j) {
      if (records[j].has_value()) {
        FillInfo(*records[j], &out[index[begin + j]]);
      } else {
        absent.push_back(index[begin + j]);
      }
    }
  }
  if constexpr (std::is_same_v<Info, StoredImageInfo>) {
    if (with_region_features) SCANSERVE_RETURN_IF_ERROR(ReadRegionFeatures(&out));
  }
  if (absent.empty()) return out;
  std::shared_lock<WriterPreferringSharedMutex> state(state_mu_);
  const Catalog& items = catalog(kind);
  for (size_t i : absent) {
    if (const CatalogEntry* entry = items.FindSynthetic(ids[i])) {
      FillSynthetic(*entry, &out[i]);
    } else {
      out[i].status = NotStoredError(kind, ids[i]);
    }
  }
  return out;
}

// Kept apart from the records (FeatureStore): read only for the images whose record has them.
absl::Status ScanRetrievalEngine::ReadRegionFeatures(std::vector<StoredImageInfo>* infos) const {
  std::vector<std::string> ids;
  std::vector<StoredImageInfo*> with;
  for (StoredImageInfo& info : *infos) {
    if (!info.status.ok() || !info.has_region_features) continue;
    ids.push_back(info.item.id);
    with.push_back(&info);
  }
  if (ids.empty()) return absl::OkStatus();
  SCANSERVE_ASSIGN_OR_RETURN(std::vector<std::optional<FloatMatrix>> features,
                             store_->GetImageRegionFeatures(ids));
  // The image's record as it is now, to tell a write between the two reads from a store that lost
  // its consistency.
  auto record_now = [&](size_t i) -> absl::StatusOr<std::optional<StoredImage>> {
    SCANSERVE_ASSIGN_OR_RETURN(std::vector<std::optional<StoredImage>> now,
                               store_->GetImages(absl::MakeConstSpan(&ids[i], 1)));
    return std::move(now[0]);
  };
  for (size_t i = 0; i < ids.size(); ++i) {
    if (!features[i].has_value()) {
      // Deleted or replaced since its record was read; else the store lost what its record says.
      SCANSERVE_ASSIGN_OR_RETURN(std::optional<StoredImage> now, record_now(i));
      if (now.has_value() && now->has_region_features) {
        return absl::DataLossError(absl::StrCat("the stored image ", QuoteId(ids[i]),
                                                " has no region features although its record "
                                                "says it has"));
      }
      with[i]->has_region_features = false;
      continue;
    }
    if (features[i]->rows != with[i]->num_regions) {
      // Replaced by another image between the two reads, or a store that lost its consistency.
      SCANSERVE_ASSIGN_OR_RETURN(std::optional<StoredImage> now, record_now(i));
      if (!now.has_value() || now->num_regions != with[i]->num_regions) {
        return absl::AbortedError(absl::StrCat("image ", QuoteId(ids[i]),
                                               " was replaced while it was read; read it again"));
      }
      return absl::DataLossError(absl::StrCat("the stored region features of image ",
                                              QuoteId(ids[i]), " have ", features[i]->rows,
                                              " rows for ", with[i]->num_regions, " regions"));
    }
    with[i]->item.region_features = *std::move(features[i]);
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<StoredImageInfo>> ScanRetrievalEngine::GetImages(
    absl::Span<const std::string> ids, bool with_region_features) const {
  return Get<StoredImageInfo>(ids, ItemKind::kImage, with_region_features);
}

absl::StatusOr<std::vector<StoredCaptionInfo>> ScanRetrievalEngine::GetCaptions(
    absl::Span<const std::string> ids) const {
  return Get<StoredCaptionInfo>(ids, ItemKind::kCaption, /*with_region_features=*/false);
}

// From the catalog: what searches see. The page token is the page's last id, so that a page
// resumes after it whatever was written in between.
absl::StatusOr<ItemPage> ScanRetrievalEngine::List(const ListParams& params, ItemKind kind) const {
  if (params.page_size < 1 || params.page_size > RetrievalLimits::kMaxListPageSize) {
    return absl::InvalidArgumentError(absl::StrCat("page_size must be in 1..",
                                                   RetrievalLimits::kMaxListPageSize, ", got ",
                                                   params.page_size));
  }
  SCANSERVE_RETURN_IF_ERROR(ValidateCollectionAndMetadata(params.collection, {}));
  if (params.page_token.size() > RetrievalLimits::kMaxIdBytes) {
    return absl::InvalidArgumentError("page_token is not one this server gave");
  }
  std::shared_lock<WriterPreferringSharedMutex> state(state_mu_);
  if (closed_) return absl::FailedPreconditionError("the engine is closed");
  const Catalog& items = catalog(kind);
  ItemPage page;
  auto it = params.page_token.empty() ? items.key_of_id.begin()
                                      : items.key_of_id.upper_bound(params.page_token);
  for (int64_t scanned = 0; it != items.key_of_id.end(); ++it, ++scanned) {
    if (scanned == RetrievalLimits::kMaxListScan) {
      page.next_page_token = std::prev(it)->first;  // the next page resumes after the last looked at
      break;
    }
    if (!params.collection.empty() && items.Get(it->second).collection != params.collection) {
      continue;
    }
    if (static_cast<int64_t>(page.ids.size()) == params.page_size) {
      page.next_page_token = page.ids.back();  // one more matches: there is a next page
      break;
    }
    page.ids.push_back(it->first);
  }
  return page;
}

absl::StatusOr<ItemPage> ScanRetrievalEngine::ListImages(const ListParams& params) const {
  return List(params, ItemKind::kImage);
}

absl::StatusOr<ItemPage> ScanRetrievalEngine::ListCaptions(const ListParams& params) const {
  return List(params, ItemKind::kCaption);
}

// Straight from the store: its writes are the engine's, in the engine's (serialised) order.
absl::StatusOr<ItemChangePage> ScanRetrievalEngine::ListChanges(uint64_t after,
                                                                int64_t max_changes) const {
  if (max_changes < 1 || max_changes > RetrievalLimits::kMaxChangesPage) {
    return absl::InvalidArgumentError(absl::StrCat("a page of changes holds 1..",
                                                   RetrievalLimits::kMaxChangesPage, ", not ",
                                                   max_changes));
  }
  return store_->ListChanges(after, max_changes);
}

// ---- Updating collections and metadata ---------------------------------------------------------

// The record as `update` leaves it; INVALID_ARGUMENT beyond the limits.
template <typename Record>
absl::Status ApplyUpdate(const ItemUpdate& update, Record* record) {
  if (update.collection.has_value()) record->collection = *update.collection;
  for (const std::string& key : update.remove_metadata) record->metadata.erase(key);
  for (const auto& [key, value] : update.set_metadata) record->metadata[key] = value;
  return ValidateCollectionAndMetadata(record->collection, record->metadata);
}

// Read, change and write back whole records (one fsync per chunk), then the catalog: the scorers
// hold nothing that changes.
template <typename Record>
std::vector<ItemResult> ScanRetrievalEngine::Update(const std::vector<ItemUpdate>& updates,
                                                    ItemKind kind) {
  const char* kind_name = KindName(kind);
  std::vector<ItemResult> results(updates.size());
  std::vector<size_t> valid;
  absl::flat_hash_set<std::string> seen;
  for (size_t i = 0; i < updates.size(); ++i) {
    const ItemUpdate& update = updates[i];
    results[i].id = update.id;
    absl::Status status = ValidateId(update.id);
    if (status.ok() && !seen.insert(update.id).second) {
      status = absl::InvalidArgumentError("the id appears more than once in this request");
    }
    for (const std::string& key : update.remove_metadata) {
      if (status.ok() && update.set_metadata.count(key) > 0) {
        status = absl::InvalidArgumentError(
            absl::StrCat("metadata key ", QuoteId(key), " is both set and removed"));
      }
    }
    if (status.ok()) {
      valid.push_back(i);
    } else {
      results[i].status = status;
    }
  }
  std::lock_guard<std::mutex> writer(writer_mu_);
  if (const absl::Status refused = Refusal(); !refused.ok()) {
    for (size_t i : valid) results[i].status = refused;
    return results;
  }
  if (const absl::Status prepared = PrepareStoreWrite(); !prepared.ok()) {
    for (size_t i : valid) results[i].status = prepared;
    return results;
  }
  Catalog& items = catalog(kind);
  for (size_t begin = 0; begin < valid.size(); begin += kGetChunk) {
    const size_t end = std::min(valid.size(), begin + kGetChunk);
    std::vector<std::string> ids;
    for (size_t j = begin; j < end; ++j) ids.push_back(updates[valid[j]].id);
    absl::StatusOr<std::vector<std::optional<Record>>> read =
        ReadRecords(*store_, ids, static_cast<const Record*>(nullptr));
    if (!read.ok()) {
      for (size_t j = begin; j < end; ++j) results[valid[j]].status = read.status();
      continue;
    }
    std::vector<Record> changed;
    std::vector<size_t> changed_index;
    for (size_t j = begin; j < end; ++j) {
      const size_t i = valid[j];
      std::optional<Record>& record = (*read)[j - begin];
      if (!record.has_value()) {
        results[i].status =
            items.FindSynthetic(updates[i].id) != nullptr
                ? absl::FailedPreconditionError(absl::StrCat("synthetic ", kind_name, " ",
                                                             QuoteId(updates[i].id),
                                                             " is not stored and cannot be updated"))
                : NotStoredError(kind, updates[i].id);
        continue;
      }
      results[i].status = ApplyUpdate(updates[i], &*record);
      if (!results[i].status.ok()) continue;
      changed.push_back(*std::move(record));
      changed_index.push_back(i);
    }
    if (changed.empty()) continue;
    const absl::Status written = PutRecords(*store_, changed);
    if (!written.ok()) {
      NoteDoubtfulRecords(kind, changed);
      for (size_t i : changed_index) results[i].status = written;
      continue;
    }
    std::unique_lock<WriterPreferringSharedMutex> state(state_mu_);
    for (Record& record : changed) {
      // Every stored id is in the catalog (the store and the catalog change together).
      auto it = items.key_of_id.find(record.id);
      SCANSERVE_CHECK(it != items.key_of_id.end());
      CatalogEntry& entry = items.entries.find(it->second)->second;
      entry.collection = std::move(record.collection);
      entry.metadata = std::move(record.metadata);
    }
  }
  return results;
}

std::vector<ItemResult> ScanRetrievalEngine::UpdateImages(const std::vector<ItemUpdate>& updates) {
  return Update<StoredImage>(updates, ItemKind::kImage);
}

std::vector<ItemResult> ScanRetrievalEngine::UpdateCaptions(const std::vector<ItemUpdate>& updates) {
  return Update<StoredCaption>(updates, ItemKind::kCaption);
}

// ---- Snapshots --------------------------------------------------------------------------------

absl::StatusOr<SnapshotInfo> ScanRetrievalEngine::CreateSnapshot(const std::string& data_dir) {
  namespace fs = std::filesystem;
  const auto start = std::chrono::steady_clock::now();
  std::lock_guard<std::mutex> writer(writer_mu_);
  if (closed_) return absl::FailedPreconditionError("the engine is closed");
  if (data_dir.empty()) return absl::InvalidArgumentError("the snapshot directory is empty");
  SCANSERVE_RETURN_IF_ERROR(CheckNewDirectory(data_dir, "snapshot directory"));
  SCANSERVE_RETURN_IF_ERROR(PrepareStoreWrite());  // the copy then matches what is served
  std::error_code error;
  const fs::path dir(data_dir);
  if (!fs::create_directory(dir, error)) {
    return absl::FailedPreconditionError(absl::StrCat(
        "cannot create the snapshot directory ", data_dir, ": ", error.message()));
  }
  const absl::Status written = store_->Checkpoint((dir / kStoreSubdir).string());
  if (!written.ok()) {
    fs::remove_all(dir, error);  // no half snapshot left behind
    return written;
  }
  SnapshotInfo info;
  info.data_dir = data_dir;
  info.images = images_.size() - images_.synthetic;
  info.captions = captions_.size() - captions_.synthetic;
  info.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return info;
}

// ---- Searching --------------------------------------------------------------------------------

absl::Status ScanRetrievalEngine::ValidateParams(const SearchParams& params,
                                                 size_t num_queries) const {
  if (num_queries == 0) return absl::InvalidArgumentError("no queries");
  if (params.top_k < 1 || params.top_k > options_.max_top_k) {
    return absl::InvalidArgumentError(
        absl::StrCat("top_k must be in 1..", options_.max_top_k, ", got ", params.top_k));
  }
  if (params.explain && params.top_k > RetrievalLimits::kMaxExplainTopK) {
    return absl::InvalidArgumentError(absl::StrCat("explain covers at most the top ", RetrievalLimits::kMaxExplainTopK,
                                                   " hits per query, got top_k ", params.top_k));
  }
  return ValidateCollectionAndMetadata(params.filter.collection, params.filter.metadata);
}

absl::Status ScanRetrievalEngine::ScoreAveraged(const std::vector<std::vector<ItemView>>& queries,
                                                ScorerOf side, FloatMatrix* scores,
                                                std::vector<int64_t>* keys) const {
  *keys = (models_[0].*side)->keys();
  SCANSERVE_RETURN_IF_ERROR((models_[0].*side)->ScoreAll(queries[0], scores));
  FloatMatrix other;
  for (size_t m = 1; m < num_models(); ++m) {
    const Scorer& scorer = *(models_[m].*side);
    SCANSERVE_RETURN_IF_ERROR(scorer.ScoreAll(queries[m], &other));
    // Every scorer of a kind receives the same Add/Remove sequence, so the column orders agree;
    // map through the keys anyway rather than rely on a backend's ordering.
    std::vector<int64_t> column(keys->size());
    const std::vector<int64_t> other_keys = scorer.keys();
    if (other_keys == *keys) {
      for (size_t j = 0; j < column.size(); ++j) column[j] = static_cast<int64_t>(j);
    } else {
      absl::flat_hash_map<int64_t, int64_t> column_of_key;
      for (size_t j = 0; j < other_keys.size(); ++j)
        column_of_key[other_keys[j]] = static_cast<int64_t>(j);
      for (size_t j = 0; j < column.size(); ++j) {
        auto it = column_of_key.find((*keys)[j]);
        if (it == column_of_key.end())
          return absl::InternalError("the models' scorers hold different items");
        column[j] = it->second;
      }
    }
    for (int64_t q = 0; q < scores->rows; ++q) {
      float* row = scores->row(q);
      const float* add = other.row(q);
      // Summed through double, as ComputeSimilarities does, so the ensemble equals it exactly.
      for (size_t j = 0; j < column.size(); ++j) row[j] = AddModelScore(row[j], add[column[j]]);
    }
  }
  const int models = static_cast<int>(num_models());
  for (float& s : scores->data) s = FinishModelMean(s, models);
  return absl::OkStatus();
}

absl::StatusOr<std::vector<std::vector<ScoredKey>>> ScanRetrievalEngine::Rank(
    const std::vector<std::vector<ItemView>>& queries, ScorerOf side, const Catalog& items,
    const SearchParams& params) const {
  const SearchFilter& filter = params.filter;
  const bool filtered = !filter.collection.empty() || !filter.metadata.empty();
  const size_t num_queries = queries[0].size();
  if (num_models() == 1 && !filtered) {
    absl::StatusOr<std::vector<std::vector<ScoredKey>>> found =
        (models_[0].*side)->Search(queries[0], params.top_k);
    if (found.ok()) CountRanked(side, kScorerTopK, num_queries);
    return found;
  }
  size_t ranked_in_full = 0;
  auto rank_in_full = [&](absl::Span<const int> query_indices)
      -> absl::StatusOr<std::vector<std::vector<ScoredKey>>> {
    ranked_in_full += query_indices.size();
    std::vector<std::vector<ItemView>> subset(num_models());
    for (size_t m = 0; m < num_models(); ++m) {
      if (query_indices.size() == queries[m].size()) {
        subset[m] = queries[m];
        continue;
      }
      for (int j : query_indices) subset[m].push_back(queries[m][static_cast<size_t>(j)]);
    }
    FloatMatrix scores;
    std::vector<int64_t> keys;
    SCANSERVE_RETURN_IF_ERROR(ScoreAveraged(subset, side, &scores, &keys));
    CountRanked(side, kFullScores, query_indices.size());
    return TopK(scores, keys, items, params);
  };
  TopListSearch search;
  search.k = params.top_k;
  search.fetch = std::numeric_limits<int64_t>::max();
  for (size_t m = 0; m < num_models(); ++m) {
    const Scorer& scorer = *(models_[m].*side);
    search.scorers.push_back(&scorer);
    search.queries.push_back(queries[m]);
    search.fetch = std::min(search.fetch, scorer.DeviceSearchMaxK());
  }
  if (search.fetch < params.top_k) {
    // A Search that costs a ScoreAll (CPU scorers, or k beyond the device's top-k): full scores.
    std::vector<int> all(num_queries);
    std::iota(all.begin(), all.end(), 0);
    return rank_in_full(all);
  }
  if (filtered) {
    search.keep = [&](int64_t key) {
      const CatalogEntry& entry = items.Get(key);
      return MatchesFilter(filter, entry.collection, entry.metadata);
    };
  }
  absl::StatusOr<std::vector<std::vector<ScoredKey>>> ranked = RankFromTopLists(search, rank_in_full);
  if (ranked.ok()) CountRanked(side, kTopLists, num_queries - ranked_in_full);
  return ranked;
}

std::vector<std::vector<ScoredKey>> ScanRetrievalEngine::TopK(const FloatMatrix& scores,
                                                              const std::vector<int64_t>& keys,
                                                              const Catalog& items,
                                                              const SearchParams& params) const {
  const SearchFilter& filter = params.filter;
  if (filter.collection.empty() && filter.metadata.empty())
    return TopKPerRow(scores, keys, params.top_k);
  // The filter is a column mask: keep the passing columns, then select among them.
  std::vector<int64_t> columns;
  for (size_t j = 0; j < keys.size(); ++j) {
    const CatalogEntry& entry = items.Get(keys[j]);
    if (MatchesFilter(filter, entry.collection, entry.metadata))
      columns.push_back(static_cast<int64_t>(j));
  }
  FloatMatrix kept(scores.rows, static_cast<int64_t>(columns.size()));
  std::vector<int64_t> kept_keys;
  kept_keys.reserve(columns.size());
  for (int64_t j : columns) kept_keys.push_back(keys[static_cast<size_t>(j)]);
  for (int64_t q = 0; q < scores.rows; ++q) {
    const float* src = scores.row(q);
    float* dst = kept.row(q);
    for (size_t c = 0; c < columns.size(); ++c) dst[c] = src[columns[c]];
  }
  return TopKPerRow(kept, kept_keys, params.top_k);
}

absl::StatusOr<std::vector<std::vector<std::vector<int64_t>>>> ScanRetrievalEngine::TokenizeQueries(
    const std::vector<std::string>& queries) const {
  for (size_t q = 0; q < queries.size(); ++q) {
    if (queries[q].size() > RetrievalLimits::kMaxQueryBytes) {
      return absl::InvalidArgumentError(absl::StrCat("query ", q, " has ", queries[q].size(), " bytes; at most ",
                                                     RetrievalLimits::kMaxQueryBytes, " are allowed"));
    }
  }
  std::vector<std::vector<std::vector<int64_t>>> ids(num_models());
  for (size_t m = 0; m < num_models(); ++m) {
    for (size_t q = 0; q < queries.size(); ++q) {
      absl::StatusOr<std::vector<int64_t>> tokens = models_[m].model->CaptionToIds(queries[q]);
      if (!tokens.ok()) return Prefixed(tokens.status(), absl::StrCat("query ", q, ": "));
      if (static_cast<int64_t>(tokens->size()) > options_.max_query_words) {
        return absl::InvalidArgumentError(absl::StrCat(
            "query ", q, " has ", tokens->size(), " tokens (<start> and <end> included); at most ",
            options_.max_query_words, " are allowed"));
      }
      ids[m].push_back(*std::move(tokens));
    }
  }
  return ids;
}

absl::Status ScanRetrievalEngine::ValidateSearchImages(const std::vector<std::string>& queries,
                                                       const SearchParams& params) const {
  SCANSERVE_RETURN_IF_ERROR(ValidateParams(params, queries.size()));
  return TokenizeQueries(queries).status();
}

absl::StatusOr<std::vector<std::vector<ImageHit>>> ScanRetrievalEngine::SearchImages(
    const std::vector<std::string>& queries, const SearchParams& params) const {
  SCANSERVE_RETURN_IF_ERROR(ValidateParams(params, queries.size()));
  // Tokenise and encode with every model before taking the lock: it is the slow part.
  const auto encode_start = std::chrono::steady_clock::now();
  SCANSERVE_ASSIGN_OR_RETURN(const std::vector<std::vector<std::vector<int64_t>>> ids,
                             TokenizeQueries(queries));  // [model][query]
  std::vector<StackedItems> words(num_models());
  for (size_t m = 0; m < num_models(); ++m) {
    SCANSERVE_ASSIGN_OR_RETURN(ModelEmbeddings embeddings,
                               EncodeAll(*models_[m].model, {}, ids[m], encode_options_));
    words[m] = std::move(embeddings.captions);
  }
  std::vector<std::vector<ItemView>> views(num_models());
  for (size_t m = 0; m < num_models(); ++m) {
    for (size_t q = 0; q < queries.size(); ++q)
      views[m].push_back(words[m].item(static_cast<int64_t>(q)));
  }
  AddPhase(kT2i, kEncode, encode_start);

  std::shared_lock<WriterPreferringSharedMutex> state(state_mu_);
  SCANSERVE_RETURN_IF_ERROR(Refusal());
  std::vector<std::vector<ImageHit>> results(queries.size());
  if (images_.size() == 0) return results;
  const auto score_start = std::chrono::steady_clock::now();
  SCANSERVE_ASSIGN_OR_RETURN(const std::vector<std::vector<ScoredKey>> top,
                             Rank(views, &ModelSlot::images, images_, params));
  AddPhase(kT2i, kScore, score_start);
  for (size_t q = 0; q < queries.size(); ++q) {
    for (const ScoredKey& scored : top[q]) {
      const CatalogEntry& entry = images_.Get(scored.key);
      ImageHit hit;
      hit.id = entry.id;
      hit.score = scored.score;
      hit.collection = entry.collection;
      hit.metadata = entry.metadata;
      results[q].push_back(std::move(hit));
    }
  }
  if (params.explain) SCANSERVE_RETURN_IF_ERROR(Explain(queries, ids[0], words[0], &results));
  return results;
}

// The words of a query as the model scored them: <start>, the tokens, <end>.
std::vector<std::string> QueryWords(const std::string& query, const std::vector<int64_t>& ids,
                                    const Vocabulary& vocabulary) {
  std::vector<std::string> tokens = TokenizeCaption(query);
  if (tokens.size() + 2 == ids.size()) {
    std::vector<std::string> words;
    words.reserve(ids.size());
    words.push_back(vocabulary.WordOf(Vocabulary::kStart));
    for (std::string& t : tokens) words.push_back(std::move(t));
    words.push_back(vocabulary.WordOf(Vocabulary::kEnd));
    return words;
  }
  std::vector<std::string> words;  // (never expected) fall back to the vocabulary's spelling
  for (int64_t id : ids) words.push_back(vocabulary.WordOf(id));
  return words;
}

absl::Status ScanRetrievalEngine::Explain(const std::vector<std::string>& queries,
                                          const std::vector<std::vector<int64_t>>& ids,
                                          const StackedItems& words,
                                          std::vector<std::vector<ImageHit>>* results) const {
  const ModelConfig& config = models_[0].model->config();
  for (size_t q = 0; q < queries.size(); ++q) {
    // The hits' stored records (the first model's region embeddings, boxes, labels), one query at
    // a time: at most kMaxExplainTopK records in memory, whatever the batch.
    std::vector<std::string> hit_ids;
    for (const ImageHit& hit : (*results)[q]) hit_ids.push_back(hit.id);
    SCANSERVE_ASSIGN_OR_RETURN(std::vector<std::optional<StoredImage>> records, store_->GetImages(hit_ids));
    const std::vector<std::string> query_words =
        QueryWords(queries[q], ids[q], models_[0].model->vocabulary());
    for (size_t h = 0; h < (*results)[q].size(); ++h) {
      ImageHit& hit = (*results)[q][h];
      const std::optional<StoredImage>& record = records[h];
      if (!record.has_value()) continue;  // deleted while this search ran: nothing to explain
      if (record->embeddings.empty() || record->embeddings[0].cols != config.embed_size ||
          record->embeddings[0].rows != record->num_regions) {
        return absl::DataLossError(absl::StrCat("the stored image ", QuoteId(hit.id),
                                                " has no valid embeddings for the first model"));
      }
      SCANSERVE_ASSIGN_OR_RETURN(
          std::vector<WordAttention> best,
          BestRegionPerWord(words.item(static_cast<int64_t>(q)), ItemView(record->embeddings[0]),
                            config.embed_size, config.attention.raw_feature_norm,
                            config.attention.lambda_softmax));
      for (size_t t = 0; t < best.size(); ++t) {
        WordExplanation e;
        e.word = t < query_words.size() ? query_words[t] : std::string();
        e.region = static_cast<int>(best[t].region);
        e.attention = best[t].weight;
        const size_t r = static_cast<size_t>(best[t].region);
        if (r < record->boxes.size()) {
          const std::array<float, 4>& b = record->boxes[r];
          e.box = Box{b[0], b[1], b[2], b[3]};
        }
        if (r < record->labels.size()) e.label = record->labels[r];
        hit.explanation.push_back(std::move(e));
      }
    }
  }
  return absl::OkStatus();
}

absl::Status ScanRetrievalEngine::ValidateSearchCaptions(const std::vector<ImageQuery>& queries,
                                                         const SearchParams& params) const {
  SCANSERVE_RETURN_IF_ERROR(ValidateParams(params, queries.size()));
  for (size_t q = 0; q < queries.size(); ++q) SCANSERVE_RETURN_IF_ERROR(CheckImageQuery(queries[q], q));
  std::shared_lock<WriterPreferringSharedMutex> state(state_mu_);
  for (size_t q = 0; q < queries.size(); ++q) {
    const std::string& id = queries[q].stored_id;
    if (!id.empty() && !images_.key_of_id.contains(id)) {
      return absl::NotFoundError(absl::StrCat("query ", q, ": no stored image ", QuoteId(id)));
    }
  }
  return absl::OkStatus();
}

absl::Status ScanRetrievalEngine::CheckImageQuery(const ImageQuery& query, size_t q) const {
  if (query.stored_id.empty()) {
    return Prefixed(ValidateRegionFeatures(query.region_features, img_dim_), absl::StrCat("query ", q, ": "));
  }
  if (query.region_features.rows != 0 || !query.region_features.data.empty()) {
    return absl::InvalidArgumentError(absl::StrCat("query ", q, ": give a stored image id or region features, not both"));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<std::vector<CaptionHit>>> ScanRetrievalEngine::SearchCaptions(
    const std::vector<ImageQuery>& queries, const SearchParams& params) const {
  SCANSERVE_RETURN_IF_ERROR(ValidateParams(params, queries.size()));
  const auto encode_start = std::chrono::steady_clock::now();
  std::vector<std::vector<FloatMatrix>> regions(queries.size());  // [query][model]
  std::vector<const FloatMatrix*> raw;
  std::vector<size_t> raw_index;
  std::vector<std::string> stored_ids;
  std::vector<size_t> stored_index;
  for (size_t q = 0; q < queries.size(); ++q) {
    const ImageQuery& query = queries[q];
    SCANSERVE_RETURN_IF_ERROR(CheckImageQuery(query, q));
    if (!query.stored_id.empty()) {
      stored_ids.push_back(query.stored_id);
      stored_index.push_back(q);
      continue;
    }
    raw.push_back(&query.region_features);
    raw_index.push_back(q);
  }
  std::vector<Encoded> encoded = EncodeRegions(raw);
  for (size_t j = 0; j < raw.size(); ++j) {
    SCANSERVE_RETURN_IF_ERROR(
        Prefixed(encoded[j].status, absl::StrCat("query ", raw_index[j], ": ")));
    regions[raw_index[j]] = std::move(encoded[j].per_model);
  }

  std::shared_lock<WriterPreferringSharedMutex> state(state_mu_);
  SCANSERVE_RETURN_IF_ERROR(Refusal());
  // Stored images are queried with their stored embeddings: no re-encoding. Synthetic ones are
  // made again from their index.
  if (!stored_ids.empty()) {
    std::vector<std::string> in_store;
    std::vector<size_t> in_store_index;
    for (size_t j = 0; j < stored_ids.size(); ++j) {
      auto it = images_.key_of_id.find(stored_ids[j]);
      if (it == images_.key_of_id.end()) {
        return absl::NotFoundError(
            absl::StrCat("query ", stored_index[j], ": no stored image ", QuoteId(stored_ids[j])));
      }
      const int64_t synthetic = images_.Get(it->second).synthetic_index;
      if (synthetic < 0) {
        in_store.push_back(std::move(stored_ids[j]));
        in_store_index.push_back(stored_index[j]);
        continue;
      }
      for (size_t m = 0; m < num_models(); ++m) {
        regions[stored_index[j]].push_back(
            MakeSyntheticItem(ItemKind::kImage, synthetic % SyntheticPoolSize(options_.synthetic_images),
                              m, models_[m].model->config().embed_size));
      }
    }
    stored_ids = std::move(in_store);
    stored_index = std::move(in_store_index);
  }
  if (!stored_ids.empty()) {
    SCANSERVE_ASSIGN_OR_RETURN(std::vector<std::optional<StoredImage>> records,
                               store_->GetImages(stored_ids));
    for (size_t j = 0; j < stored_ids.size(); ++j) {
      if (!records[j].has_value()) {
        return absl::NotFoundError(
            absl::StrCat("query ", stored_index[j], ": no stored image ", QuoteId(stored_ids[j])));
      }
      if (records[j]->embeddings.size() != num_models()) {
        return absl::DataLossError(absl::StrCat("the stored image ", QuoteId(stored_ids[j]),
                                                " has embeddings for ",
                                                records[j]->embeddings.size(), " models"));
      }
      regions[stored_index[j]] = std::move(records[j]->embeddings);
    }
  }
  AddPhase(kI2t, kEncode, encode_start);
  std::vector<std::vector<CaptionHit>> results(queries.size());
  if (captions_.size() == 0) return results;
  const auto score_start = std::chrono::steady_clock::now();
  std::vector<std::vector<ItemView>> views(num_models());
  for (size_t m = 0; m < num_models(); ++m) {
    for (size_t q = 0; q < queries.size(); ++q) views[m].push_back(ItemView(regions[q][m]));
  }
  SCANSERVE_ASSIGN_OR_RETURN(const std::vector<std::vector<ScoredKey>> top,
                             Rank(views, &ModelSlot::captions, captions_, params));
  AddPhase(kI2t, kScore, score_start);
  for (size_t q = 0; q < queries.size(); ++q) {
    for (const ScoredKey& scored : top[q]) {
      const CatalogEntry& entry = captions_.Get(scored.key);
      CaptionHit hit;
      hit.id = entry.id;
      hit.score = scored.score;
      hit.text = entry.text;
      hit.collection = entry.collection;
      hit.metadata = entry.metadata;
      results[q].push_back(std::move(hit));
    }
  }
  return results;
}

// ---- Stats and lifecycle ----------------------------------------------------------------------

EngineStats ScanRetrievalEngine::Stats() const {
  EngineStats stats;
  for (const ModelSlot& slot : models_) {
    stats.model_summaries.push_back(
        absl::StrCat(slot.model->model_dir(), ": ", slot.model->config().Summary()));
  }
  stats.backend = BackendName(options_.backend);
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

absl::Status ScanRetrievalEngine::PrepareStoreWrite() {
  SCANSERVE_RETURN_IF_ERROR(store_->RecoverWrites());
  SCANSERVE_RETURN_IF_ERROR(SettleDoubtful<StoredImage>(ItemKind::kImage));
  return SettleDoubtful<StoredCaption>(ItemKind::kCaption);
}

template <typename Record>
absl::Status ScanRetrievalEngine::SettleDoubtful(ItemKind kind) {
  absl::flat_hash_set<std::string>& doubtful = this->doubtful(kind);
  if (doubtful.empty()) return absl::OkStatus();
  Catalog& items = catalog(kind);
  std::vector<std::string> ids(doubtful.begin(), doubtful.end());
  int64_t stored = 0, unserved = 0;
  for (size_t begin = 0; begin < ids.size(); begin += kGetChunk) {
    const absl::Span<const std::string> chunk =
        absl::MakeConstSpan(ids).subspan(begin, std::min(kGetChunk, ids.size() - begin));
    absl::StatusOr<std::vector<std::optional<Record>>> read =
        ReadRecords(*store_, chunk, static_cast<const Record*>(nullptr));
    if (!read.ok()) {
      return Prefixed(read.status(), "reading back the items of a failed store write: ");
    }
    std::vector<Record> present;
    std::vector<int64_t> absent_keys;
    for (size_t j = 0; j < chunk.size(); ++j) {
      if ((*read)[j].has_value()) {
        present.push_back(*std::move((*read)[j]));
        continue;
      }
      auto it = items.key_of_id.find(chunk[j]);
      if (it != items.key_of_id.end() && !items.Get(it->second).synthetic()) {
        absent_keys.push_back(it->second);
      }
    }
    std::unique_lock<WriterPreferringSharedMutex> state(state_mu_);
    if (!present.empty()) {
      // Republishing an unchanged record replaces it by itself; a scorer failing here leaves the
      // store holding what is not served, as when a committed change cannot be applied.
      const absl::Status published = Publish(present, kind);
      if (!published.ok()) NoteOutOfSync(0, published);
    }
    if (!absent_keys.empty()) Unpublish(kind, absent_keys);
    stored += static_cast<int64_t>(present.size());
    unserved += static_cast<int64_t>(absent_keys.size());
    for (const std::string& id : chunk) doubtful.erase(id);
  }
  EngineLog(EngineLogLevel::kWarning,
            absl::StrCat("RetrievalEngine: read back the ", ids.size(), " ", KindName(kind),
                         "(s) of failed store writes: ", stored, " stored, ",
                         static_cast<int64_t>(ids.size()) - stored, " not stored (", unserved,
                         " of them no longer served); what is served matches the store"));
  return Refusal();
}

void ScanRetrievalEngine::Unpublish(ItemKind kind, const std::vector<int64_t>& keys) {
  for (size_t m = 0; m < num_models(); ++m) {
    // Every key is in every scorer of this kind (the catalog says so), so only the backend can
    // fail here (CUDA: device memory or a device copy).
    const absl::Status removed = (models_[m].*side(kind))->Remove(keys);
    if (!removed.ok()) NoteOutOfSync(m, removed);
  }
  Catalog& items = catalog(kind);
  for (int64_t key : keys) items.Erase(key);
}

void ScanRetrievalEngine::NoteOutOfSync(size_t m, const absl::Status& failure) {
  EngineLog(EngineLogLevel::kError,
            absl::StrCat("RetrievalEngine: model ", m + 1,
                         "'s scorer failed to apply a stored change: ", failure.ToString()));
  if (!out_of_sync_.ok()) return;
  out_of_sync_ = absl::InternalError(absl::StrCat(
      "model ", m + 1, "'s scorer could not apply a change the store holds (", failure.message(),
      "): the engine no longer serves; restart it to reload the store"));
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

}  // namespace

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
