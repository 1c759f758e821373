// RetrievalEngine: what the server serves. It owns the SCAN model(s) (one, or two averaged as an
// ensemble), a durable FeatureStore, and per model one Scorer of stored images (text->image search)
// and one of stored captions (image->text search). Ingest encodes with every model, writes the
// store (durable before it returns), then publishes to the scorers; a restart reloads the store
// into the scorers without re-encoding.
//
// Ids are the caller's strings; a collection name and string metadata ride along and filter
// searches. Every method is thread-safe: searches run concurrently, writers are serialised.
// No gRPC or protobuf types appear here: server/ converts.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "engine/common/matrix.h"
#include "engine/model/encoder_device.h"
#include "engine/scoring/scorer.h"
#include "engine/store/item_change.h"

namespace scanserve {

class FeatureStore;

// Bounds on what one item may carry (INVALID_ARGUMENT beyond them), so that a record, the
// in-memory catalogue and a search response stay small whatever a client sends.
struct RetrievalLimits {
  static constexpr size_t kMaxIdBytes = 256;             // ids are 1..256 bytes
  static constexpr size_t kMaxCollectionBytes = 256;
  static constexpr size_t kMaxMetadataEntries = 64;
  static constexpr size_t kMaxMetadataKeyBytes = 256;
  static constexpr size_t kMaxMetadataValueBytes = 4096;
  static constexpr size_t kMaxCaptionBytes = 64 * 1024;  // also at most Scorer::kMaxRows tokens
  // A text query, checked before it is tokenised: tokenising a 64 MiB one only to find it over
  // max_query_words took seconds, and held a batch of other searches meanwhile.
  static constexpr size_t kMaxQueryBytes = kMaxCaptionBytes;
  static constexpr size_t kMaxLabelBytes = 256;
  // Reading back: ids per GetImages/GetCaptions call, ids per ListImages/ListCaptions page.
  static constexpr size_t kMaxGetIds = 1000;
  // Image ids per GetImages call that also reads the region features back: each image's are up to
  // kMaxRows x img_dim fp32 (1 MiB at 128 x 2048), and the answer must fit a gRPC message.
  static constexpr size_t kMaxGetIdsWithRegionFeatures = 32;
  // Items per write request of the service (upserts, deletes, updates): one answer per item must
  // fit a response, and a request holds an RPC thread until all of them are done. More go in more
  // requests, or through the Ingest stream.
  static constexpr size_t kMaxWriteItems = 10000;
  // Hits per query that explain covers: each one is a stored record read (its region embeddings)
  // and an attention pass, and 1000 per query for 64 queries read gigabytes.
  static constexpr int kMaxExplainTopK = 100;
  static constexpr int64_t kMaxListPageSize = 10000;
  // Ids one ListImages/ListCaptions call looks at, so that a collection filter matching few of
  // many items cannot hold the engine's lock for long: past it the page ends early, with a token.
  static constexpr int64_t kMaxListScan = 100000;
  static constexpr int64_t kMaxChangesPage = 10000;
};

struct RetrievalEngineOptions {
  std::vector<std::string> model_dirs;     // 1 model, or 2 for an ensemble
  std::string data_dir;                    // the store lives here; created if absent
  ScorerBackend backend = ScorerBackend::kCpu;
  // Where every model's text and region encoders run. Unset = auto: the CUDA scorer's device
  // (cuda:0) when backend is kCuda and ScanModel::CudaAvailable(), else the CPU. A CUDA device
  // that cannot be used is FAILED_PRECONDITION.
  std::optional<EncoderDevice> encoder_device;
  StorageType storage = StorageType::kFloat32;
  ScorerTuning scorer_tuning;              // backend-specific (see ScorerTuning)
  int num_threads = 0;                     // 0 = all cores
  int64_t max_images = 1'000'000;          // capacity: beyond these, ingest is RESOURCE_EXHAUSTED
  int64_t max_captions = 5'000'000;
  int64_t max_feature_bytes = 16LL << 30;  // scorer memory across models and both sides
  int max_top_k = 1000;
  int max_query_words = 256;               // tokens per caption query, <start>/<end> included
  // Load tests and benchmarks at scale only: this many random images (36 regions) and captions
  // (12..19 tokens), ids "synthetic/N" in collection "synthetic", added to the scorers at start
  // and never to the store: not durable, regenerated at each start, skipped where the store holds
  // the id. They count against the capacities; exceeding one fails the start (RESOURCE_EXHAUSTED).
  int64_t synthetic_images = 0;
  int64_t synthetic_captions = 0;
  // Store each upserted image's input region features (k x img_dim fp32, the detector's output)
  // beside its embeddings, so that GetImages can hand them back and other models (a retrained
  // checkpoint) can encode the collection again without the detector: `scanctl copy` into a
  // server running them. Costs ~3x the disk of the embeddings alone (2048-d input against
  // 1024-d embeddings), stored apart so that loading and searching never read them; memory is
  // unchanged (the scorers never hold them).
  bool keep_region_features = false;
  // The store's change log (ListChanges) keeps at least this many seconds of writes, so that a
  // copy of the collection (scanctl copy) that falls this far behind can still catch up; <= 0
  // keeps all of it. Each change costs ~30 bytes plus its id on disk.
  double change_log_retention_s = 86400;
};

using Metadata = std::map<std::string, std::string>;

// A region box in original image pixels: x1, y1, x2, y2.
struct Box {
  float x1 = 0, y1 = 0, x2 = 0, y2 = 0;
};

struct ImageItem {
  std::string id;
  std::string collection;
  Metadata metadata;
  FloatMatrix region_features;          // k x img_dim, the detector's pool5 features
  std::vector<Box> boxes;               // empty, or k boxes
  std::vector<std::string> labels;      // empty, or k object labels (with attribute), for explain
};

struct CaptionItem {
  std::string id;
  std::string collection;
  Metadata metadata;
  std::string text;
};

// Which items a search may return: all of them, or those in `collection` whose metadata holds
// every key=value pair of `metadata`.
struct SearchFilter {
  std::string collection;  // empty = any
  Metadata metadata;
};

struct SearchParams {
  int top_k = 10;
  SearchFilter filter;
  bool explain = false;
};

// For one query word (t2i attention: the word attends over the image's regions): the region it
// attends to most, with its weight; the weights come from the first model's attention (its
// raw_feature_norm and λ1, whatever its cross_attn). One entry per scored token, in order:
// "<start>", the caption's tokens (lower-cased, as tokenised), "<end>". box and label are set when
// the image was stored with them.
struct WordExplanation {
  std::string word;
  int region = -1;
  float attention = 0;
  std::optional<Box> box;
  std::string label;
};

struct ImageHit {
  std::string id;
  float score = 0;
  std::string collection;
  Metadata metadata;
  std::vector<WordExplanation> explanation;  // with SearchParams::explain
};

struct CaptionHit {
  std::string id;
  float score = 0;
  std::string text;
  std::string collection;
  Metadata metadata;
};

// An image query for image->text search: a stored image, or raw region features.
struct ImageQuery {
  std::string stored_id;          // set: use the stored image
  FloatMatrix region_features;    // else: k x img_dim features to encode
};

// Per-item outcome of a batched ingest: OK, or why this item was refused (others still go in).
struct ItemResult {
  std::string id;
  absl::Status status;
};

// A change to a stored item's collection and metadata (UpdateImages / UpdateCaptions): its content
// stays as it is, so nothing is detected or encoded again.
struct ItemUpdate {
  std::string id;
  std::optional<std::string> collection;  // unset: unchanged
  Metadata set_metadata;                  // keys added or replaced
  std::vector<std::string> remove_metadata;  // keys removed (absent ones are fine)
};

// One item as GetImages / GetCaptions read it back: what the caller sent with it. The region
// features only where the engine kept them (RetrievalEngineOptions::keep_region_features) and the
// caller asked for them; otherwise the store holds each model's embeddings of them, not the input.
struct StoredImageInfo {
  absl::Status status;      // OK; NOT_FOUND for an unknown id; INVALID_ARGUMENT for a malformed one
  // id, collection, metadata, boxes, labels; region_features when asked for and kept
  ImageItem item;
  int64_t num_regions = 0;
  bool has_region_features = false;  // the store kept this image's input region features
  bool synthetic = false;   // added at start (RetrievalEngineOptions::synthetic_images), not stored
};

struct StoredCaptionInfo {
  absl::Status status;
  CaptionItem item;         // id, collection, metadata, text
  bool synthetic = false;
};

// A page of stored ids (ListImages / ListCaptions), in byte order.
struct ListParams {
  std::string collection;    // empty: every collection
  int64_t page_size = 1000;  // 1..RetrievalLimits::kMaxListPageSize
  std::string page_token;    // empty: from the first id; else a previous page's next_page_token
};

struct ItemPage {
  std::vector<std::string> ids;
  std::string next_page_token;  // empty: this is the last page
};

// What CreateSnapshot wrote.
struct SnapshotInfo {
  std::string data_dir;
  int64_t images = 0;  // stored items in it (synthetic ones are never stored)
  int64_t captions = 0;
  double seconds = 0;  // how long writers waited for it
};

// Where one direction's search time went, summed over every search since the engine started.
struct SearchPhaseSeconds {
  double encode = 0;  // queries to embeddings (tokenising + BiGRU; region FC, stored-image reads)
  double score = 0;   // SCAN scoring of every stored item + top-k (the scorers' pass)
};

// How one direction's queries were ranked, counted since the engine started.
struct RankingCounts {
  int64_t scorer_top_k = 0;  // one model, no filter: the scorer's own top k
  int64_t top_lists = 0;     // a filter or an ensemble, decided from the scorers' device top lists
  // From every stored item's score: filters and ensembles on CPU scorers, and on the GPU the
  // queries the top lists left undecided (rare filters, disagreeing models).
  int64_t full_scores = 0;
};

struct EngineStats {
  int64_t images = 0;
  int64_t captions = 0;
  int64_t synthetic_images = 0;   // of those, added at start (RetrievalEngineOptions) and live
  int64_t synthetic_captions = 0;
  int64_t feature_bytes = 0;      // held by the scorers
  // The scorer memory limit ingest is checked against (max_feature_bytes, lowered to what a GPU
  // can hold), and the estimated bytes of the stored items counted against it.
  int64_t feature_bytes_limit = 0;
  int64_t feature_bytes_committed = 0;
  // The scorers' device memory (CUDA backend): free and total bytes; -1 on the CPU.
  int64_t device_memory_free_bytes = -1;
  int64_t device_memory_total_bytes = -1;
  // Scoring passes so far per kernel, over every scorer (CUDA: "fused", "gemm"); empty on the CPU.
  std::map<std::string, int64_t> scorer_passes;
  // CUDA with --cuda-kernels auto: the kernel each direction's scorer runs per range of query
  // rows, and the times it chose by (the first model's: an ensemble's models see the same
  // shapes); empty otherwise.
  std::vector<Scorer::KernelChoice> text_to_image_kernels;
  std::vector<Scorer::KernelChoice> image_to_text_kernels;
  std::vector<std::string> model_summaries;
  std::string backend;            // "cpu", "cuda:0", ...
  std::string encoder_device;     // where the encoders run: "cpu", "cuda:0", ...
  std::string storage;            // "fp32", "bf16" or "fp8"
  // How queries meet the stored features: "fp32" (CPU backends, fp32 storage), or on the CUDA
  // backend with bf16/fp8 storage "bf16x2" (split, the default) or "bf16" (rounded).
  std::string query_precision;
  int64_t store_disk_bytes = 0;
  int64_t store_wal_bytes = 0;        // live write-ahead log
  int64_t store_synced_writes = 0;    // durable (fsync'd) write batches since start
  double store_sync_seconds = 0;      // total time spent in them
  int64_t store_failed_writes = 0;    // write batches the store failed since start (full disk, I/O)
  int64_t store_disk_free_bytes = -1;  // free on the store's file system; -1 unknown
  bool store_writes_stopped = false;  // an I/O error stopped the store's writes until it is
                                      // reopened (RecoverStoreWrites, or the next write)
  int64_t store_reopens = 0;          // reopens after such errors since start
  uint64_t last_change_sequence = 0;  // of the newest change in the store's change log (0 = none)
  uint64_t changes_trimmed_through = 0;  // changes up to this sequence are no longer kept
  std::string change_log_id;             // new for a new store and for each snapshot
  SearchPhaseSeconds text_to_image;   // SearchImages
  SearchPhaseSeconds image_to_text;   // SearchCaptions
  RankingCounts text_to_image_ranking;
  RankingCounts image_to_text_ranking;
};

class RetrievalEngine {
 public:
  // Loads the models, opens (or creates) the store in data_dir, and loads every stored item into
  // the scorers. A store written under different models is FAILED_PRECONDITION.
  static absl::StatusOr<std::unique_ptr<RetrievalEngine>> Create(const RetrievalEngineOptions& options);
  // As Create, over a store the caller opened (options.data_dir is then unused): tests use an
  // InMemoryFeatureStore; offline tools may pass a RocksDbFeatureStore with their own options.
  static absl::StatusOr<std::unique_ptr<RetrievalEngine>> CreateWithStore(
      const RetrievalEngineOptions& options, std::unique_ptr<FeatureStore> store);
  virtual ~RetrievalEngine() = default;

