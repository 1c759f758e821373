#include "client/connection.h"

#include <algorithm>
#include <chrono>
#include <vector>

#include "absl/strings/str_cat.h"
#include "engine/common/file_read.h"
#include "engine/common/token_file.h"

namespace scanserve {
namespace cli {

absl::StatusOr<std::string> ReadBearerTokenFile(const std::string& path) {
  absl::StatusOr<std::string> contents = ReadWholeFile(path, "--token-file");
  if (!contents.ok()) return contents.status();
  const std::vector<std::string> tokens = TokenFileTokens(*contents);
  if (tokens.size() != 1) {
    return absl::InvalidArgumentError(absl::StrCat("--token-file: ", path, " holds ", tokens.size(),
                                                   " tokens (lines other than blank and '#' ones); scanctl sends one"));
  }
  return tokens.front();
}

absl::StatusOr<std::unique_ptr<Connection>> Connection::Create(const ConnectionOptions& options) {
  // gRPC aborts the process on a metadata value it cannot send (a newline, a control byte).
  for (const char c : options.token) {
    if (c < 0x20 || c > 0x7E) {
      return absl::InvalidArgumentError(
          "the bearer token (--token, --token-file, $SCANCTL_TOKEN) may hold printable ASCII only");
    }
  }
  std::unique_ptr<Connection> connection(new Connection(options));
  std::shared_ptr<grpc::ChannelCredentials> credentials = grpc::InsecureChannelCredentials();
  if (options.tls_cert.empty() != options.tls_key.empty()) {
    return absl::InvalidArgumentError("--tls-cert and --tls-key go together");
  }
  if (!options.tls_ca.empty() || options.tls || !options.tls_cert.empty()) {
    grpc::SslCredentialsOptions ssl;
    if (!options.tls_ca.empty()) {
      absl::StatusOr<std::string> roots = ReadWholeFile(options.tls_ca, "--tls-ca");
      if (!roots.ok()) return roots.status();
      ssl.pem_root_certs = *std::move(roots);
    }
    if (!options.tls_cert.empty()) {
      absl::StatusOr<std::string> chain = ReadWholeFile(options.tls_cert, "--tls-cert");
      if (!chain.ok()) return chain.status();
      absl::StatusOr<std::string> key = ReadWholeFile(options.tls_key, "--tls-key");
      if (!key.ok()) return key.status();
      ssl.pem_cert_chain = *std::move(chain);
      ssl.pem_private_key = *std::move(key);
    }
    credentials = grpc::SslCredentials(ssl);
  }
  grpc::ChannelArguments arguments;
  // Responses are bounded by the server's own limit; do not cut them at gRPC's 4 MiB default.
  arguments.SetMaxReceiveMessageSize(-1);
  arguments.SetMaxSendMessageSize(-1);
  if (options.dedicated_connection) arguments.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  connection->channel_ = grpc::CreateCustomChannel(options.server, credentials, arguments);
  connection->scan_ = v1::ScanService::NewStub(connection->channel_);
  connection->health_ = grpc::health::v1::Health::NewStub(connection->channel_);
  return connection;
}

double RetryBackoffSeconds(int tries) {
  return std::min(8.0, 0.25 * static_cast<double>(1 << std::clamp(tries - 1, 0, 5)));
}

absl::Status Connection::WaitConnected(double timeout_s) {
  const gpr_timespec deadline =
      timeout_s > 0 ? gpr_time_add(gpr_now(GPR_CLOCK_MONOTONIC),
                                   gpr_time_from_millis(static_cast<int64_t>(timeout_s * 1000), GPR_TIMESPAN))
                    : gpr_inf_future(GPR_CLOCK_MONOTONIC);
  if (channel_->WaitForConnected(deadline)) return absl::OkStatus();
  return absl::UnavailableError(
      absl::StrCat("no connection to ", options_.server, " within ", timeout_s, " s"));
}

std::unique_ptr<grpc::ClientContext> Connection::NewContext(bool with_deadline) const {
  auto context = std::make_unique<grpc::ClientContext>();
  if (!options_.token.empty()) context->AddMetadata("authorization", "Bearer " + options_.token);
  if (with_deadline && options_.timeout_s > 0) {
    context->set_deadline(std::chrono::system_clock::now() +
                          std::chrono::duration_cast<std::chrono::system_clock::duration>(
                              std::chrono::duration<double>(options_.timeout_s)));
  }
  return context;
}

}  // namespace cli
}  // namespace scanserve
