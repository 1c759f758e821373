// FakeRetrievalEngine: an in-memory RetrievalEngine for server tests, honouring the contract of
// engine/retrieval/retrieval_engine.h (validation codes, per-item results, filters, top-k order)
// with a trivial, deterministic score instead of SCAN: score(query, image) = query length * 0.01 +
// the image's first feature value. Counts calls so tests can see batching.
#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "engine/retrieval/retrieval_engine.h"

namespace scanserve {
namespace testing_fake {

class FakeRetrievalEngine final : public RetrievalEngine {
 public:
  static constexpr int64_t kImgDim = 8;
  static constexpr int kMaxTopK = 100;

  std::vector<ItemResult> UpsertImages(std::vector<ImageItem> items) override {
    std::lock_guard<std::mutex> lock(mu_);
    std::vector<ItemResult> results;
    for (ImageItem& item : items) {
      const std::string id = item.id;
      absl::Status status = absl::OkStatus();
      if (id.empty()) {
        status = absl::InvalidArgumentError("empty id");
      } else if (item.region_features.cols != kImgDim) {
        status = absl::InvalidArgumentError(absl::StrCat("region features are ", item.region_features.cols,
                                                         "-d; the model expects ", kImgDim, "-d"));
      } else if (static_cast<int64_t>(images_.size()) >= max_images && images_.count(item.id) == 0) {
        status = absl::ResourceExhaustedError("store full");
      } else {
        Log(id, /*is_caption=*/false, /*deleted=*/false);
        images_[item.id] = std::move(item);
      }
      results.push_back({id, status});
    }
    return results;
  }

  std::vector<ItemResult> UpsertCaptions(std::vector<CaptionItem> items) override {
    std::lock_guard<std::mutex> lock(mu_);
    ++caption_upsert_calls;
    std::vector<ItemResult> results;
    for (CaptionItem& item : items) {
      const std::string id = item.id;
      absl::Status status = absl::OkStatus();
      if (id.empty() || item.text.empty()) {
        status = absl::InvalidArgumentError("empty id or text");
      } else {
        captions_[id] = std::move(item);
        Log(id, /*is_caption=*/true, /*deleted=*/false);
      }
      results.push_back({id, status});
    }
    return results;
  }

  std::vector<ItemResult> DeleteImages(absl::Span<const std::string> ids) override {
    std::lock_guard<std::mutex> lock(mu_);
    std::vector<ItemResult> results;
    for (const std::string& id : ids) {
      Log(id, /*is_caption=*/false, /*deleted=*/true);
      results.push_back({id, images_.erase(id) > 0 ? absl::OkStatus() : absl::NotFoundError(absl::StrCat("no image '", id, "'"))});
    }
    return results;
  }

  std::vector<ItemResult> DeleteCaptions(absl::Span<const std::string> ids) override {
    std::lock_guard<std::mutex> lock(mu_);
    std::vector<ItemResult> results;
    for (const std::string& id : ids) {
      Log(id, /*is_caption=*/true, /*deleted=*/true);
      results.push_back({id, captions_.erase(id) > 0 ? absl::OkStatus() : absl::NotFoundError(absl::StrCat("no caption '", id, "'"))});
    }
    return results;
  }

  std::vector<ItemResult> UpdateImages(const std::vector<ItemUpdate>& updates) override {
    std::lock_guard<std::mutex> lock(mu_);
    return Apply(updates, &images_);
  }

  std::vector<ItemResult> UpdateCaptions(const std::vector<ItemUpdate>& updates) override {
    std::lock_guard<std::mutex> lock(mu_);
    return Apply(updates, &captions_);
  }

  using RetrievalEngine::GetImages;
  absl::StatusOr<std::vector<StoredImageInfo>> GetImages(absl::Span<const std::string> ids,
                                                         bool with_region_features) const override {
    if (ids.size() > RetrievalLimits::kMaxGetIds) return absl::InvalidArgumentError("too many ids");
    if (with_region_features && ids.size() > RetrievalLimits::kMaxGetIdsWithRegionFeatures) {
      return absl::InvalidArgumentError("too many ids with region features");
    }
    std::lock_guard<std::mutex> lock(mu_);
    std::vector<StoredImageInfo> out(ids.size());
    for (size_t i = 0; i < ids.size(); ++i) {
      out[i].item.id = ids[i];
      const auto it = images_.find(ids[i]);
      if (it == images_.end()) {
        out[i].status = absl::NotFoundError(absl::StrCat("no image '", ids[i], "'"));
        continue;
      }
      out[i].item = it->second;
      if (!with_region_features) out[i].item.region_features = FloatMatrix();
      out[i].num_regions = it->second.region_features.rows;
      out[i].has_region_features = true;  // the fake keeps every item whole
    }
    return out;
  }

