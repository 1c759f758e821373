#include "server/credential_reloader.h"

#include <chrono>
#include <optional>
#include <thread>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "engine/common/file_read.h"
#include "server/log.h"
#include "server/metrics.h"

namespace scanserve {
namespace {

constexpr char kIdentity[] = "tls_identity";
constexpr char kClientCa[] = "tls_client_ca";
constexpr char kTokens[] = "auth_tokens";

// The files' contents. Read twice: when the second read differs, the files are being rewritten
// right now (a copy of the key, then of the certificate), and UNAVAILABLE says to look again at
// the next round rather than judge a mix of old and new.
absl::StatusOr<std::vector<std::string>> ReadSettled(const std::vector<const std::string*>& paths,
                                                     const std::vector<const char*>& whats) {
  std::vector<std::string> first, second;
  for (std::vector<std::string>* read : {&first, &second}) {
    for (size_t i = 0; i < paths.size(); ++i) {
      absl::StatusOr<std::string> contents = ReadWholeFile(*paths[i], whats[i]);
      if (!contents.ok()) return contents.status();
      read->push_back(*std::move(contents));
    }
  }
  if (first != second) return absl::UnavailableError("the files are changing");
  return first;
}

// ReadSettled for the start, where there is no next round: files caught being rewritten are read
// again a few times before that is an error.
absl::StatusOr<std::vector<std::string>> ReadAtStart(const std::vector<const std::string*>& paths,
                                                     const std::vector<const char*>& whats) {
  for (int attempt = 1;; ++attempt) {
    absl::StatusOr<std::vector<std::string>> read = ReadSettled(paths, whats);
    if (!absl::IsUnavailable(read.status()) || attempt == 5) return read;
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
}

// What a round saw, as one string to compare with the previous round's: the contents, or the
// error that stopped the read.
std::string Fingerprint(const absl::StatusOr<std::vector<std::string>>& read) {
  if (!read.ok()) return absl::StrCat("error\n", read.status().ToString());
  std::string joined = "ok";
  for (const std::string& contents : *read) absl::StrAppend(&joined, "\n", contents.size(), "\n", contents);
  return joined;
}

std::string DescribeCertificate(const CertificateSummary& summary) {
  return absl::StrCat("'", summary.subject, "' (", summary.chain_length,
                      summary.chain_length == 1 ? " certificate" : " certificates", ", expires ",
                      absl::FormatTime("%Y-%m-%d %H:%M:%S UTC", absl::FromUnixSeconds(summary.not_after_unix),
                                       absl::UTCTimeZone()),
                      ")");
}

absl::StatusOr<CertificateSummary> CheckIdentityFiles(const CredentialFiles& files, const std::string& key,
                                                      const std::string& cert) {
  absl::StatusOr<CertificateSummary> summary = CheckServerIdentity(key, cert);
  if (!summary.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(summary.status().message(), " (--tls-cert ", files.tls_cert_file,
                                                   ", --tls-key ", files.tls_key_file, ")"));
  }
  return summary;
}

absl::StatusOr<int> CheckClientCaFile(const CredentialFiles& files, const std::string& pem) {
  absl::StatusOr<int> count = CheckCaCertificates(pem);
  if (!count.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(count.status().message(), " (", files.tls_client_ca_file, ")"));
  }
  return count;
}

absl::StatusOr<std::vector<std::string>> ParseTokenFileOf(const CredentialFiles& files, const std::string& contents) {
  absl::StatusOr<std::vector<std::string>> tokens = ParseTokenFile(contents);
  if (!tokens.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("--auth-token-file ", files.auth_token_file, ": ", tokens.status().message()));
  }
  return tokens;
}

}  // namespace