  // Upserts: each item is validated, encoded and written durably (fsync'd) before this returns;
  // an item that fails does not stop the others. Capacity exhaustion is RESOURCE_EXHAUSTED per item.
  virtual std::vector<ItemResult> UpsertImages(std::vector<ImageItem> items) = 0;
  virtual std::vector<ItemResult> UpsertCaptions(std::vector<CaptionItem> items) = 0;
  // Deletes durably; unknown ids come back NOT_FOUND per item.
  virtual std::vector<ItemResult> DeleteImages(absl::Span<const std::string> ids) = 0;
  virtual std::vector<ItemResult> DeleteCaptions(absl::Span<const std::string> ids) = 0;

  // Collection and metadata changes, durable like upserts, seen by the next search's filters; the
  // scores do not change. Per item: NOT_FOUND for an unknown id, FAILED_PRECONDITION for a
  // synthetic one (never stored), INVALID_ARGUMENT for a malformed or repeated id, a key both set
  // and removed, or a result beyond RetrievalLimits.
  virtual std::vector<ItemResult> UpdateImages(const std::vector<ItemUpdate>& updates) = 0;
  virtual std::vector<ItemResult> UpdateCaptions(const std::vector<ItemUpdate>& updates) = 0;

  // Reading back, from the store (synthetic items from memory): results[i] belongs to ids[i], an
  // unknown or malformed id failing alone. The call fails for more than kMaxGetIds ids
  // (INVALID_ARGUMENT), a closed engine (FAILED_PRECONDITION) or an unreadable store (its error,
  // DATA_LOSS for a corrupt record).
  // with_region_features: also each image's stored input features (has_region_features says
  // which have them), for at most kMaxGetIdsWithRegionFeatures ids (INVALID_ARGUMENT beyond).
  virtual absl::StatusOr<std::vector<StoredImageInfo>> GetImages(absl::Span<const std::string> ids,
                                                                 bool with_region_features) const = 0;
  absl::StatusOr<std::vector<StoredImageInfo>> GetImages(absl::Span<const std::string> ids) const {
    return GetImages(ids, /*with_region_features=*/false);
  }
  virtual absl::StatusOr<std::vector<StoredCaptionInfo>> GetCaptions(
      absl::Span<const std::string> ids) const = 0;
  // The ids searches would see now, in byte order, after params.page_token, of params.collection
  // when set. Each page is consistent by itself; items upserted or deleted between pages show or
  // vanish by their place in that order. A page may hold fewer ids than asked (even none) and still
  // have a next one, when the collection filter skipped kMaxListScan ids. A bad page size,
  // collection or token is INVALID_ARGUMENT.
  virtual absl::StatusOr<ItemPage> ListImages(const ListParams& params) const = 0;
  virtual absl::StatusOr<ItemPage> ListCaptions(const ListParams& params) const = 0;

