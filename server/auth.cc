#include "server/auth.h"

#include <algorithm>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "engine/common/token_file.h"

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

std::vector<std::string> WithoutEmpty(std::vector<std::string> tokens) {
  tokens.erase(std::remove(tokens.begin(), tokens.end(), std::string()), tokens.end());
  return tokens;
}

}  // namespace

absl::StatusOr<std::vector<std::string>> ParseTokenFile(absl::string_view contents) {
  std::vector<std::string> tokens = TokenFileTokens(contents);
  if (tokens.empty()) {
    return absl::InvalidArgumentError("no token in it (one per line; blank and '#' lines are skipped)");
  }
  return tokens;
}

Authenticator::Authenticator(std::vector<std::string> tokens)
    : tokens_(std::make_shared<const std::vector<std::string>>(WithoutEmpty(std::move(tokens)))),
      enabled_(!tokens_->empty()) {}

Authenticator::Authenticator(std::string token) : Authenticator(std::vector<std::string>{std::move(token)}) {}

void Authenticator::SetTokens(std::vector<std::string> tokens) {
  auto next = std::make_shared<const std::vector<std::string>>(WithoutEmpty(std::move(tokens)));
  if (enabled_ && next->empty()) return;  // never open the door: keep the previous tokens
  std::lock_guard<std::mutex> lock(mu_);
  tokens_ = std::move(next);
}

std::shared_ptr<const std::vector<std::string>> Authenticator::tokens() const {
  std::lock_guard<std::mutex> lock(mu_);
  return tokens_;
}

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
  // Every accepted token is compared, so the time taken does not say which one matched.
  bool accepted = false;
  for (const std::string& candidate : *tokens()) accepted |= ConstantTimeEquals(token, candidate);
  if (!accepted) return absl::PermissionDeniedError("invalid token");
  return absl::OkStatus();
}

}  // namespace scanserve
