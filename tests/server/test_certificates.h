// Keys and certificates for the TLS tests, made with OpenSSL in the test process (EC P-256: fast
// to generate): a CA, server and client certificates it signs, PEM text of each.
#pragma once

#include <memory>
#include <string>

#include <openssl/bio.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

namespace scanserve::testing_tls {

struct KeyFree {
  void operator()(EVP_PKEY* key) const { EVP_PKEY_free(key); }
};
struct CertFree {
  void operator()(X509* cert) const { X509_free(cert); }
};
using Key = std::unique_ptr<EVP_PKEY, KeyFree>;
using Cert = std::unique_ptr<X509, CertFree>;

inline Key NewKey() { return Key(EVP_EC_gen("P-256")); }

// A certificate for `key` named `common_name`, signed by `issuer_key` (`issuer` null: self-signed),
// valid from an hour ago for `valid_seconds` (negative: expired that long ago). CAs get
// basicConstraints CA:TRUE; the others subjectAltName DNS:localhost.
inline Cert NewCertificate(EVP_PKEY* key, const std::string& common_name, EVP_PKEY* issuer_key, X509* issuer,
                           bool is_ca, long valid_seconds = 24 * 3600) {
  static long serial = 1;
  Cert cert(X509_new());
  X509_set_version(cert.get(), 2);
  ASN1_INTEGER_set(X509_get_serialNumber(cert.get()), serial++);
  X509_gmtime_adj(X509_getm_notBefore(cert.get()), valid_seconds < 0 ? 2 * valid_seconds : -3600);
  X509_gmtime_adj(X509_getm_notAfter(cert.get()), valid_seconds);
  X509_set_pubkey(cert.get(), key);
  X509_NAME* name = X509_get_subject_name(cert.get());
  X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, reinterpret_cast<const unsigned char*>(common_name.c_str()),
                             -1, -1, 0);
  X509_set_issuer_name(cert.get(), issuer != nullptr ? X509_get_subject_name(issuer) : name);
  X509V3_CTX context;
  X509V3_set_ctx_nodb(&context);
  X509V3_set_ctx(&context, issuer != nullptr ? issuer : cert.get(), cert.get(), nullptr, nullptr, 0);
  X509_EXTENSION* extension =
      is_ca ? X509V3_EXT_conf_nid(nullptr, &context, NID_basic_constraints, "critical,CA:TRUE")
            : X509V3_EXT_conf_nid(nullptr, &context, NID_subject_alt_name, "DNS:localhost");
  X509_add_ext(cert.get(), extension, -1);
  X509_EXTENSION_free(extension);
  X509_sign(cert.get(), issuer_key, EVP_sha256());
  return cert;
}

inline std::string ReadMemoryBio(BIO* bio) {
  char* data = nullptr;
  const long size = BIO_get_mem_data(bio, &data);
  std::string text(data, static_cast<size_t>(size));
  BIO_free(bio);
  return text;
}

inline std::string KeyPem(EVP_PKEY* key, const char* password = nullptr) {
  BIO* bio = BIO_new(BIO_s_mem());
  if (password == nullptr) {
    PEM_write_bio_PrivateKey(bio, key, nullptr, nullptr, 0, nullptr, nullptr);
  } else {
    PEM_write_bio_PrivateKey(bio, key, EVP_aes_128_cbc(), nullptr, 0, nullptr, const_cast<char*>(password));
  }
  return ReadMemoryBio(bio);
}

inline std::string CertPem(X509* cert) {
  BIO* bio = BIO_new(BIO_s_mem());
  PEM_write_bio_X509(bio, cert);
  return ReadMemoryBio(bio);
}

// A CA and what it signs, as PEM.
struct TestCa {
  Key key = NewKey();
  Cert cert;
  std::string pem;

  explicit TestCa(const std::string& name) : cert(NewCertificate(key.get(), name, key.get(), nullptr, true)) {
    pem = CertPem(cert.get());
  }

  struct Issued {
    std::string key_pem;
    std::string cert_pem;
  };
  // A certificate for localhost (server or client) signed by this CA.
  Issued Issue(const std::string& common_name = "localhost", long valid_seconds = 24 * 3600) const {
    Key leaf_key = NewKey();
    Cert leaf = NewCertificate(leaf_key.get(), common_name, key.get(), cert.get(), false, valid_seconds);
    return {KeyPem(leaf_key.get()), CertPem(leaf.get())};
  }
};

}  // namespace scanserve::testing_tls
