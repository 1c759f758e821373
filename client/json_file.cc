#include "client/json_file.h"

#include <filesystem>
#include <fstream>

#include "absl/strings/str_cat.h"

namespace scanserve {
namespace cli {

absl::Status WriteJsonFileAtomically(const std::string& path, const nlohmann::json& json) {
  const std::string temp = path + ".tmp";
  {
    std::ofstream out(temp, std::ios::trunc);
    out << json.dump(2) << "\n";
    if (!out) return absl::UnavailableError(absl::StrCat("cannot write the checkpoint ", temp));
  }
  std::error_code error;
  std::filesystem::rename(temp, path, error);
  if (error) return absl::UnavailableError(absl::StrCat("cannot write the checkpoint ", path, ": ", error.message()));
  return absl::OkStatus();
}

}  // namespace cli
}  // namespace scanserve
