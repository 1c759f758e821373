#include "client/json_file.h"

#include <string>

#include "absl/strings/str_cat.h"
#include "engine/common/atomic_file.h"
#include "engine/common/file_read.h"

namespace scanserve {
namespace cli {

absl::Status WriteJsonFileAtomically(const std::string& path, const nlohmann::json& json) {
  const absl::Status written = WriteFileAtomically(path, json.dump(2) + "\n");
  if (!written.ok()) return absl::UnavailableError(absl::StrCat("cannot write the checkpoint: ", written.message()));
  return absl::OkStatus();
}

absl::Status ReadJsonCheckpoint(const std::string& path,
                                const std::function<absl::Status(const JsonFields&)>& read) {
  const absl::StatusOr<std::string> text = ReadWholeFile(path);
  if (!text.ok()) return absl::NotFoundError(path);  // unreadable: no checkpoint to resume from
  const absl::StatusOr<nlohmann::json> json = ParseJsonObject(*text, path, absl::StatusCode::kInvalidArgument);
  absl::Status status = json.status();
  if (json.ok()) status = read(JsonFields(*json, path, absl::StatusCode::kInvalidArgument));
  if (status.ok()) return status;
  return absl::InvalidArgumentError(
      absl::StrCat("checkpoint ", status.message(), "; pass --restart to start over"));
}

}  // namespace cli
}  // namespace scanserve
