// The engine tools' command lines (scan_eval, scan_score, scan_train, scan_extract, scan_tokenize):
// flags `--name VALUE` or `--name=VALUE`, switches `--name`, and (where a tool takes them) operands
// such as input files, in any order. The tools then read the flags in order.
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
  // Operands allowed: a word not starting with '-' (or "-" alone, or any word after "--") comes
  // back as a flag with an empty name and the word as its value.
  bool operands = false;
};

// argv[1..argc) as flags, in order. INVALID_ARGUMENT for an argument that is neither a value flag
// nor a switch nor an allowed operand ("unknown argument 'x'"), a value flag with nothing after it ("--x needs a value"),
// and a switch given a value ("--x takes no value").
absl::StatusOr<std::vector<CommandLineFlag>> ParseCommandLine(int argc, const char* const* argv,
                                                              const CommandLineSpec& spec);

}  // namespace scanserve
