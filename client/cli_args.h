// Command-line parsing for scanctl: each command declares which flags take a value and which are
// switches; the parser splits its arguments into those and positionals, and anything undeclared is a
// usage error. `--name VALUE` and `--name=VALUE` are both accepted; `--` ends the flags.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace scanserve {
namespace cli {

struct ArgSpec {
  std::set<std::string> value_flags;  // names without "--"
  std::set<std::string> switches;
};

class ParsedArgs {
 public:
  // Last value of a value flag, or nullopt.
  std::optional<std::string> Value(const std::string& name) const;
  // Every value of a (repeatable) value flag, in order.
  std::vector<std::string> Values(const std::string& name) const;
  bool Switch(const std::string& name) const { return switches_.count(name) > 0; }
  const std::vector<std::string>& positionals() const { return positionals_; }

  // Typed readers: INVALID_ARGUMENT naming the flag when the value does not parse or is out of range.
  absl::StatusOr<std::optional<int64_t>> Int(const std::string& name, int64_t min, int64_t max) const;
  absl::StatusOr<std::optional<double>> Double(const std::string& name, double min, double max) const;
  // Repeated `--name key=value` into a map.
  absl::StatusOr<std::map<std::string, std::string>> KeyValues(const std::string& name) const;

 private:
  friend absl::StatusOr<ParsedArgs> Parse(const std::vector<std::string>& args, const ArgSpec& spec);
  std::map<std::string, std::vector<std::string>> values_;
  std::set<std::string> switches_;
  std::vector<std::string> positionals_;
};

absl::StatusOr<ParsedArgs> Parse(const std::vector<std::string>& args, const ArgSpec& spec);

}  // namespace cli
}  // namespace scanserve