absl::StatusOr<std::unique_ptr<CredentialReloader>> CredentialReloader::Create(CredentialFiles files,
                                                                              ServerMetrics* metrics) {
  std::unique_ptr<CredentialReloader> reloader(new CredentialReloader(std::move(files), metrics));
  const CredentialFiles& f = reloader->files_;
  if (!f.tls_cert_file.empty()) {
    absl::StatusOr<std::vector<std::string>> identity =
        ReadAtStart({&f.tls_key_file, &f.tls_cert_file}, {"TLS key", "TLS certificate"});
    if (!identity.ok()) return identity.status();
    absl::StatusOr<CertificateSummary> summary = CheckIdentityFiles(f, (*identity)[0], (*identity)[1]);
    if (!summary.ok()) return summary.status();
    std::string client_ca;
    if (!f.tls_client_ca_file.empty()) {
      absl::StatusOr<std::vector<std::string>> ca = ReadAtStart({&f.tls_client_ca_file}, {"TLS client CA"});
      if (!ca.ok()) return ca.status();
      if (absl::StatusOr<int> count = CheckClientCaFile(f, (*ca)[0]); !count.ok()) return count.status();
      client_ca = (*ca)[0];
      reloader->client_ca_.seen = Fingerprint(ca);
    }
    absl::StatusOr<std::unique_ptr<TlsKeyMaterial>> tls =
        TlsKeyMaterial::Create((*identity)[0], (*identity)[1], client_ca);
    if (!tls.ok()) return tls.status();
    reloader->tls_ = *std::move(tls);
    reloader->identity_.seen = Fingerprint(identity);
    reloader->SetExpiry(*summary);
    if (summary->not_after_unix < absl::ToUnixSeconds(absl::Now())) {
      Log(LogLevel::kWarning, absl::StrCat("the TLS certificate has expired: ", DescribeCertificate(*summary),
                                           "; clients will refuse it"));
    }
  }
  if (!f.auth_token_file.empty()) {
    absl::StatusOr<std::vector<std::string>> read = ReadAtStart({&f.auth_token_file}, {"--auth-token-file"});
    if (!read.ok()) return read.status();
    absl::StatusOr<std::vector<std::string>> tokens = ParseTokenFileOf(f, (*read)[0]);
    if (!tokens.ok()) return tokens.status();
    reloader->initial_tokens_ = *std::move(tokens);
    reloader->tokens_.seen = Fingerprint(read);
  }
  if (metrics != nullptr) {
    for (const auto& [credential, watched] : {std::pair<const char*, bool>{kIdentity, !f.tls_cert_file.empty()},
                                              {kClientCa, !f.tls_client_ca_file.empty()},
                                              {kTokens, !f.auth_token_file.empty()}}) {
      if (!watched) continue;
      metrics->credential_files_served(credential).Set(1);
      metrics->credential_reloads(credential);  // both counters exist from the start, at 0
      metrics->credential_reload_errors(credential);
    }
  }
  return reloader;
}

CredentialReloader::~CredentialReloader() { Stop(); }

int CredentialReloader::ReloadChanged(Authenticator* auth) {
  std::lock_guard<std::mutex> lock(reload_mu_);
  int replaced = 0;
  if (tls_ != nullptr) {
    replaced += ReloadIdentity() ? 1 : 0;
    if (tls_->mutual()) replaced += ReloadClientCa() ? 1 : 0;
  }
  if (!files_.auth_token_file.empty() && auth != nullptr) replaced += ReloadTokens(auth) ? 1 : 0;
  return replaced;
}

std::optional<std::vector<std::string>> CredentialReloader::ReadIfChanged(Watched* watched, const char* credential,
                                                                          const std::vector<const std::string*>& paths,
                                                                          const std::vector<const char*>& whats) {
  absl::StatusOr<std::vector<std::string>> read = ReadSettled(paths, whats);
  if (absl::IsUnavailable(read.status())) return std::nullopt;  // being rewritten: next round
  std::string seen = Fingerprint(read);
  if (seen == watched->seen) return std::nullopt;
  watched->seen = std::move(seen);
  if (!read.ok()) {
    Refused(credential, std::string(read.status().message()));
    return std::nullopt;
  }
  return *std::move(read);
}

