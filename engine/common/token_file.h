// The bearer-token file format shared by scanserve (--auth-token-file) and scanctl (--token-file):
// one token per line, surrounding whitespace removed; blank lines and lines starting with '#' are
// skipped.
#pragma once

#include <string>
#include <vector>

#include "absl/strings/string_view.h"

namespace scanserve {

// The tokens of a token file's contents, in order (none for an empty or comment-only file).
std::vector<std::string> TokenFileTokens(absl::string_view contents);

}  // namespace scanserve
