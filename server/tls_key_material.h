// TlsKeyMaterial: the certificate chain, private key and client CAs that gRPC serves, kept in
// memory files (memfd) that gRPC's file-watching certificate provider re-reads every second.
//
// Why not point gRPC at the operator's files: gRPC takes whatever it reads there, and a key that
// does not match its certificate (a rotation half done, a copy in the wrong order, a typo) makes
// it fail every new handshake until the files are fixed. Here only checked material is written
// (credential_reloader.h checks it), and the key and its chain are one file, replaced in one
// step, so gRPC never reads half a rotation. Nothing is written to disk; the files vanish with
// the process.
#pragma once

#include <memory>
#include <mutex>
#include <string>

#include <grpcpp/security/server_credentials.h>
#include <grpcpp/security/tls_certificate_provider.h>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace scanserve {

class TlsKeyMaterial {
 public:
  // `key_pem` and `cert_pem`: the server's identity, already checked (CheckServerIdentity).
  // `client_ca_pem`: CA certificates every client must present a certificate of (mutual TLS);
  // empty = clients are not asked for one, and ReplaceClientCa is refused.
  static absl::StatusOr<std::unique_ptr<TlsKeyMaterial>> Create(absl::string_view key_pem,
                                                                absl::string_view cert_pem,
                                                                absl::string_view client_ca_pem);
  ~TlsKeyMaterial();
  TlsKeyMaterial(const TlsKeyMaterial&) = delete;
  TlsKeyMaterial& operator=(const TlsKeyMaterial&) = delete;

  // New handshakes use these within about a second (gRPC's watcher interval); connections already
  // open keep the key material they were made with. Thread-safe.
  absl::Status ReplaceIdentity(absl::string_view key_pem, absl::string_view cert_pem);
  absl::Status ReplaceClientCa(absl::string_view client_ca_pem);

  bool mutual() const { return client_ca_fd_ >= 0; }

  // TLS credentials that watch these files: one call, before the server is built.
  std::shared_ptr<grpc::ServerCredentials> ServerCredentials();

  // Paths gRPC reads (/proc/self/fd/N), for tests.
  std::string identity_path() const;
  std::string client_ca_path() const;

 private:
  TlsKeyMaterial() = default;
  // Points the fixed descriptor `*fd` (or a new one, when -1) at a new memory file holding `pem`.
  absl::Status Replace(int* fd, absl::string_view name, absl::string_view pem);

  std::mutex mu_;
  int identity_fd_ = -1;   // key and chain, one file: gRPC reads both from it
  int client_ca_fd_ = -1;  // -1: no client certificates asked for
  // Each version of a file gets a modification time of its own: gRPC compares the times before
  // and after reading a key pair and reads again when they differ, which is what makes a
  // replacement during its read safe. Guarded by mu_.
  int64_t versions_ = 0;
  int64_t first_version_time_ = 0;
  std::shared_ptr<grpc::experimental::FileWatcherCertificateProvider> provider_;
};

}  // namespace scanserve
