#include "server/tls_key_material.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <ctime>

#include <grpcpp/security/tls_credentials_options.h>

#include "absl/strings/str_cat.h"

namespace scanserve {
namespace {

// How often gRPC re-reads the memory files: they only change when a checked replacement lands,
// so a short interval costs two small reads a second and makes a rotation visible at once.
constexpr unsigned int kWatchIntervalS = 1;

std::string FdPath(int fd) { return absl::StrCat("/proc/self/fd/", fd); }

absl::Status ErrnoError(absl::string_view what) {
  return absl::InternalError(absl::StrCat(what, ": ", std::strerror(errno)));
}

}  // namespace

absl::StatusOr<std::unique_ptr<TlsKeyMaterial>> TlsKeyMaterial::Create(absl::string_view key_pem,
                                                                        absl::string_view cert_pem,
                                                                        absl::string_view client_ca_pem) {
  std::unique_ptr<TlsKeyMaterial> material(new TlsKeyMaterial());
  material->first_version_time_ = static_cast<int64_t>(std::time(nullptr));
  if (absl::Status status = material->ReplaceIdentity(key_pem, cert_pem); !status.ok()) return status;
  if (!client_ca_pem.empty()) {
    std::lock_guard<std::mutex> lock(material->mu_);
    if (absl::Status status = material->Replace(&material->client_ca_fd_, "scanserve-tls-client-ca", client_ca_pem);
        !status.ok()) {
      return status;
    }
  }
  // gRPC reads the files by path; without /proc it would find none and refuse every handshake.
  struct stat info;
  if (stat(material->identity_path().c_str(), &info) != 0) {
    return absl::FailedPreconditionError(absl::StrCat(
        "TLS needs /proc/self/fd (the served key material lives in memory files): ", std::strerror(errno)));
  }
  return material;
}

TlsKeyMaterial::~TlsKeyMaterial() {
  provider_.reset();  // stops gRPC's watcher thread before its files go
  if (identity_fd_ >= 0) close(identity_fd_);
  if (client_ca_fd_ >= 0) close(client_ca_fd_);
}

std::string TlsKeyMaterial::identity_path() const { return FdPath(identity_fd_); }
std::string TlsKeyMaterial::client_ca_path() const { return client_ca_fd_ >= 0 ? FdPath(client_ca_fd_) : ""; }

absl::Status TlsKeyMaterial::ReplaceIdentity(absl::string_view key_pem, absl::string_view cert_pem) {
  // OpenSSL reads the key and the chain from the same text, each skipping the other's blocks.
  std::string identity = absl::StrCat(key_pem, key_pem.empty() || key_pem.back() == '\n' ? "" : "\n", cert_pem);
  std::lock_guard<std::mutex> lock(mu_);
  return Replace(&identity_fd_, "scanserve-tls-identity", identity);
}

absl::Status TlsKeyMaterial::ReplaceClientCa(absl::string_view client_ca_pem) {
  std::lock_guard<std::mutex> lock(mu_);
  if (client_ca_fd_ < 0) return absl::FailedPreconditionError("the server was started without client CAs");
  return Replace(&client_ca_fd_, "scanserve-tls-client-ca", client_ca_pem);
}

absl::Status TlsKeyMaterial::Replace(int* fd, absl::string_view name, absl::string_view pem) {
  const int next = memfd_create(std::string(name).c_str(), MFD_CLOEXEC);
  if (next < 0) return ErrnoError("memfd_create");
  size_t written = 0;
  while (written < pem.size()) {
    const ssize_t n = write(next, pem.data() + written, pem.size() - written);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      const absl::Status error = ErrnoError("writing TLS key material to memory");
      close(next);
      return error;
    }
    written += static_cast<size_t>(n);
  }
  const timespec version_time{static_cast<time_t>(first_version_time_ + versions_++), 0};
  const timespec times[2] = {version_time, version_time};
  if (futimens(next, times) != 0) {
    const absl::Status error = ErrnoError("futimens");
    close(next);
    return error;
  }
  if (*fd < 0) {
    *fd = next;
    return absl::OkStatus();
  }
  // dup3 swaps what the fixed descriptor (the path gRPC opens) refers to in one step.
  if (dup3(next, *fd, O_CLOEXEC) < 0) {
    const absl::Status error = ErrnoError("dup3");
    close(next);
    return error;
  }
  close(next);
  return absl::OkStatus();
}

std::shared_ptr<grpc::ServerCredentials> TlsKeyMaterial::ServerCredentials() {
  std::lock_guard<std::mutex> lock(mu_);
  provider_ = std::make_shared<grpc::experimental::FileWatcherCertificateProvider>(
      identity_path(), identity_path(), client_ca_path(), kWatchIntervalS);
  grpc::experimental::TlsServerCredentialsOptions options(provider_);
  options.watch_identity_key_cert_pairs();
  if (client_ca_fd_ >= 0) {
    options.watch_root_certs();
    options.set_cert_request_type(GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY);
  }
  return grpc::experimental::TlsServerCredentials(options);
}

}  // namespace scanserve
