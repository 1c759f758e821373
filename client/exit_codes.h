// scanctl's exit codes, stable for scripts: 0 ok, 1 server/RPC error, 2 usage (or unreadable
// input), 3 not found, 4 server unavailable or not SERVING.
#pragma once

#include <grpcpp/support/status.h>

namespace scanserve {
namespace cli {

inline constexpr int kExitOk = 0;
inline constexpr int kExitError = 1;
inline constexpr int kExitUsage = 2;
inline constexpr int kExitNotFound = 3;
inline constexpr int kExitUnavailable = 4;

// The exit code for a failed RPC.
inline int ExitCodeFor(const grpc::Status& status) {
  switch (status.error_code()) {
    case grpc::StatusCode::OK: return kExitOk;
    case grpc::StatusCode::NOT_FOUND: return kExitNotFound;
    case grpc::StatusCode::UNAVAILABLE: return kExitUnavailable;
    default: return kExitError;
  }
}

}  // namespace cli
}  // namespace scanserve
