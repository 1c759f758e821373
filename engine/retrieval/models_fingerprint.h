// The identity of the models a store was built with. Stored embeddings are only valid for the
// exact weights that produced them, so the store keeps a fingerprint of its models and the engine
// refuses to serve a store under other ones.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace scanserve {

// A stable string identifying the ordered list of model directories by content: a 64-bit FNV-1a
// hash and the size of each one's config.json and weights.safetensors (paths play no part, so a
// copied or moved model directory keeps its fingerprint). Errors name the unreadable file.
absl::StatusOr<std::string> ModelsFingerprint(const std::vector<std::string>& model_dirs);

// 64-bit FNV-1a of a whole file, streamed; *size gets its length.
absl::StatusOr<uint64_t> HashFile(const std::string& path, uint64_t* size);

}  // namespace scanserve