bool CredentialReloader::ReloadIdentity() {
  std::optional<std::vector<std::string>> read = ReadIfChanged(
      &identity_, kIdentity, {&files_.tls_key_file, &files_.tls_cert_file}, {"TLS key", "TLS certificate"});
  if (!read.has_value()) return false;
  absl::StatusOr<CertificateSummary> summary = CheckIdentityFiles(files_, (*read)[0], (*read)[1]);
  if (!summary.ok()) {
    Refused(kIdentity, std::string(summary.status().message()));
    return false;
  }
  if (absl::Status status = tls_->ReplaceIdentity((*read)[0], (*read)[1]); !status.ok()) {
    Refused(kIdentity, status.ToString());
    return false;
  }
  SetExpiry(*summary);
  Served(kIdentity, absl::StrCat("TLS certificate ", DescribeCertificate(*summary)));
  return true;
}

bool CredentialReloader::ReloadClientCa() {
  std::optional<std::vector<std::string>> read =
      ReadIfChanged(&client_ca_, kClientCa, {&files_.tls_client_ca_file}, {"TLS client CA"});
  if (!read.has_value()) return false;
  absl::StatusOr<int> count = CheckClientCaFile(files_, (*read)[0]);
  if (!count.ok()) {
    Refused(kClientCa, std::string(count.status().message()));
    return false;
  }
  if (absl::Status status = tls_->ReplaceClientCa((*read)[0]); !status.ok()) {
    Refused(kClientCa, status.ToString());
    return false;
  }
  Served(kClientCa, absl::StrCat(*count, *count == 1 ? " client CA certificate" : " client CA certificates"));
  return true;
}

bool CredentialReloader::ReloadTokens(Authenticator* auth) {
  std::optional<std::vector<std::string>> read =
      ReadIfChanged(&tokens_, kTokens, {&files_.auth_token_file}, {"--auth-token-file"});
  if (!read.has_value()) return false;
  absl::StatusOr<std::vector<std::string>> tokens = ParseTokenFileOf(files_, (*read)[0]);
  if (!tokens.ok()) {
    Refused(kTokens, std::string(tokens.status().message()));
    return false;
  }
  const size_t count = tokens->size();
  auth->SetTokens(*std::move(tokens));
  Served(kTokens, absl::StrCat(count, count == 1 ? " bearer token" : " bearer tokens"));
  return true;
}

void CredentialReloader::Refused(const char* credential, const std::string& problem) {
  Log(LogLevel::kError, absl::StrCat("credential reload: ", credential, " changed but cannot be served: ", problem,
                                     "; the previous one stays in service"));
  if (metrics_ != nullptr) {
    metrics_->credential_reload_errors(credential).Increment();
    metrics_->credential_files_served(credential).Set(0);
  }
}

void CredentialReloader::Served(const char* credential, const std::string& what) {
  Log(LogLevel::kInfo, absl::StrCat("credential reload: ", credential, " now serves ", what));
  if (metrics_ != nullptr) {
    metrics_->credential_reloads(credential).Increment();
    metrics_->credential_files_served(credential).Set(1);
  }
}

void CredentialReloader::SetExpiry(const CertificateSummary& summary) {
  if (metrics_ != nullptr) metrics_->tls_certificate_expiry().Set(static_cast<double>(summary.not_after_unix));
}

void CredentialReloader::Start(int interval_s, Authenticator* auth) {
  std::lock_guard<std::mutex> lock(thread_mu_);
  if (thread_.joinable() || interval_s <= 0) return;
  thread_ = std::thread([this, interval_s, auth] {
    std::unique_lock<std::mutex> lock(thread_mu_);
    while (!stop_cv_.wait_for(lock, std::chrono::seconds(interval_s), [this] { return stopping_; })) {
      lock.unlock();
      ReloadChanged(auth);
      lock.lock();
    }
  });
}

void CredentialReloader::Stop() {
  {
    std::lock_guard<std::mutex> lock(thread_mu_);
    stopping_ = true;
  }
  stop_cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

}  // namespace scanserve
