// Small JSON files scanctl keeps between runs (import and copy checkpoints).
#pragma once

#include <functional>
#include <string>

#include <nlohmann/json.hpp>

#include "absl/status/status.h"
#include "engine/common/json_fields.h"

namespace scanserve {
namespace cli {

// Writes `json` to `path` atomically and durably (engine/common/atomic_file.h): a crash or a power
// loss leaves the old or the new file, never half of one. UNAVAILABLE naming the file when it cannot.
absl::Status WriteJsonFileAtomically(const std::string& path, const nlohmann::json& json);

// Reads the checkpoint at `path` (a JSON object) through `read`, which takes its fields. NOT_FOUND
// when there is no file; INVALID_ARGUMENT, naming the file and saying to pass --restart, when it is
// not a JSON object or `read` fails (a field missing or of the wrong type).
absl::Status ReadJsonCheckpoint(const std::string& path,
                                const std::function<absl::Status(const JsonFields&)>& read);

}  // namespace cli
}  // namespace scanserve
