#include "client/cli_args.h"

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace scanserve {
namespace cli {

std::optional<std::string> ParsedArgs::Value(const std::string& name) const {
  const auto it = values_.find(name);
  if (it == values_.end() || it->second.empty()) return std::nullopt;
  return it->second.back();
}

std::vector<std::string> ParsedArgs::Values(const std::string& name) const {
  const auto it = values_.find(name);
  return it == values_.end() ? std::vector<std::string>() : it->second;
}

absl::StatusOr<std::optional<int64_t>> ParsedArgs::Int(const std::string& name, int64_t min, int64_t max) const {
  const std::optional<std::string> value = Value(name);
  if (!value.has_value()) return std::optional<int64_t>();
  int64_t v = 0;
  if (!absl::SimpleAtoi(*value, &v) || v < min || v > max) {
    return absl::InvalidArgumentError(
        absl::StrCat("--", name, ": expected an integer in ", min, "..", max, ", got '", *value, "'"));
  }
  return std::optional<int64_t>(v);
}

absl::StatusOr<std::optional<double>> ParsedArgs::Double(const std::string& name, double min, double max) const {
  const std::optional<std::string> value = Value(name);
  if (!value.has_value()) return std::optional<double>();
  double v = 0;
  if (!absl::SimpleAtod(*value, &v) || !(v >= min && v <= max)) {
    return absl::InvalidArgumentError(
        absl::StrCat("--", name, ": expected a number in ", min, "..", max, ", got '", *value, "'"));
  }
  return std::optional<double>(v);
}

absl::StatusOr<std::map<std::string, std::string>> ParsedArgs::KeyValues(const std::string& name) const {
  std::map<std::string, std::string> pairs;
  for (const std::string& item : Values(name)) {
    const size_t eq = item.find('=');
    if (eq == std::string::npos || eq == 0) {
      return absl::InvalidArgumentError(absl::StrCat("--", name, ": expected KEY=VALUE, got '", item, "'"));
    }
    pairs[item.substr(0, eq)] = item.substr(eq + 1);
  }
  return pairs;
}

absl::StatusOr<ParsedArgs> Parse(const std::vector<std::string>& args, const ArgSpec& spec) {
  ParsedArgs parsed;
  bool flags_done = false;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& arg = args[i];
    if (flags_done || arg.size() < 3 || arg.compare(0, 2, "--") != 0) {
      if (arg == "--" && !flags_done) {
        flags_done = true;
        continue;
      }
      parsed.positionals_.push_back(arg);
      continue;
    }
    std::string name = arg.substr(2);
    std::optional<std::string> value;
    if (const size_t eq = name.find('='); eq != std::string::npos) {
      value = name.substr(eq + 1);
      name.resize(eq);
    }
    if (spec.switches.count(name) > 0) {
      if (value.has_value()) return absl::InvalidArgumentError(absl::StrCat("--", name, " takes no value"));
      parsed.switches_.insert(name);
      continue;
    }
    if (spec.value_flags.count(name) == 0) return absl::InvalidArgumentError(absl::StrCat("unknown flag --", name));
    if (!value.has_value()) {
      if (i + 1 >= args.size()) return absl::InvalidArgumentError(absl::StrCat("--", name, " needs a value"));
      value = args[++i];
    }
    parsed.values_[name].push_back(*value);
  }
  return parsed;
}

}  // namespace cli
}  // namespace scanserve
