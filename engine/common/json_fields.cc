#include "engine/common/json_fields.h"

#include <algorithm>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"

namespace scanserve {
namespace {

absl::Status FileError(absl::string_view file, absl::StatusCode code, absl::string_view what) {
  return absl::Status(code, absl::StrCat(file, ": ", what,
                                         code == absl::StatusCode::kDataLoss ? "; the file is damaged" : ""));
}

}  // namespace

absl::StatusOr<nlohmann::json> ParseJson(absl::string_view text, absl::string_view file, absl::StatusCode code) {
  // nlohmann reports the position only through its exception; it is caught here, never let out.
  try {
    return nlohmann::json::parse(text.begin(), text.end());
  } catch (const nlohmann::json::parse_error& e) {
    // e.byte is the 1-based offset of the last character read (one past the end at end of input).
    // nlohmann's own "line, column" miscounts after a lookahead newline, so both come from it here.
    const size_t offset = std::min<size_t>(e.byte > 0 ? e.byte - 1 : 0, text.size());
    const absl::string_view before = text.substr(0, offset);
    const size_t line = 1 + static_cast<size_t>(std::count(before.begin(), before.end(), '\n'));
    const size_t line_start = before.find_last_of('\n') + 1;  // npos + 1 == 0: the first line
    // what() is "[json.exception.parse_error.101] parse error at line 1, column 5: syntax error
    // while parsing value - invalid literal; last read: '...'": the reason is kept, not the echo of
    // the input (it may be binary).
    absl::string_view reason = e.what();
    if (const size_t colon = reason.find(": "); colon != absl::string_view::npos) reason.remove_prefix(colon + 2);
    if (const size_t echo = reason.find("; last read:"); echo != absl::string_view::npos) reason = reason.substr(0, echo);
    return FileError(file, code, absl::StrCat("not valid JSON (at line ", line, ", column ", offset - line_start + 1,
                                              ": ", reason, ")"));
  } catch (const nlohmann::json::exception& e) {
    return FileError(file, code, absl::StrCat("not valid JSON (", e.what(), ")"));
  }
}

absl::StatusOr<nlohmann::json> ParseJsonObject(absl::string_view text, absl::string_view file,
                                               absl::StatusCode code) {
  absl::StatusOr<nlohmann::json> json = ParseJson(text, file, code);
  if (json.ok() && !json->is_object()) {
    return FileError(file, code, absl::StrCat("not a JSON object (", json->type_name(), ")"));
  }
  return json;
}

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

absl::StatusOr<JsonFields> JsonFields::NestedObject(const nlohmann::json& value, absl::string_view name) const {
  if (!value.is_object()) return Error(name, "must be an object");
  return Nested(value, name);
}

absl::Status JsonFields::Error(absl::string_view name, absl::string_view what) const {
  return FileError(file_, code_, absl::StrCat("field '", Path(name), "' ", what));
}

std::string JsonFields::Path(absl::string_view name) const {
  if (where_.empty()) return std::string(name);
  // An element ("[2]") follows its array's name directly.
  return absl::StrCat(where_, absl::StartsWith(name, "[") ? "" : ".", name);
}

}  // namespace scanserve
