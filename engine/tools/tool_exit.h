// How the scan_* command-line tools end: 0 on success, 2 when the caller's input (files, shapes,
// arguments) is at fault, 1 for anything else, so that scripts can tell a bad call from a bug.
#pragma once

#include <cstdio>
#include <exception>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace scanserve {

inline constexpr int kExitOk = 0;
inline constexpr int kExitInternal = 1;
inline constexpr int kExitBadInput = 2;

inline int ExitCodeFor(const absl::Status& status) {
  switch (status.code()) {
    case absl::StatusCode::kInvalidArgument:
    case absl::StatusCode::kNotFound:
    case absl::StatusCode::kDataLoss:
    case absl::StatusCode::kOutOfRange:
    case absl::StatusCode::kFailedPrecondition:
    case absl::StatusCode::kPermissionDenied:
    case absl::StatusCode::kUnimplemented:
      return kExitBadInput;
    default:
      return kExitInternal;
  }
}

// Prints "tool: status" on stderr; returns the exit code for it.
inline int FailTool(const char* tool, const absl::Status& status) {
  std::fprintf(stderr, "%s: %s\n", tool, status.ToString().c_str());
  return ExitCodeFor(status);
}

// The body of main() for a tool whose flags parse into a struct with a `help` field: a bad call
// exits 2 with a hint, --help prints the usage, and an exception escaping `run` (std::bad_alloc for
// an input too large for memory) exits 1 with a message rather than aborting.
template <typename Flags, typename Run>
int RunToolMain(const char* tool, const char* usage, absl::StatusOr<Flags> flags, Run run) {
  if (!flags.ok()) {
    std::fprintf(stderr, "%s: %s\nRun %s --help for usage.\n", tool, std::string(flags.status().message()).c_str(),
                 tool);
    return kExitBadInput;
  }
  if (flags->help) {
    std::fputs(usage, stdout);
    return kExitOk;
  }
  try {
    return run(*flags);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s: internal error: %s\n", tool, e.what());
    return kExitInternal;
  }
}

}  // namespace scanserve
