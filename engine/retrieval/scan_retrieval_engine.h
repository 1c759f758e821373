// ScanRetrievalEngine: the RetrievalEngine over ScanModels, Scorers and a FeatureStore; internal to
// engine/retrieval (users see retrieval_engine.h). Its implementation is split by concern:
// retrieval_engine.cc (creation, loading, encoding, publishing into the scorers, stats and
// lifecycle), retrieval_engine_writes.cc (upserts, deletes, updates, keeping the scorers in step
// with the store), retrieval_engine_reads.cc (reading items back, listing, the change log,
// snapshots) and retrieval_engine_search.cc (both search directions, ranking, explanations).
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
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "absl/container/btree_map.h"
#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/types/span.h"
#include "engine/common/engine_log.h"
#include "engine/common/status_macros.h"
#include "engine/eval/similarity.h"
#include "engine/model/scan_model.h"
#include "engine/retrieval/item_validation.h"
#include "engine/retrieval/retrieval_engine.h"
#include "engine/retrieval/writer_preferring_mutex.h"
#include "engine/store/feature_store.h"

namespace scanserve {
namespace retrieval_internal {

inline constexpr char kMetaEngineFormat[] = "engine_format";
inline constexpr char kMetaFingerprint[] = "models_fingerprint";
inline constexpr char kMetaModels[] = "models_description";
inline constexpr char kEngineFormat[] = "1";
inline constexpr char kStoreSubdir[] = "store";  // the feature store's directory inside data_dir
inline constexpr size_t kLoadChunk = 256;      // records per Scorer::Add while loading
inline constexpr size_t kCommitItems = 1024;   // items per durable write batch of an upsert
inline constexpr int64_t kCommitRows = 16384;  // region / word rows per batch: ~64 MB of fp32 per model
inline constexpr int64_t kItemOverhead = 64;   // per item per scorer: slot, key maps (an estimate)

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

inline const char* KindName(ItemKind kind) { return kind == ItemKind::kImage ? "image" : "caption"; }

inline absl::Status NotStoredError(ItemKind kind, const std::string& id) {
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

inline absl::Status Prefixed(const absl::Status& status, absl::string_view prefix) {
  if (status.ok()) return status;
  return absl::Status(status.code(), absl::StrCat(prefix, status.message()));
}

inline int64_t RowsOf(const StoredImage& image) { return image.num_regions; }
inline int64_t RowsOf(const StoredCaption& caption) { return caption.embeddings.front().rows; }

int64_t FeatureBytesLimit(const RetrievalEngineOptions& options,
                          const std::vector<ModelSlot>& models);

inline constexpr size_t kGetChunk = 64;  // records read from the store at once (each decodes its embeddings)

inline absl::StatusOr<std::vector<std::optional<StoredImage>>> ReadRecords(
    const FeatureStore& store, absl::Span<const std::string> ids, const StoredImage*) {
  return store.GetImages(ids);
}
inline absl::StatusOr<std::vector<std::optional<StoredCaption>>> ReadRecords(
    const FeatureStore& store, absl::Span<const std::string> ids, const StoredCaption*) {
  return store.GetCaptions(ids);
}


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

}  // namespace retrieval_internal
}  // namespace scanserve
