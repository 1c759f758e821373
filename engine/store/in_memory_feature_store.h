// InMemoryFeatureStore: a FeatureStore held in process memory, for tests. It keeps the same
// encoded records as RocksDbFeatureStore (record_codec.h), so decoding, checksums and DATA_LOSS
// behave the same; "durable" means only "in this object".
#pragma once

#include <map>
#include <memory>
#include <shared_mutex>
#include <string>

#include "engine/store/change_log_retention.h"
#include "engine/store/feature_store.h"

namespace scanserve {

class InMemoryFeatureStore final : public FeatureStore {
 public:
  // change_log_retention_s: as RocksDbFeatureStoreOptions (<= 0 keeps the whole log).
  explicit InMemoryFeatureStore(double change_log_retention_s = 86400)
      : change_retention_(change_log_retention_s), change_log_id_(NewChangeLogId()) {}

  absl::Status PutImages(absl::Span<const StoredImage> images) override;
  absl::Status PutCaptions(absl::Span<const StoredCaption> captions) override;
  absl::Status DeleteImages(absl::Span<const std::string> ids) override;
  absl::Status DeleteCaptions(absl::Span<const std::string> ids) override;
  absl::StatusOr<std::vector<std::optional<StoredImage>>> GetImages(
      absl::Span<const std::string> ids) const override;
  absl::StatusOr<std::vector<std::optional<StoredCaption>>> GetCaptions(
      absl::Span<const std::string> ids) const override;
  absl::StatusOr<std::vector<std::optional<FloatMatrix>>> GetImageRegionFeatures(
      absl::Span<const std::string> ids) const override;
  absl::Status ScanImages(const std::function<absl::Status(StoredImage&)>& visit) const override;
  absl::Status ScanCaptions(
      const std::function<absl::Status(StoredCaption&)>& visit) const override;
  absl::StatusOr<ItemChangePage> ListChanges(uint64_t after, int64_t max_changes) const override;
  absl::StatusOr<std::optional<std::string>> GetMeta(const std::string& key) const override;
  absl::Status SetMeta(const std::string& key, const std::string& value) override;
  FeatureStoreStats Stats() const override;
  absl::Status Checkpoint(const std::string& dir) const override;
  absl::Status Close() override;

  // Stores raw bytes as the value of an image / caption id (to test corrupt records).
  absl::Status PutRawImageRecordForTesting(const std::string& id, std::string value);
  absl::Status PutRawCaptionRecordForTesting(const std::string& id, std::string value);

 private:
  absl::Status CheckOpen() const;
  // Logs one change per id (encoded first: a failure leaves the log as it was). Caller holds mu_.
  absl::Status LogChanges(absl::Span<const std::string> ids, bool is_caption, bool deleted);

  mutable std::shared_mutex mu_;                 // guards every field below
  std::map<std::string, std::string> images_;    // id -> encoded record
  std::map<std::string, std::string> captions_;  // id -> encoded record
  std::map<std::string, std::string> image_regions_;  // id -> encoded region features
  std::map<std::string, std::string> meta_;
  std::map<uint64_t, std::string> changes_;  // sequence -> encoded change
  uint64_t last_sequence_ = 0;
  uint64_t trimmed_through_ = 0;
  ChangeLogRetention change_retention_;
  const std::string change_log_id_;
  int64_t synced_writes_ = 0;
  bool closed_ = false;
};

}  // namespace scanserve