  absl::StatusOr<std::vector<StoredCaptionInfo>> GetCaptions(absl::Span<const std::string> ids) const override {
    if (ids.size() > RetrievalLimits::kMaxGetIds) return absl::InvalidArgumentError("too many ids");
    std::lock_guard<std::mutex> lock(mu_);
    std::vector<StoredCaptionInfo> out(ids.size());
    for (size_t i = 0; i < ids.size(); ++i) {
      out[i].item.id = ids[i];
      const auto it = captions_.find(ids[i]);
      if (it == captions_.end()) {
        out[i].status = absl::NotFoundError(absl::StrCat("no caption '", ids[i], "'"));
        continue;
      }
      out[i].item = it->second;
    }
    return out;
  }

  absl::StatusOr<ItemPage> ListImages(const ListParams& params) const override {
    std::lock_guard<std::mutex> lock(mu_);
    return Page(images_, params);
  }

  absl::StatusOr<ItemPage> ListCaptions(const ListParams& params) const override {
    std::lock_guard<std::mutex> lock(mu_);
    return Page(captions_, params);
  }

  // As the engine's: changes logged by the writes above; readers behind SetChangesTrimmedThrough
  // are OUT_OF_RANGE.
  absl::StatusOr<ItemChangePage> ListChanges(uint64_t after, int64_t max_changes) const override {
    if (max_changes < 1 || max_changes > RetrievalLimits::kMaxChangesPage) {
      return absl::InvalidArgumentError("bad page size");
    }
    std::lock_guard<std::mutex> lock(mu_);
    if (after < changes_trimmed_through_) return absl::OutOfRangeError("changes no longer kept");
    ItemChangePage page;
    page.last_sequence = changes_.size();
    for (uint64_t s = after; s < changes_.size() && static_cast<int64_t>(page.changes.size()) < max_changes; ++s) {
      page.changes.push_back(changes_[s]);
    }
    return page;
  }

  absl::StatusOr<std::vector<std::vector<ImageHit>>> SearchImages(const std::vector<std::string>& queries,
                                                                  const SearchParams& params) const override {
    ++search_images_calls;
    if (search_delay_ms > 0) std::this_thread::sleep_for(std::chrono::milliseconds(search_delay_ms.load()));
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (!search_error_.ok()) return search_error_;
    }
    if (queries.empty()) return absl::InvalidArgumentError("no queries");
    if (params.top_k < 1 || params.top_k > kMaxTopK) {
      return absl::InvalidArgumentError(absl::StrCat("top_k must be in 1..", kMaxTopK, ", got ", params.top_k));
    }
    std::lock_guard<std::mutex> lock(mu_);
    std::vector<std::vector<ImageHit>> results;
    for (const std::string& query : queries) {
      if (query.empty()) return absl::InvalidArgumentError("empty query");
      std::vector<ImageHit> hits;
      for (const auto& [id, image] : images_) {
        if (!Matches(image.collection, image.metadata, params.filter)) continue;
        ImageHit hit;
        hit.id = id;
        hit.score = 0.01f * static_cast<float>(query.size()) + image.region_features.data[0];
        hit.collection = image.collection;
        hit.metadata = image.metadata;
        if (params.explain) {
          WordExplanation word;
          word.word = query.substr(0, query.find(' '));
          word.region = 0;
          word.attention = 1.0f;
          if (!image.boxes.empty()) word.box = image.boxes[0];
          if (!image.labels.empty()) word.label = image.labels[0];
          hit.explanation.push_back(word);
        }
        hits.push_back(hit);
      }
      std::sort(hits.begin(), hits.end(), [](const ImageHit& a, const ImageHit& b) {
        return a.score != b.score ? a.score > b.score : a.id < b.id;
      });
      if (static_cast<int>(hits.size()) > params.top_k) hits.resize(params.top_k);
      results.push_back(std::move(hits));
    }
    return results;
  }

  absl::StatusOr<std::vector<std::vector<CaptionHit>>> SearchCaptions(const std::vector<ImageQuery>& queries,
                                                                      const SearchParams& params) const override {
    if (params.top_k < 1 || params.top_k > kMaxTopK) return absl::InvalidArgumentError("top_k out of range");
    std::lock_guard<std::mutex> lock(mu_);
    std::vector<std::vector<CaptionHit>> results;
    for (const ImageQuery& query : queries) {
      float base = 0;
      if (!query.stored_id.empty()) {
        const auto it = images_.find(query.stored_id);
        if (it == images_.end()) return absl::NotFoundError(absl::StrCat("no image '", query.stored_id, "'"));
        base = it->second.region_features.data[0];
      } else {
        if (query.region_features.cols != kImgDim) {
          return absl::InvalidArgumentError(absl::StrCat("query features are ", query.region_features.cols, "-d"));
        }
        base = query.region_features.data[0];
      }
      std::vector<CaptionHit> hits;
      for (const auto& [id, caption] : captions_) {
        if (!Matches(caption.collection, caption.metadata, params.filter)) continue;
        hits.push_back({id, base + 0.01f * static_cast<float>(caption.text.size()), caption.text, caption.collection,
                        caption.metadata});
      }
      std::sort(hits.begin(), hits.end(), [](const CaptionHit& a, const CaptionHit& b) {
        return a.score != b.score ? a.score > b.score : a.id < b.id;
      });
      if (static_cast<int>(hits.size()) > params.top_k) hits.resize(params.top_k);
      results.push_back(std::move(hits));
    }
    return results;
  }

