// Bearer-token authentication for ScanService calls: with a token configured, every call must carry
// the metadata `authorization: Bearer <token>`. A call without it is UNAUTHENTICATED, one with a
// different token PERMISSION_DENIED. grpc.health.v1 and reflection are not checked (load balancers
// and tooling reach them without credentials; they reveal nothing stored).
//
// Why a check called by each handler rather than an AuthMetadataProcessor or an interceptor: gRPC
// C++ 1.51 accepts an AuthMetadataProcessor only on TLS credentials (plaintext deployments behind a
// proxy need the token too), and a server interceptor cannot fail a call with a chosen code.
#pragma once

#include <string>

#include <grpcpp/server_context.h>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"

namespace scanserve {

class Authenticator {
 public:
  // An empty token turns authentication off.
  explicit Authenticator(std::string token) : token_(std::move(token)) {}

  bool enabled() const { return !token_.empty(); }

  // OK when authentication is off or the call's `authorization` metadata holds the bearer token.
  absl::Status Check(const grpc::ServerContext& context) const;
  // The same on the header's value; `present` = whether the call carried the header at all.
  absl::Status CheckAuthorization(bool present, absl::string_view authorization) const;

 private:
  std::string token_;
};

}  // namespace scanserve
