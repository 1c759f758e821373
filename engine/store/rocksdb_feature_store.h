// RocksDbFeatureStore: the production FeatureStore, one RocksDB database in a directory.
//
// Layout: column families "images", "captions" (key = the caller's id bytes, value = a
// record_codec.h record), "image_regions" (kept input features, same keys), "changes" (the change
// log: key = 8-byte big-endian sequence, value = a change record) and "meta" (key = name, value =
// raw string). Large values (embeddings)
// live in RocksDB blob files, so compactions move keys, not megabytes of floats.
//
// Durability: every write is one WriteBatch written with WriteOptions::sync, i.e. the write-ahead
// log is fsync'd before the call returns; a batch of N items costs one fsync. An acked write
// survives kill -9 and power loss; an acked delete never comes back.
//
// A full disk fails writes with RESOURCE_EXHAUSTED while reads go on. RocksDB then refuses writes
// until it has recovered by itself, which it does (within seconds) once its write buffer (64 MB)
// fits in the free space again: no reopen is needed. Stats() counts the failed writes and reports
// the free space. Open() refuses with RESOURCE_EXHAUSTED, before RocksDB runs, when the free space
// cannot hold the write-ahead log it replays (plus 1 MB).
//
// Other I/O errors on the log (EIO from a failing disk or a network volume) make RocksDB refuse
// every later write until the database is reopened. The store then reopens it itself, before the
// next write or when RecoverWrites() is called (the server does every second), retrying with a
// backoff (0.5 s doubling to 30 s) while that fails; reads go on
// meanwhile (except during a reopen that failed). Writes refused in between are UNAVAILABLE. The
// write that failed may or may not be stored once the log is replayed (a failed sync leaves the
// bytes in the page cache): its caller learns which by reading it back after RecoverWrites().
//
// RocksDB headers stay inside rocksdb_feature_store.cc; its statuses are converted to absl ones
// there, by one function (NotFound -> NOT_FOUND, Corruption -> DATA_LOSS, no space ->
// RESOURCE_EXHAUSTED, other I/O errors and a busy lock -> UNAVAILABLE, ...).
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "engine/store/feature_store.h"

namespace scanserve {

struct RocksDbFeatureStoreOptions {
  bool create_if_missing = true;
  int64_t block_cache_bytes = 64LL << 20;  // shared by the column families
  // Values of at least this many bytes go to blob files (0 = all values; negative = none).
  int64_t min_blob_bytes = 4096;
  // The change log keeps at least this much history (FeatureStore); <= 0 keeps all of it.
  double change_log_retention_s = 86400;
};

class RocksDbFeatureStore final : public FeatureStore {
 public:
  // Opens (creating if allowed) the database in `path`. Another process holding it open is
  // UNAVAILABLE; a missing database with create_if_missing = false is NOT_FOUND.
  static absl::StatusOr<std::unique_ptr<RocksDbFeatureStore>> Open(
      const std::string& path, const RocksDbFeatureStoreOptions& options = {});
  ~RocksDbFeatureStore() override;

  absl::Status PutImages(absl::Span<const StoredImage> images) override;
  absl::Status PutCaptions(absl::Span<const StoredCaption> captions) override;
  absl::Status DeleteImages(absl::Span<const std::string> ids) override;
  absl::Status DeleteCaptions(absl::Span<const std::string> ids) override;
  absl::StatusOr<std::vector<std::optional<StoredImage>>> GetImages(
      absl::Span<const std::string> ids) const override;
  absl::StatusOr<std::vector<std::optional<FloatMatrix>>> GetImageRegionFeatures(
      absl::Span<const std::string> ids) const override;
  absl::StatusOr<std::vector<std::optional<StoredCaption>>> GetCaptions(
      absl::Span<const std::string> ids) const override;
  absl::Status ScanImages(const std::function<absl::Status(StoredImage&)>& visit) const override;
  absl::Status ScanCaptions(
      const std::function<absl::Status(StoredCaption&)>& visit) const override;
  absl::StatusOr<ItemChangePage> ListChanges(uint64_t after, int64_t max_changes) const override;
  absl::StatusOr<std::optional<std::string>> GetMeta(const std::string& key) const override;
  absl::Status SetMeta(const std::string& key, const std::string& value) override;
  FeatureStoreStats Stats() const override;
  // RocksDB's checkpoint: hard links to the table and blob files where `dir` is on the same file
  // system (cheap), copies elsewhere, plus the live log; memtables are flushed first.
  absl::Status Checkpoint(const std::string& dir) const override;
  absl::Status Close() override;
  absl::Status RecoverWrites() override;
  bool WritesStopped() const override;

  const std::string& path() const { return path_; }

  // Writes raw bytes as the value of an image / caption id, durably (to test corrupt records).
  absl::Status PutRawImageRecordForTesting(const std::string& id, const std::string& value);
  absl::Status PutRawCaptionRecordForTesting(const std::string& id, const std::string& value);

 private:
  struct Impl;  // the rocksdb::DB and its handles, defined in the .cc
  RocksDbFeatureStore(std::string path, std::unique_ptr<Impl> impl);

  std::string path_;
  std::unique_ptr<Impl> impl_;
};

}  // namespace scanserve
