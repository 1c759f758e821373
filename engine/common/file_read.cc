#include "engine/common/file_read.h"

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace scanserve {

absl::StatusOr<std::string> ReadWholeFile(const std::string& path, absl::string_view what) {
  const std::string prefix = what.empty() ? std::string() : absl::StrCat(what, ": ");
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec)) {
    return absl::InvalidArgumentError(absl::StrCat(prefix, "cannot read ", path, ": it is a directory"));
  }
  errno = 0;
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    const int error = errno != 0 ? errno : ENOENT;
    return absl::Status(absl::ErrnoToStatusCode(error),
                        absl::StrCat(prefix, "cannot open ", path, ": ", std::strerror(error)));
  }
  std::ostringstream contents;
  contents << in.rdbuf();  // sets failbit on `contents` for an empty file: that is just ""
  if (in.bad()) return absl::InvalidArgumentError(absl::StrCat(prefix, "cannot read ", path));
  return std::move(contents).str();
}

}  // namespace scanserve
