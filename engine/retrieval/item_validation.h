// Checks of what callers send the RetrievalEngine, before any encoding or storage: ids, metadata,
// region features, boxes, labels, caption text, filters. Every failure is INVALID_ARGUMENT with
// the offending value or size in the message.
#pragma once

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "engine/common/matrix.h"
#include "engine/retrieval/retrieval_engine.h"

namespace scanserve {

// 1..kMaxIdBytes bytes (any bytes: ids are opaque).
absl::Status ValidateId(const std::string& id);

// Collection and metadata sizes within RetrievalLimits.
absl::Status ValidateCollectionAndMetadata(const std::string& collection, const Metadata& metadata);

// 1..Scorer::kMaxRows rows of img_dim finite values.
absl::Status ValidateRegionFeatures(const FloatMatrix& features, int64_t img_dim);

// Everything an ImageItem carries (features, boxes and labels empty or one per region).
absl::Status ValidateImageItem(const ImageItem& item, int64_t img_dim);

// Id, collection, metadata, and a text of 1..kMaxCaptionBytes bytes (tokenisation is checked
// when encoding).
absl::Status ValidateCaptionItem(const CaptionItem& item);

// Whether an item with this collection and metadata passes the filter.
bool MatchesFilter(const SearchFilter& filter, const std::string& collection,
                   const Metadata& metadata);

// A short printable rendering of an id for messages: quoted, escaped, truncated.
std::string QuoteId(const std::string& id);

}  // namespace scanserve
