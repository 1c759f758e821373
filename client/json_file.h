// Small JSON files scanctl keeps between runs (import and copy checkpoints).
#pragma once

#include <string>

#include <nlohmann/json.hpp>

#include "absl/status/status.h"

namespace scanserve {
namespace cli {

// Writes `json` to `path` atomically and durably (engine/common/atomic_file.h): a crash or a power
// loss leaves the old or the new file, never half of one. UNAVAILABLE naming the file when it cannot.
absl::Status WriteJsonFileAtomically(const std::string& path, const nlohmann::json& json);

}  // namespace cli
}  // namespace scanserve
