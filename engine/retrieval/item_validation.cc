#include "engine/retrieval/item_validation.h"

#include <cmath>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "engine/common/status_macros.h"
#include "engine/scoring/scorer.h"

namespace scanserve {

std::string QuoteId(const std::string& id) {
  constexpr size_t kMaxShown = 64;
  const bool cut = id.size() > kMaxShown;
  return absl::StrCat("'", absl::CEscape(absl::string_view(id).substr(0, kMaxShown)),
                      cut ? "...'" : "'");
}

absl::Status ValidateId(const std::string& id) {
  if (id.empty()) return absl::InvalidArgumentError("the id is empty");
  if (id.size() > RetrievalLimits::kMaxIdBytes) {
    return absl::InvalidArgumentError(absl::StrCat("the id ", QuoteId(id), " has ", id.size(),
                                                   " bytes; at most ", RetrievalLimits::kMaxIdBytes,
                                                   " are allowed"));
  }
  return absl::OkStatus();
}

absl::Status ValidateCollectionAndMetadata(const std::string& collection,
                                           const Metadata& metadata) {
  if (collection.size() > RetrievalLimits::kMaxCollectionBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("the collection name has ", collection.size(), " bytes; at most ",
                     RetrievalLimits::kMaxCollectionBytes, " are allowed"));
  }
  if (metadata.size() > RetrievalLimits::kMaxMetadataEntries) {
    return absl::InvalidArgumentError(
        absl::StrCat("metadata has ", metadata.size(), " entries; at most ",
                     RetrievalLimits::kMaxMetadataEntries, " are allowed"));
  }
  for (const auto& [key, value] : metadata) {
    if (key.empty() || key.size() > RetrievalLimits::kMaxMetadataKeyBytes) {
      return absl::InvalidArgumentError(absl::StrCat("metadata key ", QuoteId(key), " has ",
                                                     key.size(), " bytes; expected 1..",
                                                     RetrievalLimits::kMaxMetadataKeyBytes));
    }
    if (value.size() > RetrievalLimits::kMaxMetadataValueBytes) {
      return absl::InvalidArgumentError(absl::StrCat(
          "metadata value of ", QuoteId(key), " has ", value.size(), " bytes; at most ",
          RetrievalLimits::kMaxMetadataValueBytes, " are allowed"));
    }
  }
  return absl::OkStatus();
}

absl::Status ValidateRegionFeatures(const FloatMatrix& features, int64_t img_dim) {
  if (features.rows < 1 || features.rows > Scorer::kMaxRows) {
    return absl::InvalidArgumentError(absl::StrCat("region features have ", features.rows,
                                                   " regions; expected 1..", Scorer::kMaxRows));
  }
  if (features.cols != img_dim) {
    return absl::InvalidArgumentError(absl::StrCat("region features are ", features.rows, " x ",
                                                   features.cols, "; the models expect ", img_dim,
                                                   "-d features per region"));
  }
  if (features.data.size() != static_cast<size_t>(features.rows * features.cols)) {
    return absl::InvalidArgumentError(absl::StrCat("region features claim ", features.rows, " x ",
                                                   features.cols, " but hold ",
                                                   features.data.size(), " values"));
  }
  for (size_t i = 0; i < features.data.size(); ++i) {
    if (!std::isfinite(features.data[i])) {
      return absl::InvalidArgumentError(absl::StrCat("region feature [", i / features.cols, ", ",
                                                     i % features.cols, "] is ", features.data[i],
                                                     "; features must be finite"));
    }
  }
  return absl::OkStatus();
}

absl::Status ValidateImageItem(const ImageItem& item, int64_t img_dim) {
  SCANSERVE_RETURN_IF_ERROR(ValidateId(item.id));
  SCANSERVE_RETURN_IF_ERROR(ValidateCollectionAndMetadata(item.collection, item.metadata));
  SCANSERVE_RETURN_IF_ERROR(ValidateRegionFeatures(item.region_features, img_dim));
  const int64_t k = item.region_features.rows;
  if (!item.boxes.empty() && static_cast<int64_t>(item.boxes.size()) != k) {
    return absl::InvalidArgumentError(
        absl::StrCat(item.boxes.size(), " boxes for ", k, " regions; send none or one per region"));
  }
  for (size_t b = 0; b < item.boxes.size(); ++b) {
    const Box& box = item.boxes[b];
    if (!std::isfinite(box.x1) || !std::isfinite(box.y1) || !std::isfinite(box.x2) ||
        !std::isfinite(box.y2)) {
      return absl::InvalidArgumentError(absl::StrCat("box ", b, " has a non-finite coordinate"));
    }
  }
  if (!item.labels.empty() && static_cast<int64_t>(item.labels.size()) != k) {
    return absl::InvalidArgumentError(absl::StrCat(item.labels.size(), " labels for ", k,
                                                   " regions; send none or one per region"));
  }
  for (size_t l = 0; l < item.labels.size(); ++l) {
    if (item.labels[l].size() > RetrievalLimits::kMaxLabelBytes) {
      return absl::InvalidArgumentError(
          absl::StrCat("label ", l, " has ", item.labels[l].size(), " bytes; at most ",
                       RetrievalLimits::kMaxLabelBytes, " are allowed"));
    }
  }
  return absl::OkStatus();
}

absl::Status ValidateCaptionItem(const CaptionItem& item) {
  SCANSERVE_RETURN_IF_ERROR(ValidateId(item.id));
  SCANSERVE_RETURN_IF_ERROR(ValidateCollectionAndMetadata(item.collection, item.metadata));
  if (item.text.size() > RetrievalLimits::kMaxCaptionBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("the caption has ", item.text.size(), " bytes; at most ",
                     RetrievalLimits::kMaxCaptionBytes, " are allowed"));
  }
  return absl::OkStatus();
}

bool MatchesFilter(const SearchFilter& filter, const std::string& collection,
                   const Metadata& metadata) {
  if (!filter.collection.empty() && filter.collection != collection) return false;
  for (const auto& [key, value] : filter.metadata) {
    auto it = metadata.find(key);
    if (it == metadata.end() || it->second != value) return false;
  }
  return true;
}

}  // namespace scanserve
