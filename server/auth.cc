#include "server/auth.h"

#include <algorithm>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"

namespace scanserve {
namespace {

// Compares in time that depends on the lengths only, not on where the strings differ.
bool ConstantTimeEquals(absl::string_view a, absl::string_view b) {
  unsigned char diff = a.size() == b.size() ? 0 : 1;
  const size_t n = std::max(a.size(), b.size());
  for (size_t i = 0; i < n; ++i) {
    const unsigned char x = i < a.size() ? static_cast<unsigned char>(a[i]) : 0;
    const unsigned char y = i < b.size() ? static_cast<unsigned char>(b[i]) : 0;
    diff |= x ^ y;
  }
  return diff == 0;
}

constexpr absl::string_view kBearer = "bearer ";

}  // namespace

absl::Status Authenticator::Check(const grpc::ServerContext& context) const {
  if (!enabled()) return absl::OkStatus();
  const auto& metadata = context.client_metadata();
  const auto it = metadata.find("authorization");
  if (it == metadata.end()) return CheckAuthorization(false, "");
  return CheckAuthorization(true, absl::string_view(it->second.data(), it->second.size()));
}

absl::Status Authenticator::CheckAuthorization(bool present, absl::string_view authorization) const {
  if (!enabled()) return absl::OkStatus();
  if (!present) {
    return absl::UnauthenticatedError("missing credentials: send the metadata 'authorization: Bearer <token>'");
  }
  // The scheme is case-insensitive (RFC 7235).
  if (authorization.size() < kBearer.size() ||
      !absl::EqualsIgnoreCase(authorization.substr(0, kBearer.size()), kBearer)) {
    return absl::UnauthenticatedError("the authorization metadata must be 'Bearer <token>'");
  }
  const absl::string_view token = absl::StripAsciiWhitespace(authorization.substr(kBearer.size()));
  if (!ConstantTimeEquals(token, token_)) return absl::PermissionDeniedError("invalid token");
  return absl::OkStatus();
}

}  // namespace scanserve
