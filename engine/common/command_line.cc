#include "engine/common/command_line.h"

#include <algorithm>

#include "absl/strings/str_cat.h"

namespace scanserve {
namespace {

bool Contains(const std::vector<std::string>& names, const std::string& name) {
  return std::find(names.begin(), names.end(), name) != names.end();
}

}  // namespace

absl::StatusOr<std::vector<CommandLineFlag>> ParseCommandLine(int argc, const char* const* argv,
                                                              const CommandLineSpec& spec) {
  std::vector<CommandLineFlag> flags;
  bool only_operands = false;
  for (int i = 1; i < argc; ++i) {
    std::string name = argv[i];
    if (spec.operands && (only_operands || name == "-" || name.empty() || name[0] != '-')) {
      flags.push_back({"", std::move(name)});
      continue;
    }
    if (spec.operands && name == "--") {
      only_operands = true;
      continue;
    }
    std::string value;
    bool has_value = false;
    if (const size_t eq = name.find('='); name.rfind("--", 0) == 0 && eq != std::string::npos) {
      value = name.substr(eq + 1);
      name = name.substr(0, eq);
      has_value = true;
    }
    if (Contains(spec.switches, name)) {
      if (has_value) return absl::InvalidArgumentError(absl::StrCat(name, " takes no value"));
    } else if (Contains(spec.value_flags, name)) {
      if (!has_value) {
        if (i + 1 >= argc) return absl::InvalidArgumentError(absl::StrCat(name, " needs a value"));
        value = argv[++i];
      }
    } else {
      return absl::InvalidArgumentError(absl::StrCat("unknown argument '", argv[i], "'"));
    }
    flags.push_back({std::move(name), std::move(value)});
  }
  return flags;
}

}  // namespace scanserve
