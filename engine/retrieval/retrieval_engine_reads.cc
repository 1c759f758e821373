// ScanRetrievalEngine: reading stored items back, listing ids and changes, snapshots.
#include "engine/retrieval/scan_retrieval_engine.h"

#include <array>
#include <chrono>
#include <filesystem>
#include <iterator>
#include <mutex>
#include <shared_mutex>
#include <type_traits>
#include <utility>

#include "engine/common/new_directory.h"
#include "engine/retrieval/synthetic_items.h"

namespace scanserve {
namespace retrieval_internal {

// ---- Reading back -----------------------------------------------------------------------------

template <typename Info>
using RecordOf = std::conditional_t<std::is_same_v<Info, StoredImageInfo>, StoredImage, StoredCaption>;

namespace {

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

}  // namespace

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

}  // namespace retrieval_internal
}  // namespace scanserve
