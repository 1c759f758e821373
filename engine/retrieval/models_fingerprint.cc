#include "engine/retrieval/models_fingerprint.h"

#include <cstdio>
#include <filesystem>
#include <vector>

#include "absl/strings/str_cat.h"
#include "engine/common/status_macros.h"

namespace scanserve {

absl::StatusOr<uint64_t> HashFile(const std::string& path, uint64_t* size) {
  std::FILE* file = std::fopen(path.c_str(), "rb");
  if (file == nullptr) return absl::NotFoundError(absl::StrCat("cannot open ", path));
  constexpr uint64_t kOffsetBasis = 14695981039346656037ull;
  constexpr uint64_t kPrime = 1099511628211ull;
  uint64_t hash = kOffsetBasis;
  uint64_t total = 0;
  std::vector<unsigned char> buffer(1 << 20);
  size_t n = 0;
  while ((n = std::fread(buffer.data(), 1, buffer.size(), file)) > 0) {
    for (size_t i = 0; i < n; ++i) hash = (hash ^ buffer[i]) * kPrime;
    total += n;
  }
  const bool failed = std::ferror(file) != 0;
  std::fclose(file);
  if (failed) return absl::DataLossError(absl::StrCat("error reading ", path));
  *size = total;
  return hash;
}

absl::StatusOr<std::string> ModelsFingerprint(const std::vector<std::string>& model_dirs) {
  std::string fingerprint = absl::StrCat("scanserve-models-v1 n=", model_dirs.size());
  for (const std::string& dir : model_dirs) {
    absl::StrAppend(&fingerprint, " |");
    for (const char* name : {"config.json", "weights.safetensors"}) {
      const std::string path = (std::filesystem::path(dir) / name).string();
      uint64_t size = 0;
      SCANSERVE_ASSIGN_OR_RETURN(uint64_t hash, HashFile(path, &size));
      absl::StrAppend(&fingerprint, " ", name, ":", absl::Hex(hash, absl::kZeroPad16), ":", size);
    }
  }
  return fingerprint;
}

}  // namespace scanserve
