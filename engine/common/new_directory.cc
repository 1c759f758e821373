#include "engine/common/new_directory.h"

#include <filesystem>
#include <system_error>

#include "absl/strings/str_cat.h"

namespace scanserve {

absl::Status CheckNewDirectory(const std::string& path, absl::string_view what) {
  namespace fs = std::filesystem;
  std::error_code error;
  const fs::path target(path);
  if (fs::exists(target, error)) {
    return absl::AlreadyExistsError(absl::StrCat(what, " ", path, " already exists"));
  }
  const fs::path parent = target.has_parent_path() ? target.parent_path() : fs::path(".");
  if (!fs::is_directory(parent, error)) {
    return absl::NotFoundError(
        absl::StrCat("the parent of ", what, " ", path, " (", parent.string(), ") does not exist"));
  }
  return absl::OkStatus();
}

}  // namespace scanserve
