#include "engine/store/in_memory_feature_store.h"

#include <mutex>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "engine/common/status_macros.h"
#include "engine/store/record_codec.h"

namespace scanserve {
namespace {

// Encodes every record first so that a failing one leaves the map untouched (atomic batch).
template <typename Record, typename Encode>
absl::StatusOr<std::vector<std::pair<std::string, std::string>>> EncodeRecords(
    absl::Span<const Record> records, Encode encode) {
  std::vector<std::pair<std::string, std::string>> encoded;
  encoded.reserve(records.size());
  for (const Record& record : records) {
    SCANSERVE_ASSIGN_OR_RETURN(std::string value, encode(record));
    encoded.emplace_back(record.id, std::move(value));
  }
  return encoded;
}

template <typename Record, typename Decode>
absl::StatusOr<std::vector<std::optional<Record>>> GetAll(
    const std::map<std::string, std::string>& records, absl::Span<const std::string> ids,
    Decode decode) {
  std::vector<std::optional<Record>> out(ids.size());
  for (size_t i = 0; i < ids.size(); ++i) {
    auto it = records.find(ids[i]);
    if (it == records.end()) continue;
    SCANSERVE_ASSIGN_OR_RETURN(out[i], decode(it->first, it->second));
  }
  return out;
}

template <typename Record, typename Decode>
absl::Status ScanAll(const std::map<std::string, std::string>& records, Decode decode,
                     const std::function<absl::Status(Record&)>& visit) {
  for (const auto& [id, value] : records) {
    SCANSERVE_ASSIGN_OR_RETURN(Record record, decode(id, value));
    SCANSERVE_RETURN_IF_ERROR(visit(record));
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status InMemoryFeatureStore::CheckOpen() const {
  if (closed_) return absl::FailedPreconditionError("the in-memory feature store is closed");
  return absl::OkStatus();
}

absl::Status InMemoryFeatureStore::LogChanges(absl::Span<const std::string> ids, bool is_caption,
                                              bool deleted) {
  const int64_t now = UnixMicrosNow();
  std::vector<std::string> encoded;
  encoded.reserve(ids.size());
  for (const std::string& id : ids) {
    SCANSERVE_ASSIGN_OR_RETURN(
        std::string value,
        EncodeChangeRecord({.is_caption = is_caption, .deleted = deleted, .unix_micros = now, .id = id}));
    encoded.push_back(std::move(value));
  }
  for (std::string& value : encoded) changes_.emplace(++last_sequence_, std::move(value));
  if (const std::optional<int64_t> cutoff = change_retention_.TrimCutoff(now)) {
    while (!changes_.empty()) {
      SCANSERVE_ASSIGN_OR_RETURN(ItemChange oldest,
                                 DecodeChangeRecord(changes_.begin()->first, changes_.begin()->second));
      if (oldest.unix_micros >= *cutoff) break;
      trimmed_through_ = oldest.sequence;
      changes_.erase(changes_.begin());
    }
  }
  return absl::OkStatus();
}

absl::Status InMemoryFeatureStore::PutImages(absl::Span<const StoredImage> images) {
  SCANSERVE_ASSIGN_OR_RETURN(auto encoded, EncodeRecords(images, EncodeImageRecord));
  std::vector<std::string> regions(images.size());  // encoded features; empty: none given
  for (size_t i = 0; i < images.size(); ++i) {
    if (images[i].region_features.data.empty()) continue;
    SCANSERVE_ASSIGN_OR_RETURN(regions[i],
                               EncodeRegionFeaturesRecord(images[i].id, images[i].region_features));
  }
  std::vector<std::string> ids;
  for (const StoredImage& image : images) ids.push_back(image.id);
  std::unique_lock<std::shared_mutex> lock(mu_);
  SCANSERVE_RETURN_IF_ERROR(CheckOpen());
  SCANSERVE_RETURN_IF_ERROR(LogChanges(ids, /*is_caption=*/false, /*deleted=*/false));
  for (size_t i = 0; i < images.size(); ++i) {
    images_[encoded[i].first] = std::move(encoded[i].second);
    if (!regions[i].empty()) {
      image_regions_[images[i].id] = std::move(regions[i]);
    } else if (!images[i].has_region_features) {
      image_regions_.erase(images[i].id);  // as RocksDbFeatureStore: none given, none kept
    }
  }
  ++synced_writes_;
  return absl::OkStatus();
}

absl::Status InMemoryFeatureStore::PutCaptions(absl::Span<const StoredCaption> captions) {
  SCANSERVE_ASSIGN_OR_RETURN(auto encoded, EncodeRecords(captions, EncodeCaptionRecord));
  std::vector<std::string> ids;
  for (const StoredCaption& caption : captions) ids.push_back(caption.id);
  std::unique_lock<std::shared_mutex> lock(mu_);
  SCANSERVE_RETURN_IF_ERROR(CheckOpen());
  SCANSERVE_RETURN_IF_ERROR(LogChanges(ids, /*is_caption=*/true, /*deleted=*/false));
  for (auto& [id, value] : encoded) captions_[id] = std::move(value);
  ++synced_writes_;
  return absl::OkStatus();
}

absl::Status InMemoryFeatureStore::DeleteImages(absl::Span<const std::string> ids) {
  std::unique_lock<std::shared_mutex> lock(mu_);
  SCANSERVE_RETURN_IF_ERROR(CheckOpen());
  SCANSERVE_RETURN_IF_ERROR(LogChanges(ids, /*is_caption=*/false, /*deleted=*/true));
  for (const std::string& id : ids) {
    images_.erase(id);
    image_regions_.erase(id);
  }
  ++synced_writes_;
  return absl::OkStatus();
}

absl::Status InMemoryFeatureStore::DeleteCaptions(absl::Span<const std::string> ids) {
  std::unique_lock<std::shared_mutex> lock(mu_);
  SCANSERVE_RETURN_IF_ERROR(CheckOpen());
  SCANSERVE_RETURN_IF_ERROR(LogChanges(ids, /*is_caption=*/true, /*deleted=*/true));
  for (const std::string& id : ids) captions_.erase(id);
  ++synced_writes_;
  return absl::OkStatus();
}

absl::StatusOr<std::vector<std::optional<StoredImage>>> InMemoryFeatureStore::GetImages(
    absl::Span<const std::string> ids) const {
  std::shared_lock<std::shared_mutex> lock(mu_);
  SCANSERVE_RETURN_IF_ERROR(CheckOpen());
  return GetAll<StoredImage>(images_, ids, DecodeImageRecord);
}

absl::StatusOr<std::vector<std::optional<StoredCaption>>> InMemoryFeatureStore::GetCaptions(
    absl::Span<const std::string> ids) const {
  std::shared_lock<std::shared_mutex> lock(mu_);
  SCANSERVE_RETURN_IF_ERROR(CheckOpen());
  return GetAll<StoredCaption>(captions_, ids, DecodeCaptionRecord);
}

absl::StatusOr<std::vector<std::optional<FloatMatrix>>>
InMemoryFeatureStore::GetImageRegionFeatures(absl::Span<const std::string> ids) const {
  std::shared_lock<std::shared_mutex> lock(mu_);
  SCANSERVE_RETURN_IF_ERROR(CheckOpen());
  return GetAll<FloatMatrix>(image_regions_, ids, DecodeRegionFeaturesRecord);
}

absl::Status InMemoryFeatureStore::ScanImages(
    const std::function<absl::Status(StoredImage&)>& visit) const {
  std::shared_lock<std::shared_mutex> lock(mu_);
  SCANSERVE_RETURN_IF_ERROR(CheckOpen());
  return ScanAll<StoredImage>(images_, DecodeImageRecord, visit);
}

absl::Status InMemoryFeatureStore::ScanCaptions(
    const std::function<absl::Status(StoredCaption&)>& visit) const {
  std::shared_lock<std::shared_mutex> lock(mu_);
  SCANSERVE_RETURN_IF_ERROR(CheckOpen());
  return ScanAll<StoredCaption>(captions_, DecodeCaptionRecord, visit);
}

absl::StatusOr<ItemChangePage> InMemoryFeatureStore::ListChanges(uint64_t after,
                                                                int64_t max_changes) const {
  if (max_changes < 1) {
    return absl::InvalidArgumentError(absl::StrCat("max_changes is ", max_changes, "; at least 1"));
  }
  std::shared_lock<std::shared_mutex> lock(mu_);
  SCANSERVE_RETURN_IF_ERROR(CheckOpen());
  if (after < trimmed_through_) return ChangesTrimmedError(after, trimmed_through_);
  if (after > last_sequence_) return ChangesAheadError(after, last_sequence_);
  ItemChangePage page;
  page.last_sequence = last_sequence_;
  page.log_id = change_log_id_;
  for (auto it = changes_.upper_bound(after);
       it != changes_.end() && static_cast<int64_t>(page.changes.size()) < max_changes; ++it) {
    SCANSERVE_ASSIGN_OR_RETURN(ItemChange change, DecodeChangeRecord(it->first, it->second));
    page.changes.push_back(std::move(change));
  }
  return page;
}

absl::StatusOr<std::optional<std::string>> InMemoryFeatureStore::GetMeta(
    const std::string& key) const {
  std::shared_lock<std::shared_mutex> lock(mu_);
  SCANSERVE_RETURN_IF_ERROR(CheckOpen());
  auto it = meta_.find(key);
  if (it == meta_.end()) return std::optional<std::string>();
  return std::optional<std::string>(it->second);
}

absl::Status InMemoryFeatureStore::SetMeta(const std::string& key, const std::string& value) {
  std::unique_lock<std::shared_mutex> lock(mu_);
  SCANSERVE_RETURN_IF_ERROR(CheckOpen());
  meta_[key] = value;
  ++synced_writes_;
  return absl::OkStatus();
}

FeatureStoreStats InMemoryFeatureStore::Stats() const {
  std::shared_lock<std::shared_mutex> lock(mu_);
  FeatureStoreStats stats;
  stats.synced_writes = synced_writes_;
  stats.last_change_sequence = last_sequence_;
  stats.changes_trimmed_through = trimmed_through_;
  stats.change_log_id = change_log_id_;
  return stats;
}

absl::Status InMemoryFeatureStore::Close() {
  std::unique_lock<std::shared_mutex> lock(mu_);
  closed_ = true;
  return absl::OkStatus();
}

absl::Status InMemoryFeatureStore::PutRawImageRecordForTesting(const std::string& id,
                                                               std::string value) {
  std::unique_lock<std::shared_mutex> lock(mu_);
  SCANSERVE_RETURN_IF_ERROR(CheckOpen());
  images_[id] = std::move(value);
  return absl::OkStatus();
}

absl::Status InMemoryFeatureStore::PutRawCaptionRecordForTesting(const std::string& id,
                                                                 std::string value) {
  std::unique_lock<std::shared_mutex> lock(mu_);
  SCANSERVE_RETURN_IF_ERROR(CheckOpen());
  captions_[id] = std::move(value);
  return absl::OkStatus();
}

absl::Status InMemoryFeatureStore::Checkpoint(const std::string& dir) const {
  return absl::FailedPreconditionError(
      absl::StrCat("an in-memory feature store has no files to snapshot into ", dir));
}

}  // namespace scanserve