  // The store's change log: the changes to stored items after sequence `after`, oldest first, at
  // most `max_changes` (1..kMaxChangesPage, else INVALID_ARGUMENT). A page shorter than asked for
  // reached the newest change (page.last_sequence). OUT_OF_RANGE when some changes after `after`
  // are no longer kept (change_log_retention_s), or `after` is beyond the newest (another log:
  // page.log_id tells logs apart). Synthetic items are never stored, so never logged.
  virtual absl::StatusOr<ItemChangePage> ListChanges(uint64_t after, int64_t max_changes) const = 0;

  // Text->image: every caption query scored in one pass over the stored images. Empty queries,
  // top_k outside 1..max_top_k (1..kMaxExplainTopK with explain) are INVALID_ARGUMENT; results[i]
  // belongs to queries[i].
  virtual absl::StatusOr<std::vector<std::vector<ImageHit>>> SearchImages(
      const std::vector<std::string>& queries, const SearchParams& params) const = 0;
  // Image->text over the stored captions. An unknown stored_id is NOT_FOUND.
  virtual absl::StatusOr<std::vector<std::vector<CaptionHit>>> SearchCaptions(
      const std::vector<ImageQuery>& queries, const SearchParams& params) const = 0;

  // The errors SearchImages / SearchCaptions would answer for these queries and params because of
  // the request itself (INVALID_ARGUMENT, an unknown stored_id's NOT_FOUND), found without encoding
  // or scoring. The dynamic batcher checks each request alone before merging it with others: a
  // merged call that fails makes every request of its group run alone, so one bad request among
  // many would otherwise cost a pass over the store per request. OK when nothing is checked.
  virtual absl::Status ValidateSearchImages(const std::vector<std::string>& queries,
                                            const SearchParams& params) const {
    return absl::OkStatus();
  }
  virtual absl::Status ValidateSearchCaptions(const std::vector<ImageQuery>& queries,
                                              const SearchParams& params) const {
    return absl::OkStatus();
  }

  // A restorable copy of the store as it is now: `data_dir`, which must not exist (ALREADY_EXISTS)
  // and whose parent must (NOT_FOUND), becomes a data directory that Create opens with the same
  // models (scanserve --data-dir). Writers wait while it is taken (milliseconds when it is on the
  // store's file system: the files are hard-linked); searches do not. FAILED_PRECONDITION for a
  // closed engine or a store without files (InMemoryFeatureStore).
  virtual absl::StatusOr<SnapshotInfo> CreateSnapshot(const std::string& data_dir) = 0;

  virtual EngineStats Stats() const = 0;
  // OK while every part can answer; else why not (a scorer that broke, a closed engine). The
  // server reports NOT_SERVING from then on.
  virtual absl::Status Health() const { return absl::OkStatus(); }
  // When an I/O error has stopped the store's writes: tries to reopen it (as the next write would),
  // so that writes resume, and the metrics say so, without waiting for one. The server calls it
  // every health poll. OK when writes are possible.
  virtual absl::Status RecoverStoreWrites() { return absl::OkStatus(); }
  // Flushes and closes the store; further calls fail with FAILED_PRECONDITION.
  virtual absl::Status Close() = 0;
};

}  // namespace scanserve
