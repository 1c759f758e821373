// FeatureStore: the durable home of every ingested item, so that a restart reloads the scorers
// exactly, without re-running the detector or the encoders.
//
// Records:
//  - StoredImage: the caller's id, collection and metadata, the detector's boxes and labels (for
//    explain), and per loaded model the region embeddings (num_regions x embed_size, fp32, exactly
//    what was added to that model's scorer), and optionally (apart) the input region features.
//  - StoredCaption: id, collection, metadata, the text, and per model its token ids (that model's
//    vocabulary) and word embeddings (num_tokens x embed_size, fp32).
//  Embeddings are indexed by the model's position in RetrievalEngineOptions::model_dirs; the store
//  itself does not know the models (the engine keeps a models fingerprint in the meta entries).
//
// Contract of every implementation:
//  - Writes are batched and atomic per call: Put*/Delete* return OK only once the whole batch is
//    durable (write-ahead log fsync'd for RocksDbFeatureStore); after an error none of it is
//    guaranteed. Putting an existing id replaces it; deleting an absent id is not an error.
//  - A record that fails its checksum or does not decode is DATA_LOSS naming the kind and id.
//  - Every Put*/Delete* logs one change per item (item_change.h) in the same atomic batch, in
//    commit order; the log keeps at least the last `change_log_retention_s` seconds of changes
//    (older ones are trimmed by later writes; <= 0 keeps all). It starts empty in a store written
//    before it existed.
//  - Methods are thread-safe. After Close() every call is FAILED_PRECONDITION.
#pragma once

#include <array>
#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "engine/common/matrix.h"
#include "engine/store/item_change.h"

namespace scanserve {

struct StoredImage {
  std::string id;
  std::string collection;
  std::map<std::string, std::string> metadata;
  int64_t num_regions = 0;
  std::vector<std::array<float, 4>> boxes;  // empty, or num_regions boxes (x1, y1, x2, y2)
  std::vector<std::string> labels;          // empty, or num_regions labels
  std::vector<FloatMatrix> embeddings;      // per model: num_regions x embed_size
  // The input (num_regions x img_dim, the detector's pool5 features) where the engine keeps it
  // (RetrievalEngineOptions::keep_region_features), so that other models can encode it again.
  // Stored apart from the record: GetImages and ScanImages never fill region_features (loading
  // and searching need none), GetImageRegionFeatures reads them; has_region_features says they
  // exist. PutImages stores region_features when set; with it empty, has_region_features true
  // keeps the stored ones (a record read back and written again, e.g. a metadata update) and
  // false removes any (a replaced image's features must not outlive it).
  FloatMatrix region_features;
  bool has_region_features = false;
};

struct StoredCaption {
  std::string id;
  std::string collection;
  std::map<std::string, std::string> metadata;
  std::string text;
  std::vector<std::vector<int64_t>> token_ids;  // per model: <start> w1 .. wn <end>
  std::vector<FloatMatrix> embeddings;          // per model: num_tokens x embed_size
};

// Item counts and on-disk size, for stats and metrics.
struct FeatureStoreStats {
  int64_t disk_bytes = 0;         // table, blob and log files; 0 when not on disk
  int64_t wal_bytes = 0;          // live write-ahead log files
  int64_t synced_writes = 0;      // durable write batches since open
  double sync_write_seconds = 0;  // time spent in them (the fsync dominates)
  int64_t failed_writes = 0;      // write batches that failed since open (a full disk, I/O errors)
  int64_t disk_free_bytes = -1;   // free to the store on its file system; -1 when not on disk
  bool writes_stopped = false;    // an I/O error stopped writes until a reopen (RecoverWrites)
  int64_t reopens = 0;            // reopens after such errors since open
  uint64_t last_change_sequence = 0;     // of the newest logged change (0 = none)
  uint64_t changes_trimmed_through = 0;  // changes up to this sequence are no longer kept
  std::string change_log_id;             // item_change.h
};

class FeatureStore {
 public:
  virtual ~FeatureStore() = default;

  // Durable, atomic batches (see the contract above).
  virtual absl::Status PutImages(absl::Span<const StoredImage> images) = 0;
  virtual absl::Status PutCaptions(absl::Span<const StoredCaption> captions) = 0;
  virtual absl::Status DeleteImages(absl::Span<const std::string> ids) = 0;
  virtual absl::Status DeleteCaptions(absl::Span<const std::string> ids) = 0;

  // Batched reads: result[i] belongs to ids[i], nullopt when absent. A corrupt record fails the
  // whole call with DATA_LOSS naming its id.
  virtual absl::StatusOr<std::vector<std::optional<StoredImage>>> GetImages(
      absl::Span<const std::string> ids) const = 0;
  virtual absl::StatusOr<std::vector<std::optional<StoredCaption>>> GetCaptions(
      absl::Span<const std::string> ids) const = 0;
  // The input region features of images stored with them: nullopt for an image without any (or
  // absent). A corrupt record fails the call with DATA_LOSS naming its id.
  virtual absl::StatusOr<std::vector<std::optional<FloatMatrix>>> GetImageRegionFeatures(
      absl::Span<const std::string> ids) const = 0;

  // Full scans in id (byte) order, for loading at start. `visit` may move from its argument; its
  // first error stops the scan and is returned, as is the first corrupt record.
  virtual absl::Status ScanImages(const std::function<absl::Status(StoredImage&)>& visit) const = 0;
  virtual absl::Status ScanCaptions(
      const std::function<absl::Status(StoredCaption&)>& visit) const = 0;

  // The change log: the changes after `after`, oldest first, at most `max_changes` (>= 1), up to
  // the page's last_sequence. OUT_OF_RANGE when some of them are no longer kept (trimmed), or when
  // `after` is beyond the newest change (the reader's log was another: a snapshot restored, a
  // store made again): a reader in either case must copy everything again.
  virtual absl::StatusOr<ItemChangePage> ListChanges(uint64_t after, int64_t max_changes) const = 0;

  // Small named strings (format version, models fingerprint). SetMeta is durable.
  virtual absl::StatusOr<std::optional<std::string>> GetMeta(const std::string& key) const = 0;
  virtual absl::Status SetMeta(const std::string& key, const std::string& value) = 0;

  virtual FeatureStoreStats Stats() const = 0;

  // A consistent copy of everything stored now (acked writes, meta entries), in `dir`, which must
  // not exist (ALREADY_EXISTS) and whose parent must (NOT_FOUND); the same implementation opens it.
  // FAILED_PRECONDITION where the implementation has no files (InMemoryFeatureStore).
  virtual absl::Status Checkpoint(const std::string& dir) const = 0;

  // Flushes and closes; idempotent.
  virtual absl::Status Close() = 0;

  // Makes writes possible again after an I/O error that stopped them (RocksDbFeatureStore: a
  // failed write or sync of its log, after which RocksDB refuses writes until it is reopened).
  // OK when writes are possible; UNAVAILABLE while the reopen keeps failing. Writes call it
  // themselves; callers that must know when a reopen happened (to settle writes whose failure left
  // their outcome unknown) call it first.
  virtual absl::Status RecoverWrites() { return absl::OkStatus(); }
  // Whether writes are stopped until RecoverWrites succeeds; cheap (no I/O).
  virtual bool WritesStopped() const { return false; }

  // One item: NOT_FOUND when absent.
  absl::StatusOr<StoredImage> GetImage(const std::string& id) const;
  absl::StatusOr<StoredCaption> GetCaption(const std::string& id) const;
};

}  // namespace scanserve
