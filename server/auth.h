// Bearer-token authentication for ScanService calls: with tokens configured, every call must carry
// the metadata `authorization: Bearer <token>` with one of them. A call without it is
// UNAUTHENTICATED, one with another token PERMISSION_DENIED. grpc.health.v1 and reflection are not
// checked (load balancers and tooling reach them without credentials; they reveal nothing stored).
//
// Several tokens at once make rotation seamless: add the new one, move the clients over, remove
// the old one. The token file is re-read while serving (credential_reloader.h), so none of that
// needs a restart.
//
// Why a check called by each handler rather than an AuthMetadataProcessor or an interceptor: gRPC
// C++ 1.51 accepts an AuthMetadataProcessor only on TLS credentials (plaintext deployments behind a
// proxy need the token too), and a server interceptor cannot fail a call with a chosen code.
#pragma once

#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include <grpcpp/server_context.h>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace scanserve {

// The tokens of a token file (engine/common/token_file.h). INVALID_ARGUMENT when there are none
// (an empty file must not turn authentication off).
absl::StatusOr<std::vector<std::string>> ParseTokenFile(absl::string_view contents);

class Authenticator {
 public:
  // No tokens turn authentication off; so does an empty token.
  explicit Authenticator(std::vector<std::string> tokens = {});
  explicit Authenticator(std::string token);

  // Whether calls need a token; fixed at construction (SetTokens cannot turn it off or on).
  bool enabled() const { return enabled_; }

  // Replaces the accepted tokens (non-empty, when enabled) for the calls checked from now on.
  // Thread-safe.
  void SetTokens(std::vector<std::string> tokens);

  // OK when authentication is off or the call's `authorization` metadata holds an accepted token.
  absl::Status Check(const grpc::ServerContext& context) const;
  // The same on the header's value; `present` = whether the call carried the header at all.
  absl::Status CheckAuthorization(bool present, absl::string_view authorization) const;

 private:
  std::shared_ptr<const std::vector<std::string>> tokens() const;

  mutable std::mutex mu_;
  std::shared_ptr<const std::vector<std::string>> tokens_;  // guarded by mu_ (after construction)
  const bool enabled_;
};

}  // namespace scanserve
