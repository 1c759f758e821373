// Checks for a directory about to be made (a snapshot's data directory, a store checkpoint): it
// must not exist yet and its parent must.
#pragma once

#include <string>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"

namespace scanserve {

// OK when `path` does not exist and its parent (the working directory for a bare name) is a
// directory; else ALREADY_EXISTS or NOT_FOUND, naming `what` ("snapshot directory") and the path.
absl::Status CheckNewDirectory(const std::string& path, absl::string_view what);

}  // namespace scanserve
