// How scanctl reaches the server: the channel (plaintext or TLS), the bearer token sent with every
// call, and the per-call deadline.
#pragma once

#include <memory>
#include <string>

#include <grpcpp/grpcpp.h>

#include "absl/status/statusor.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "scanserve/v1/scanserve.grpc.pb.h"

namespace scanserve {
namespace cli {

struct ConnectionOptions {
  std::string server = "127.0.0.1:50051";
  std::string token;       // sent as "authorization: Bearer <token>" when set
  std::string tls_ca;      // PEM roots file: use TLS and verify the server against these
  bool tls = false;        // use TLS with the system's roots (implied by tls_ca and tls_cert)
  // This client's PEM certificate chain and private key, for a server that requires client
  // certificates (mutual TLS); both or neither.
  std::string tls_cert;
  std::string tls_key;
  double timeout_s = 30;   // deadline of each unary call; 0 = none
  // A TCP connection of its own rather than one shared with this process's other channels to the
  // same server (gRPC's default), so that concurrent load clients are separate connections.
  bool dedicated_connection = false;
};

// The bearer token in a token file: the one line left once blank lines and '#' comments are
// skipped (the server's --auth-token-file format). A file with none, or with several (the
// server's file during a rotation: give the client its own), is INVALID_ARGUMENT.
absl::StatusOr<std::string> ReadBearerTokenFile(const std::string& path);

// The wait before try `tries` + 1 of a call that failed in a way another try may get past (a
// server restarting, a memory quota): 0.25 s, doubling to 8 s, ~30 s over 8 tries in a row.
double RetryBackoffSeconds(int tries);

class Connection {
 public:
  // Reads the CA, certificate and key files; INVALID_ARGUMENT / NOT_FOUND when it cannot.
  static absl::StatusOr<std::unique_ptr<Connection>> Create(const ConnectionOptions& options);

  // Connects now, retrying with gRPC's backoff until the channel is ready or `timeout_s` has
  // passed (0 = no limit): UNAVAILABLE then. Calls made before fail fast while a first connection
  // attempt fails, which a load generator would count as the server's errors.
  absl::Status WaitConnected(double timeout_s);

  // A context for one call: the token, and the deadline unless `with_deadline` is false (streams).
  std::unique_ptr<grpc::ClientContext> NewContext(bool with_deadline = true) const;

  v1::ScanService::Stub& scan() { return *scan_; }
  grpc::health::v1::Health::Stub& health() { return *health_; }
  const ConnectionOptions& options() const { return options_; }

 private:
  explicit Connection(ConnectionOptions options) : options_(std::move(options)) {}

  ConnectionOptions options_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::ScanService::Stub> scan_;
  std::unique_ptr<grpc::health::v1::Health::Stub> health_;
};

}  // namespace cli
}  // namespace scanserve
