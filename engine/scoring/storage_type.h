// StorageType: how a scorer holds stored items. Header-only and torch-free, so that server/ (flags,
// stats) uses it without linking the scoring library.
#pragma once

#include <cstdint>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"

namespace scanserve {

// How stored items are held; queries and arithmetic stay fp32, and a score is the exact score of
// the stored (rounded) values. bf16 halves memory and bandwidth (~2^-9 relative per value). fp8 is
// e4m3 with one power-of-two scale per row (engine/common/fp8_e4m3.h): a quarter of fp32's memory,
// ~2^-4 relative per value, so rankings move slightly (scan_bench reports the top-10 overlap).
enum class StorageType { kFloat32, kBFloat16, kFp8E4M3 };

// "fp32", "bf16", "fp8".
inline const char* StorageTypeName(StorageType storage) {
  switch (storage) {
    case StorageType::kFloat32: return "fp32";
    case StorageType::kBFloat16: return "bf16";
    case StorageType::kFp8E4M3: return "fp8";
  }
  return "unknown";
}

// The names above; INVALID_ARGUMENT otherwise, worded for the --storage flag (or config key) that
// every front end reads it from, so they report it as-is.
inline absl::StatusOr<StorageType> ParseStorageType(absl::string_view name) {
  for (StorageType t : {StorageType::kFloat32, StorageType::kBFloat16, StorageType::kFp8E4M3}) {
    if (name == StorageTypeName(t)) return t;
  }
  return absl::InvalidArgumentError(
      absl::StrCat("--storage: expected fp32, bf16 or fp8, got '", name, "'"));
}

// Stored bytes per row of `dim` values (fp8: the codes plus the row's fp32 scale).
inline int64_t StoredRowBytes(StorageType storage, int64_t dim) {
  switch (storage) {
    case StorageType::kFloat32: return 4 * dim;
    case StorageType::kBFloat16: return 2 * dim;
    case StorageType::kFp8E4M3: return dim + 4;
  }
  return 4 * dim;
}

}  // namespace scanserve
