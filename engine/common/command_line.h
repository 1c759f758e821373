// The engine tools' command lines (scan_eval, scan_score, scan_train): flags `--name VALUE` or
// `--name=VALUE` and switches `--name`, in any order. The tools then read the flags in order.
#pragma once

#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace scanserve {

struct CommandLineFlag {
  std::string name;   // as written, e.g. "--data-dir", "-h"
  std::string value;  // "" for a switch
};

struct CommandLineSpec {
  std::vector<std::string> value_flags;  // take a value: the next word, or what follows '='
  std::vector<std::string> switches;     // take none
};

// argv[1..argc) as flags, in order. INVALID_ARGUMENT for an argument that is neither a value flag
// nor a switch ("unknown argument 'x'"), a value flag with nothing after it ("--x needs a value"),
// and a switch given a value ("--x takes no value").
absl::StatusOr<std::vector<CommandLineFlag>> ParseCommandLine(int argc, const char* const* argv,
                                                              const CommandLineSpec& spec);

}  // namespace scanserve
