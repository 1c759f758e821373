// How the scan_* command-line tools end: 0 on success, 2 when the caller's input (files, shapes,
// arguments) is at fault, 1 for anything else, so that scripts can tell a bad call from a bug.
#pragma once

#include <cstdio>

#include "absl/status/status.h"

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

}  // namespace scanserve
