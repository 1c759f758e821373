// Reading a whole (small) file into memory: configs, vocabularies, captions, PEM files, tokens.
#pragma once

#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace scanserve {

// The file's bytes, unchanged. Cannot open: the errno's code (NOT_FOUND for a missing file,
// PERMISSION_DENIED, ...), "cannot open PATH: reason"; opened but unreadable (a directory):
// INVALID_ARGUMENT, "cannot read PATH". A non-empty `what` ("--tls-ca", "vocabulary file")
// prefixes those messages as "what: ".
absl::StatusOr<std::string> ReadWholeFile(const std::string& path, absl::string_view what = {});

}  // namespace scanserve
