// Checks of PEM key material before the server serves it: at start, so that a bad file stops the
// server with a clear line, and on every reload, so that a half-rotated or mistyped file never
// reaches gRPC (which would fail every new handshake until the files are fixed).
#pragma once

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace scanserve {

struct CertificateSummary {
  std::string subject;         // the leaf certificate's subject, RFC 2253 ("CN=localhost")
  int64_t not_after_unix = 0;  // when the leaf certificate expires, Unix seconds
  int chain_length = 0;        // certificates in the chain, the leaf included
};

// `cert_pem` must hold one or more certificates (the leaf first) and `key_pem` an unencrypted
// private key whose public half is the leaf's. INVALID_ARGUMENT saying what is wrong otherwise.
absl::StatusOr<CertificateSummary> CheckServerIdentity(absl::string_view key_pem, absl::string_view cert_pem);

// `ca_pem` must hold one or more certificates and nothing unparsable; returns how many.
absl::StatusOr<int> CheckCaCertificates(absl::string_view ca_pem);

}  // namespace scanserve
