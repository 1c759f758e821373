// CallLog: a log line for the calls an operator needs to see one by one. Metrics count every call
// by code; this says which call failed and why: the server's own failures (INTERNAL, UNKNOWN,
// DATA_LOSS) as errors; overload and unavailability (RESOURCE_EXHAUSTED, UNAVAILABLE,
// DEADLINE_EXCEEDED, UNIMPLEMENTED) and unary calls slower than a threshold as warnings. A client's own
// mistakes (INVALID_ARGUMENT, NOT_FOUND, UNAUTHENTICATED, ...) are not logged: the client has the
// message. Lines carry the method, code, duration, peer, request id (request_id.h) and status
// message, never request content, and are rate-limited so that a failing dependency cannot flood stderr: suppressed lines are
// counted and the count reported with the next line.
#pragma once

#include <cstdint>
#include <functional>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "server/log.h"

namespace scanserve {

struct CallLogOptions {
  double slow_call_seconds = 1.0;    // log OK calls at least this slow; 0 = never
  double max_lines_per_second = 10;  // sustained rate (bursts up to the same number of lines)
};

// INVALID_ARGUMENT unless slow_call_seconds >= 0 and max_lines_per_second > 0, both finite.
absl::Status ValidateCallLogOptions(const CallLogOptions& options);

struct CallLogLine {
  LogLevel level;
  std::string text;
  // The same as fields for JSON logs, named as go-grpc-middleware's logging names them:
  // grpc.method, grpc.code, grpc.time_ms, grpc.slow, peer.address, request.id (when known), error
  // (the status message, when any), suppressed (lines suppressed before this one, when any).
  std::vector<LogField> fields;
};

struct FinishedCall {
  absl::string_view method;      // the gRPC path ("/scanserve.v1.ScanService/SearchImages")
  absl::string_view peer;        // empty = unknown
  absl::string_view request_id;  // empty = none
  absl::StatusCode code = absl::StatusCode::kOk;
  absl::string_view message;     // the status message
  double seconds = 0;
  // A streaming call (Ingest, health Watch) lasts as long as its client streams, so it is never
  // logged for being slow.
  bool streaming = false;
};

class CallLog {
 public:
  // `now_seconds`: a monotonic clock (tests pass their own); default steady_clock.
  explicit CallLog(CallLogOptions options, std::function<double()> now_seconds = nullptr);

  // The line for a finished call, or nullopt when it is not logged (or suppressed). Thread-safe.
  std::optional<CallLogLine> Record(const FinishedCall& call);

  // Lines suppressed by the rate limit since start.
  int64_t suppressed_total() const;

 private:
  const CallLogOptions options_;
  const std::function<double()> now_seconds_;
  mutable std::mutex mu_;
  double tokens_;           // guarded by mu_: the token bucket
  double last_refill_;      // guarded by mu_
  int64_t suppressed_ = 0;  // guarded by mu_: since the last line written
  int64_t suppressed_total_ = 0;
};

}  // namespace scanserve
