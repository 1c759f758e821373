#include "server/request_id.h"

#include <algorithm>
#include <cinttypes>
#include <cstdint>
#include <cstdio>
#include <random>

#include "absl/strings/ascii.h"

namespace scanserve {
namespace {

// Characters of UUIDs, base64 and the usual trace and request id formats; nothing that could
// break a log line or a log query.
bool IsIdChar(char c) {
  return absl::ascii_isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_' || c == '.' || c == ':' ||
         c == '/' || c == '+' || c == '=';
}

bool IsLowerHex(absl::string_view text) {
  for (char c : text) {
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
  }
  return true;
}

// The trace id of a W3C traceparent ("00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>"),
// or empty when it is not one. All-zero ids are invalid there, and so they are here.
absl::string_view TraceIdOf(absl::string_view traceparent) {
  if (traceparent.size() < 55 || traceparent[2] != '-' || traceparent[35] != '-' || traceparent[52] != '-') {
    return {};
  }
  const absl::string_view version = traceparent.substr(0, 2);
  const absl::string_view trace_id = traceparent.substr(3, 32);
  const absl::string_view parent_id = traceparent.substr(36, 16);
  if (!IsLowerHex(version) || version == "ff" || !IsLowerHex(trace_id) || !IsLowerHex(parent_id) ||
      !IsLowerHex(traceparent.substr(53, 2))) {
    return {};
  }
  if (version == "00" && traceparent.size() != 55) return {};
  if (trace_id.find_first_not_of('0') == absl::string_view::npos ||
      parent_id.find_first_not_of('0') == absl::string_view::npos) {
    return {};
  }
  return trace_id;
}

}  // namespace

std::string RequestIdFor(absl::string_view client_request_id, absl::string_view traceparent) {
  if (!client_request_id.empty() && client_request_id.size() <= kMaxRequestIdBytes &&
      std::all_of(client_request_id.begin(), client_request_id.end(), IsIdChar)) {
    return std::string(client_request_id);
  }
  const absl::string_view trace_id = TraceIdOf(traceparent);
  if (!trace_id.empty()) return std::string(trace_id);
  return NewRequestId();
}

std::string NewRequestId() {
  thread_local std::mt19937_64 generator{std::random_device{}()};
  char id[17];
  std::snprintf(id, sizeof(id), "%016" PRIx64, static_cast<uint64_t>(generator()));
  return id;
}

}  // namespace scanserve
