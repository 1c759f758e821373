#include "server/pem_check.h"

#include <ctime>
#include <memory>
#include <vector>

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include "absl/strings/str_cat.h"

namespace scanserve {
namespace {

struct BioFree {
  void operator()(BIO* bio) const { BIO_free(bio); }
};
struct X509Free {
  void operator()(X509* cert) const { X509_free(cert); }
};
struct KeyFree {
  void operator()(EVP_PKEY* key) const { EVP_PKEY_free(key); }
};
using BioPtr = std::unique_ptr<BIO, BioFree>;
using X509Ptr = std::unique_ptr<X509, X509Free>;
using KeyPtr = std::unique_ptr<EVP_PKEY, KeyFree>;

BioPtr MemoryBio(absl::string_view pem) {
  return BioPtr(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())));
}

// OpenSSL's reason for the last failure, and the thread's error queue left empty (gRPC's own TLS
// code runs on other threads, but this thread's queue must not leak into a later check).
std::string TakeOpenSslError() {
  const char* reason = ERR_reason_error_string(ERR_peek_last_error());
  std::string text = reason != nullptr ? reason : "unknown error";
  ERR_clear_error();
  return text;
}

// Every certificate in `pem`, in order. Stops at the end of the text; anything after the last
// certificate that is not another certificate's header is ignored, as OpenSSL does.
absl::StatusOr<std::vector<X509Ptr>> ReadCertificates(absl::string_view pem, absl::string_view what) {
  ERR_clear_error();
  BioPtr bio = MemoryBio(pem);
  if (bio == nullptr) return absl::ResourceExhaustedError("out of memory reading PEM");
  std::vector<X509Ptr> certificates;
  while (X509* cert = PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr)) certificates.emplace_back(cert);
  // The loop ends on "no start line" at the end of the text; any other error is a broken block.
  const unsigned long last = ERR_peek_last_error();
  if (last != 0 && !(ERR_GET_LIB(last) == ERR_LIB_PEM && ERR_GET_REASON(last) == PEM_R_NO_START_LINE)) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": a certificate cannot be parsed (", TakeOpenSslError(), ")"));
  }
  ERR_clear_error();
  if (certificates.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": no PEM certificate (-----BEGIN CERTIFICATE-----)"));
  }
  return certificates;
}

// A password callback that gives none: an encrypted key fails instead of prompting on the terminal.
int NoPassword(char*, int, int, void*) { return 0; }

std::string Rfc2253Name(X509_NAME* name) {
  BioPtr bio(BIO_new(BIO_s_mem()));
  if (bio == nullptr || X509_NAME_print_ex(bio.get(), name, 0, XN_FLAG_RFC2253) < 0) return "";
  char* data = nullptr;
  const long size = BIO_get_mem_data(bio.get(), &data);
  return size > 0 ? std::string(data, static_cast<size_t>(size)) : std::string();
}

}  // namespace

absl::StatusOr<CertificateSummary> CheckServerIdentity(absl::string_view key_pem, absl::string_view cert_pem) {
  absl::StatusOr<std::vector<X509Ptr>> chain = ReadCertificates(cert_pem, "TLS certificate");
  if (!chain.ok()) return chain.status();
  ERR_clear_error();
  BioPtr key_bio = MemoryBio(key_pem);
  if (key_bio == nullptr) return absl::ResourceExhaustedError("out of memory reading PEM");
  KeyPtr key(PEM_read_bio_PrivateKey(key_bio.get(), nullptr, NoPassword, nullptr));
  if (key == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat("TLS key: no unencrypted PEM private key (", TakeOpenSslError(), ")"));
  }
  X509* leaf = chain->front().get();
  if (X509_check_private_key(leaf, key.get()) != 1) {
    ERR_clear_error();
    return absl::InvalidArgumentError(
        "TLS key: it does not match the certificate (the first certificate of the chain must be the key's)");
  }
  CertificateSummary summary;
  summary.subject = Rfc2253Name(X509_get_subject_name(leaf));
  summary.chain_length = static_cast<int>(chain->size());
  std::tm not_after{};
  if (ASN1_TIME_to_tm(X509_get0_notAfter(leaf), &not_after) != 1) {
    ERR_clear_error();
    return absl::InvalidArgumentError("TLS certificate: its expiry time cannot be read");
  }
  summary.not_after_unix = static_cast<int64_t>(timegm(&not_after));
  return summary;
}

absl::StatusOr<int> CheckCaCertificates(absl::string_view ca_pem) {
  absl::StatusOr<std::vector<X509Ptr>> certificates = ReadCertificates(ca_pem, "TLS client CA");
  if (!certificates.ok()) return certificates.status();
  return static_cast<int>(certificates->size());
}

}  // namespace scanserve
