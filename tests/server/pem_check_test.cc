// CheckServerIdentity / CheckCaCertificates on keys and certificates made in the test.
#include "server/pem_check.h"

#include <ctime>

#include <gtest/gtest.h>

#include "absl/strings/match.h"
#include "tests/server/test_certificates.h"

namespace scanserve {
namespace {

using testing_tls::TestCa;

TEST(PemCheckTest, AcceptsAKeyAndItsCertificate) {
  const TestCa ca("Test CA");
  const TestCa::Issued server = ca.Issue("localhost", 3 * 24 * 3600);
  absl::StatusOr<CertificateSummary> summary = CheckServerIdentity(server.key_pem, server.cert_pem);
  ASSERT_TRUE(summary.ok()) << summary.status();
  EXPECT_EQ(summary->subject, "CN=localhost");
  EXPECT_EQ(summary->chain_length, 1);
  EXPECT_NEAR(static_cast<double>(summary->not_after_unix), static_cast<double>(std::time(nullptr) + 3 * 24 * 3600),
              60.0);

  // A full chain: the leaf first, then its CA.
  summary = CheckServerIdentity(server.key_pem, server.cert_pem + ca.pem);
  ASSERT_TRUE(summary.ok()) << summary.status();
  EXPECT_EQ(summary->chain_length, 2);
  EXPECT_EQ(summary->subject, "CN=localhost");
}

TEST(PemCheckTest, RefusesAKeyThatIsNotTheLeafs) {
  const TestCa ca("Test CA");
  const TestCa::Issued a = ca.Issue();
  const TestCa::Issued b = ca.Issue();
  absl::StatusOr<CertificateSummary> summary = CheckServerIdentity(b.key_pem, a.cert_pem);
  EXPECT_EQ(summary.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StrContains(summary.status().message(), "does not match")) << summary.status();
  // The CA first and the leaf second is the wrong order: the key is not the first certificate's.
  summary = CheckServerIdentity(a.key_pem, ca.pem + a.cert_pem);
  EXPECT_EQ(summary.status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(PemCheckTest, RefusesWhatIsNotACertificateOrKey) {
  const TestCa ca("Test CA");
  const TestCa::Issued server = ca.Issue();
  for (const std::string& cert : {std::string(), std::string("not a certificate\n"), server.key_pem,
                                  // a block cut short: its end line is missing
                                  server.cert_pem.substr(0, server.cert_pem.size() / 2)}) {
    absl::StatusOr<CertificateSummary> summary = CheckServerIdentity(server.key_pem, cert);
    EXPECT_EQ(summary.status().code(), absl::StatusCode::kInvalidArgument) << cert;
    EXPECT_TRUE(absl::StartsWith(summary.status().message(), "TLS certificate:")) << summary.status();
  }
  for (const std::string& key : {std::string(), std::string("junk"), server.cert_pem}) {
    absl::StatusOr<CertificateSummary> summary = CheckServerIdentity(key, server.cert_pem);
    EXPECT_EQ(summary.status().code(), absl::StatusCode::kInvalidArgument) << key;
    EXPECT_TRUE(absl::StartsWith(summary.status().message(), "TLS key:")) << summary.status();
  }
}

TEST(PemCheckTest, RefusesAnEncryptedKeyWithoutPrompting) {
  testing_tls::Key key = testing_tls::NewKey();
  testing_tls::Cert cert = testing_tls::NewCertificate(key.get(), "localhost", key.get(), nullptr, false);
  const std::string encrypted = testing_tls::KeyPem(key.get(), "password");
  ASSERT_TRUE(absl::StrContains(encrypted, "ENCRYPTED"));
  absl::StatusOr<CertificateSummary> summary = CheckServerIdentity(encrypted, testing_tls::CertPem(cert.get()));
  EXPECT_EQ(summary.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(CheckServerIdentity(testing_tls::KeyPem(key.get()), testing_tls::CertPem(cert.get())).ok());
}

TEST(PemCheckTest, ReadsTheExpiryOfAnExpiredCertificate) {
  const TestCa ca("Test CA");
  const TestCa::Issued expired = ca.Issue("localhost", -3600);
  absl::StatusOr<CertificateSummary> summary = CheckServerIdentity(expired.key_pem, expired.cert_pem);
  ASSERT_TRUE(summary.ok()) << summary.status();  // served, with a warning: the check is about the pair
  EXPECT_LT(summary->not_after_unix, static_cast<int64_t>(std::time(nullptr)));
}

TEST(PemCheckTest, CountsCaCertificates) {
  const TestCa first("CA one"), second("CA two");
  EXPECT_EQ(CheckCaCertificates(first.pem).value_or(-1), 1);
  EXPECT_EQ(CheckCaCertificates(first.pem + second.pem).value_or(-1), 2);
  EXPECT_EQ(CheckCaCertificates("").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(CheckCaCertificates("garbage").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(CheckCaCertificates(first.pem + second.pem.substr(0, 100)).status().code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace scanserve
