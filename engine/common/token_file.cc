#include "engine/common/token_file.h"

#include "absl/strings/ascii.h"
#include "absl/strings/str_split.h"

namespace scanserve {

std::vector<std::string> TokenFileTokens(absl::string_view contents) {
  std::vector<std::string> tokens;
  for (absl::string_view line : absl::StrSplit(contents, '\n')) {
    line = absl::StripAsciiWhitespace(line);
    if (!line.empty() && line.front() != '#') tokens.emplace_back(line);
  }
  return tokens;
}

}  // namespace scanserve
