// ScanRetrievalEngine: upserts, deletes and updates, and keeping the scorers in step with the store.
#include "engine/retrieval/scan_retrieval_engine.h"

#include <algorithm>
#include <cstdio>
#include <mutex>
#include <utility>


namespace scanserve {
namespace retrieval_internal {

// ---- Writing ----------------------------------------------------------------------------------

namespace {

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

}  // namespace

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


// ---- Keeping the scorers in step with the store ----------------------------------------------

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

}  // namespace retrieval_internal
}  // namespace scanserve
