// CredentialReloader: re-reads the TLS files and the bearer-token file while the server runs, so
// that certificates and tokens rotate without a restart (cert-manager, a Vault agent, a Kubernetes
// secret, a cron job). A change is checked before it replaces what is served; one that fails the
// checks (a key that does not match its certificate, an unparsable file, an empty token file, a
// missing file) is logged and counted, and the previous credentials stay in service: a bad
// rotation never locks clients out or lets them in without a token.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "server/auth.h"
#include "server/pem_check.h"
#include "server/tls_key_material.h"

namespace scanserve {

class ServerMetrics;

// As ValidateServerOptions checks them: the certificate and key both or neither, client CAs only
// with them.
struct CredentialFiles {
  std::string tls_cert_file;       // empty: plaintext (then the two below are empty too)
  std::string tls_key_file;
  std::string tls_client_ca_file;  // empty: no client certificates asked for
  std::string auth_token_file;     // empty: no token file
};

class CredentialReloader {
 public:
  // Reads and checks every file once: any problem is an error here, so that the server does not
  // start with credentials it cannot serve. `metrics` may be null.
  static absl::StatusOr<std::unique_ptr<CredentialReloader>> Create(CredentialFiles files, ServerMetrics* metrics);
  ~CredentialReloader();  // Stop()
  CredentialReloader(const CredentialReloader&) = delete;
  CredentialReloader& operator=(const CredentialReloader&) = delete;

  // The served TLS key material (null without TLS): build the server's credentials from it.
  TlsKeyMaterial* tls() const { return tls_.get(); }
  // The token file's tokens as read by Create (empty without a token file).
  const std::vector<std::string>& initial_tokens() const { return initial_tokens_; }

  // Re-reads every file; what changed and passes the checks replaces what is served (tokens go to
  // `auth`, when not null). Returns how many credentials were replaced.
  int ReloadChanged(Authenticator* auth);

  // ReloadChanged every `interval_s` seconds on a thread of its own, until Stop().
  void Start(int interval_s, Authenticator* auth);
  void Stop();

 private:
  // One watched credential: what the last round read (its contents, or its read error), to tell
  // a change.
  struct Watched {
    std::string seen;
  };

  CredentialReloader(CredentialFiles files, ServerMetrics* metrics) : files_(std::move(files)), metrics_(metrics) {}

  // The files' contents when they differ from what the last round read and could be read (a
  // read error is Refused here); nullopt otherwise.
  std::optional<std::vector<std::string>> ReadIfChanged(Watched* watched, const char* credential,
                                                        const std::vector<const std::string*>& paths,
                                                        const std::vector<const char*>& whats);
  // Each returns whether it replaced what is served.
  bool ReloadIdentity();
  bool ReloadClientCa();
  bool ReloadTokens(Authenticator* auth);
  // Records the outcome of a change of `credential`, in the log and the metrics.
  void Refused(const char* credential, const std::string& problem);
  void Served(const char* credential, const std::string& what);
  void SetExpiry(const CertificateSummary& summary);

  const CredentialFiles files_;
  ServerMetrics* const metrics_;
  std::unique_ptr<TlsKeyMaterial> tls_;
  std::vector<std::string> initial_tokens_;

  std::mutex reload_mu_;  // one ReloadChanged at a time; guards the Watched below
  Watched identity_, client_ca_, tokens_;

  std::mutex thread_mu_;
  std::condition_variable stop_cv_;
  bool stopping_ = false;  // guarded by thread_mu_
  std::thread thread_;
};

}  // namespace scanserve
