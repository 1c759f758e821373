// Request ids: the id a call is known by in the server's log lines and to its client, so that a
// client's error report can be matched to the server's line for that call. A client's own id is
// kept: its x-request-id, else the trace id of its W3C traceparent (so that a traced client's spans
// and the server's lines share one id). A call without one, or with one that is not a short
// printable token, gets a fresh random one. The server returns the id to the client in the
// response's initial metadata, as x-request-id.
#pragma once

#include <string>

#include "absl/strings/string_view.h"

namespace scanserve {

inline constexpr char kRequestIdHeader[] = "x-request-id";
inline constexpr char kTraceparentHeader[] = "traceparent";
inline constexpr size_t kMaxRequestIdBytes = 128;

// The id of a call that sent these two headers (empty = not sent).
std::string RequestIdFor(absl::string_view client_request_id, absl::string_view traceparent);

// A fresh id: 16 lowercase hex digits (64 random bits).
std::string NewRequestId();

}  // namespace scanserve
