#include "client/image_files.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <map>
#include <system_error>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"

namespace scanserve {
namespace cli {
namespace fs = std::filesystem;

bool IsImageFileName(const std::string& path) {
  const std::string extension = absl::AsciiStrToLower(fs::path(path).extension().string());
  return extension == ".jpg" || extension == ".jpeg" || extension == ".png" || extension == ".webp";
}

absl::StatusOr<std::string> ReadImageFile(const std::string& path, int64_t max_bytes, bool allow_empty) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat(path, ": cannot open"));
  in.seekg(0, std::ios::end);
  const std::streamoff size = in.tellg();
  if (size < 0) return absl::NotFoundError(absl::StrCat(path, ": cannot read"));
  if (size == 0) {
    if (allow_empty) return std::string();
    return absl::InvalidArgumentError(absl::StrCat(path, ": empty file"));
  }
  if (static_cast<int64_t>(size) > max_bytes) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": ", size, " bytes, above the limit of ", max_bytes));
  }
  std::string bytes(static_cast<size_t>(size), '\0');
  in.seekg(0, std::ios::beg);
  if (!in.read(bytes.data(), size)) return absl::NotFoundError(absl::StrCat(path, ": cannot read"));
  return bytes;
}

absl::StatusOr<std::vector<ImageFile>> ListImageFiles(const std::vector<std::string>& paths, bool recursive) {
  std::map<std::string, std::string> by_id;  // id -> path
  auto add = [&by_id](const fs::path& file, const std::string& id) -> absl::Status {
    const auto [it, inserted] = by_id.emplace(id, file.string());
    if (!inserted && it->second != file.string()) {
      return absl::InvalidArgumentError(absl::StrCat("two image files map to the id '", id, "': ", it->second,
                                                     " and ", file.string(), " (use --id-prefix per directory)"));
    }
    return absl::OkStatus();
  };
  for (const std::string& argument : paths) {
    std::error_code error;
    const fs::path root(argument);
    if (fs::is_regular_file(root, error)) {
      if (absl::Status status = add(root, root.stem().string()); !status.ok()) return status;
      continue;
    }
    if (!fs::is_directory(root, error)) return absl::NotFoundError(absl::StrCat(argument, ": no such file or directory"));
    std::vector<fs::path> files;
    if (recursive) {
      for (fs::recursive_directory_iterator it(root, error), end; !error && it != end; it.increment(error)) {
        if (it->is_regular_file(error) && IsImageFileName(it->path().string())) files.push_back(it->path());
      }
    } else {
      for (fs::directory_iterator it(root, error), end; !error && it != end; it.increment(error)) {
        if (it->is_regular_file(error) && IsImageFileName(it->path().string())) files.push_back(it->path());
      }
    }
    if (error) return absl::NotFoundError(absl::StrCat(argument, ": ", error.message()));
    for (const fs::path& file : files) {
      fs::path id = file.lexically_relative(root);
      id.replace_extension();
      if (absl::Status status = add(file, id.generic_string()); !status.ok()) return status;
    }
  }
  std::vector<ImageFile> result;
  result.reserve(by_id.size());
  for (const auto& [id, path] : by_id) {
    std::error_code error;
    const uintmax_t size = fs::file_size(path, error);
    result.push_back({path, id, error ? 0 : static_cast<int64_t>(size)});
  }
  return result;
}

}  // namespace cli
}  // namespace scanserve
