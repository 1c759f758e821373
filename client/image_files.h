// Encoded image files for scanctl: the files the server's detector accepts (JPEG, PNG, WebP, by
// extension), read whole, and the listing `scanctl import images` streams.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace scanserve {
namespace cli {

// .jpg, .jpeg, .png, .webp (any case).
bool IsImageFileName(const std::string& path);

// The file's bytes. NOT_FOUND when it cannot be opened; INVALID_ARGUMENT when it is above max_bytes
// (the server would refuse it: its --max-image-bytes) or empty (unless allow_empty). The bytes are
// not decoded here: the server's detector judges them.
absl::StatusOr<std::string> ReadImageFile(const std::string& path, int64_t max_bytes = INT64_MAX,
                                          bool allow_empty = false);

struct ImageFile {
  std::string path;  // as found on disk
  std::string id;    // the image id it is ingested under (without the caller's prefix)
  int64_t bytes = 0; // its size when listed
};

// The image files named by `paths`: a file is taken as is (whatever its extension; id = its name
// without the extension); a directory contributes its image files (IsImageFileName), recursively
// with `recursive` (id = the path below that directory, without the extension, '/'-separated).
// Sorted by id; two files with the same id are INVALID_ARGUMENT naming both; a missing path is
// NOT_FOUND.
absl::StatusOr<std::vector<ImageFile>> ListImageFiles(const std::vector<std::string>& paths, bool recursive);

}  // namespace cli
}  // namespace scanserve
