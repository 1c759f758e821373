// Reading a whole (small) file into memory: configs, vocabularies, captions, PEM files, tokens.
#pragma once

#include <string>

#include "absl/status/statusor.h"

namespace scanserve {

// The file's bytes, unchanged. Cannot open: the errno's code (NOT_FOUND for a missing file,
// PERMISSION_DENIED, ...), "cannot open PATH: reason"; opened but unreadable (a directory):
// INVALID_ARGUMENT, "cannot read PATH".
absl::StatusOr<std::string> ReadWholeFile(const std::string& path);

}  // namespace scanserve