  // Records the directory; the same one twice is ALREADY_EXISTS.
  absl::StatusOr<SnapshotInfo> CreateSnapshot(const std::string& data_dir) override {
    std::lock_guard<std::mutex> lock(mu_);
    if (std::find(snapshots.begin(), snapshots.end(), data_dir) != snapshots.end()) {
      return absl::AlreadyExistsError(absl::StrCat(data_dir, " exists"));
    }
    snapshots.push_back(data_dir);
    SnapshotInfo info;
    info.data_dir = data_dir;
    info.images = static_cast<int64_t>(images_.size());
    info.captions = static_cast<int64_t>(captions_.size());
    return info;
  }

  EngineStats Stats() const override {
    std::lock_guard<std::mutex> lock(mu_);
    EngineStats stats;
    stats.images = static_cast<int64_t>(images_.size());
    stats.captions = static_cast<int64_t>(captions_.size());
    stats.feature_bytes = stats.images * kImgDim * 4;
    stats.feature_bytes_limit = int64_t{1} << 30;
    stats.feature_bytes_committed = stats.feature_bytes;
    stats.model_summaries = {"fake model"};
    stats.backend = "cpu";
    stats.storage = "fp32";
    return stats;
  }

  absl::Status Health() const override {
    std::lock_guard<std::mutex> lock(mu_);
    return health_;
  }
  // Every SearchImages fails with this (OK: searches work).
  void set_search_error(absl::Status error) {
    std::lock_guard<std::mutex> lock(mu_);
    search_error_ = std::move(error);
  }
  void set_health(absl::Status health) {
    std::lock_guard<std::mutex> lock(mu_);
    health_ = std::move(health);
  }

  absl::Status Close() override {
    closed = true;
    return absl::OkStatus();
  }

  mutable std::atomic<int> search_images_calls{0};
  std::atomic<int> caption_upsert_calls{0};
  std::atomic<int> search_delay_ms{0};
  std::atomic<bool> closed{false};
  int64_t max_images = 1000;
  std::vector<std::string> snapshots;  // CreateSnapshot's directories, guarded by mu_
  void SetChangesTrimmedThrough(uint64_t sequence) {
    std::lock_guard<std::mutex> lock(mu_);
    changes_trimmed_through_ = sequence;
  }

 private:
  void Log(const std::string& id, bool is_caption, bool deleted) {  // caller holds mu_
    changes_.push_back({.sequence = changes_.size() + 1, .is_caption = is_caption, .deleted = deleted,
                        .unix_micros = 1'700'000'000'000'000 + static_cast<int64_t>(changes_.size()), .id = id});
  }

  template <typename Item>
  static std::vector<ItemResult> Apply(const std::vector<ItemUpdate>& updates, std::map<std::string, Item>* items) {
    std::vector<ItemResult> results;
    for (const ItemUpdate& update : updates) {
      const auto it = items->find(update.id);
      if (it == items->end()) {
        results.push_back({update.id, absl::NotFoundError(absl::StrCat("no item '", update.id, "'"))});
        continue;
      }
      if (update.collection.has_value()) it->second.collection = *update.collection;
      for (const std::string& key : update.remove_metadata) it->second.metadata.erase(key);
      for (const auto& [key, value] : update.set_metadata) it->second.metadata[key] = value;
      results.push_back({update.id, absl::OkStatus()});
    }
    return results;
  }

  template <typename Item>
  static absl::StatusOr<ItemPage> Page(const std::map<std::string, Item>& items, const ListParams& params) {
    if (params.page_size < 1 || params.page_size > RetrievalLimits::kMaxListPageSize) {
      return absl::InvalidArgumentError("page_size out of range");
    }
    ItemPage page;
    for (auto it = items.upper_bound(params.page_token); it != items.end(); ++it) {
      if (!params.collection.empty() && it->second.collection != params.collection) continue;
      if (static_cast<int64_t>(page.ids.size()) == params.page_size) {
        page.next_page_token = page.ids.back();
        break;
      }
      page.ids.push_back(it->first);
    }
    return page;
  }

  static bool Matches(const std::string& collection, const Metadata& metadata, const SearchFilter& filter) {
    if (!filter.collection.empty() && filter.collection != collection) return false;
    for (const auto& [key, value] : filter.metadata) {
      const auto it = metadata.find(key);
      if (it == metadata.end() || it->second != value) return false;
    }
    return true;
  }

  mutable std::mutex mu_;  // guards images_, captions_, health_, search_error_
  absl::Status health_;
  absl::Status search_error_;
  std::map<std::string, ImageItem> images_;
  std::map<std::string, CaptionItem> captions_;
  std::vector<ItemChange> changes_;  // sequence i + 1 at index i
  uint64_t changes_trimmed_through_ = 0;
};

}  // namespace testing_fake
}  // namespace scanserve
