// The store's value encoding for StoredImage / StoredCaption records: a compact little-endian
// binary layout, independent of the storage engine.
//
//   u8 format version (kRecordFormatVersion), u8 kind (1 image, 2 caption)
//   image:   str id, str collection, meta, u32 num_regions, u32 n_boxes, f32[4 n_boxes],
//            u32 n_labels, str[n_labels], u32 n_models, n_models x matrix,
//            and from version 2 on: u8 flags (bit 0: the image's input region features are
//            stored, in a region features record under the same id)
//   region features (kind 3, its own version 1): str id, matrix (num_regions x img_dim)
//   change (kind 4, its own version 1; item_change.h): u8 item kind (0 image, 1 caption),
//            u8 operation (0 put, 1 delete), i64 unix micros, str id; stored under its sequence
//   caption: str id, str collection, meta, str text, u32 n_models,
//            n_models x (u32 n_ids, i64[n_ids], matrix)
//   u32 CRC-32C of every byte before it
// where str = u32 length + bytes, meta = u32 count + count x (str key, str value), and
// matrix = u32 rows, u32 cols, f32[rows x cols] row-major.
//
// Decoding checks the checksum, the version, the kind, every length against the bytes left, and
// that the record's id is the key it was stored under. A failed check is DATA_LOSS naming the
// record; a version (or an image flag) from a newer scanserve is FAILED_PRECONDITION. Version 2
// added the image flags; an image record without flags is still written as version 1, and
// captions always are. Region features live in records of their own, so that loading and
// searching never read them.
#pragma once

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "engine/store/feature_store.h"
#include "engine/store/item_change.h"

namespace scanserve {

inline constexpr uint8_t kRecordFormatVersion = 2;

// INVALID_ARGUMENT when a field is too large for the format (a length over 2^32 - 1) or a matrix's
// data does not match its shape.
absl::StatusOr<std::string> EncodeImageRecord(const StoredImage& image);
absl::StatusOr<std::string> EncodeCaptionRecord(const StoredCaption& caption);

// `key` is the id the value was stored under (named in errors, and checked against the record).
absl::StatusOr<StoredImage> DecodeImageRecord(const std::string& key, const std::string& value);
absl::StatusOr<StoredCaption> DecodeCaptionRecord(const std::string& key, const std::string& value);

// An image's input region features (StoredImage::region_features), stored apart from its record.
absl::StatusOr<std::string> EncodeRegionFeaturesRecord(const std::string& id,
                                                       const FloatMatrix& features);
absl::StatusOr<FloatMatrix> DecodeRegionFeaturesRecord(const std::string& key,
                                                       const std::string& value);

// A change log entry; its sequence is the key it is stored under, not part of the value.
absl::StatusOr<std::string> EncodeChangeRecord(const ItemChange& change);
absl::StatusOr<ItemChange> DecodeChangeRecord(uint64_t sequence, const std::string& value);

}  // namespace scanserve
