#include "engine/common/json_fields.h"

#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"

namespace scanserve {

JsonFields::JsonFields(const nlohmann::json& object, std::string file, absl::StatusCode code)
    : JsonFields(object, std::move(file), code, "") {}

JsonFields::JsonFields(const nlohmann::json& object, std::string file, absl::StatusCode code,
                       std::string where)
    : object_(&object), file_(std::move(file)), code_(code), where_(std::move(where)) {}

absl::StatusOr<const nlohmann::json*> JsonFields::OptionalObject(absl::string_view name) const {
  auto it = object_->find(name);
  if (it == object_->end()) return nullptr;
  if (!it->is_object()) return Error(name, "must be an object");
  return &*it;
}

absl::StatusOr<const nlohmann::json*> JsonFields::OptionalArray(absl::string_view name) const {
  auto it = object_->find(name);
  if (it == object_->end()) return nullptr;
  if (!it->is_array()) return Error(name, "must be an array");
  return &*it;
}

JsonFields JsonFields::Nested(const nlohmann::json& object, absl::string_view name) const {
  return JsonFields(object, file_, code_, Path(name));
}

absl::Status JsonFields::Error(absl::string_view name, absl::string_view what) const {
  return absl::Status(code_, absl::StrCat(file_, ": field '", Path(name), "' ", what,
                                          code_ == absl::StatusCode::kDataLoss ? "; the file is damaged" : ""));
}

std::string JsonFields::Path(absl::string_view name) const {
  if (where_.empty()) return std::string(name);
  // An element ("[2]") follows its array's name directly.
  return absl::StrCat(where_, absl::StartsWith(name, "[") ? "" : ".", name);
}

}  // namespace scanserve
