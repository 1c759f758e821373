// Exception-free parsing and typed reads of a JSON object's fields, for the engine's own files (a
// model's config.json, a detector's detector.json, scan_train's checkpoint.json, a vocabulary). nlohmann's get<T>()
// throws on a wrong type and silently wraps an integer that does not fit T; here both are a status
// naming the file and the field's path in it, e.g.
//   checkpoint.json: field 'history[0].dev.rsum' must be a number; the file is damaged
#pragma once

#include <cstdint>
#include <limits>
#include <string>
#include <type_traits>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "nlohmann/json.hpp"

namespace scanserve {

// `text` parsed, or `code` with "<file>: not valid JSON (at line L, column C: <what nlohmann
// found>)": the position is what someone fixing a hand-edited file needs. DATA_LOSS messages end
// "; the file is damaged", as JsonFields' do.
absl::StatusOr<nlohmann::json> ParseJson(absl::string_view text, absl::string_view file, absl::StatusCode code);

// The same, and the document must be an object ("<file>: not a JSON object (an array)").
absl::StatusOr<nlohmann::json> ParseJsonObject(absl::string_view text, absl::string_view file,
                                               absl::StatusCode code);

class JsonFields {
 public:
  // The fields of `object` (which must outlive this reader); `file` names the file in messages.
  // `code` is every error's: INVALID_ARGUMENT for files people write or convert, DATA_LOSS for
  // files the program wrote itself (a wrong field there means damage, and the message says so).
  JsonFields(const nlohmann::json& object, std::string file, absl::StatusCode code);

  // The field `name` into *out, which keeps its value when the field is absent. T: bool,
  // std::string, an integer type (the value must be an integer within T's range) or a floating
  // type (any number within T's range).
  template <typename T>
  absl::Status Optional(absl::string_view name, T* out) const {
    auto it = object_->find(name);
    if (it == object_->end()) return absl::OkStatus();
    return Convert(name, *it, out);
  }

  // The same, but an absent field is an error ("is missing").
  template <typename T>
  absl::Status Required(absl::string_view name, T* out) const {
    auto it = object_->find(name);
    if (it == object_->end()) return Error(name, "is missing");
    return Convert(name, *it, out);
  }

  bool Has(absl::string_view name) const { return object_->contains(name); }

  // A nested object or array: nullptr when absent, an error when of another type.
  absl::StatusOr<const nlohmann::json*> OptionalObject(absl::string_view name) const;
  absl::StatusOr<const nlohmann::json*> OptionalArray(absl::string_view name) const;

  // A reader of `object`, found at `name` under this one (a field, or an element such as
  // "history[2]"): its messages name the whole path.
  JsonFields Nested(const nlohmann::json& object, absl::string_view name) const;
  // The same for a value that must be an object, e.g. an array's element ("must be an object").
  absl::StatusOr<JsonFields> NestedObject(const nlohmann::json& value, absl::string_view name) const;

  // "<file>: field '<path of name>' <what>", with the code given at construction.
  absl::Status Error(absl::string_view name, absl::string_view what) const;

  // `name`'s path from the file's top, e.g. "history[0].dev.rsum".
  std::string Path(absl::string_view name) const;

 private:
  JsonFields(const nlohmann::json& object, std::string file, absl::StatusCode code, std::string where);

  template <typename T>
  absl::Status Convert(absl::string_view name, const nlohmann::json& value, T* out) const {
    if constexpr (std::is_same_v<T, bool>) {
      if (!value.is_boolean()) return Error(name, "must be true or false");
      *out = value.get<bool>();
    } else if constexpr (std::is_same_v<T, std::string>) {
      if (!value.is_string()) return Error(name, "must be a string");
      *out = value.get<std::string>();
    } else if constexpr (std::is_integral_v<T>) {
      if (!value.is_number_integer()) return Error(name, "must be an integer");
      if (!IntegerFits<T>(value)) return Error(name, "is out of range");
      *out = value.get<T>();
    } else if constexpr (std::is_floating_point_v<T>) {
      if (!value.is_number()) return Error(name, "must be a number");
      const double v = value.get<double>();
      if (v > static_cast<double>(std::numeric_limits<T>::max()) ||
          v < -static_cast<double>(std::numeric_limits<T>::max())) {
        return Error(name, "is out of range");
      }
      *out = static_cast<T>(v);
    } else {
      static_assert(std::is_same_v<T, bool>, "JsonFields reads bool, std::string, integers and floats");
    }
    return absl::OkStatus();
  }

  template <typename T>
  static bool IntegerFits(const nlohmann::json& value) {
    if (value.is_number_unsigned()) {
      return value.get<uint64_t>() <= static_cast<uint64_t>(std::numeric_limits<T>::max());
    }
    const int64_t v = value.get<int64_t>();
    if (v < 0) return std::is_signed_v<T> && v >= static_cast<int64_t>(std::numeric_limits<T>::min());
    return static_cast<uint64_t>(v) <= static_cast<uint64_t>(std::numeric_limits<T>::max());
  }

  const nlohmann::json* object_;
  std::string file_;
  absl::StatusCode code_;
  std::string where_;  // this object's path; "" at the top
};

}  // namespace scanserve
