#include "client/json_file.h"

#include "absl/strings/str_cat.h"
#include "engine/common/atomic_file.h"

namespace scanserve {
namespace cli {

absl::Status WriteJsonFileAtomically(const std::string& path, const nlohmann::json& json) {
  const absl::Status written = WriteFileAtomically(path, json.dump(2) + "\n");
  if (!written.ok()) return absl::UnavailableError(absl::StrCat("cannot write the checkpoint: ", written.message()));
  return absl::OkStatus();
}

}  // namespace cli
}  // namespace scanserve
