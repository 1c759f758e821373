// CredentialReloader: the checks at start, and what a change of each file does while serving (a
// valid one is served, a bad one is refused and the previous credentials stay); TlsKeyMaterial's
// memory files, which are what gRPC reads.
#include "server/credential_reloader.h"

#include <sys/stat.h>

#include <chrono>
#include <ctime>
#include <filesystem>
#include <iterator>
#include <string>
#include <thread>

#include <gtest/gtest.h>

#include "absl/strings/match.h"
#include "engine/common/file_read.h"
#include "server/metrics.h"
#include "tests/engine/test_util/scratch_directory.h"
#include "tests/server/test_certificates.h"

namespace scanserve {
namespace {

using testing_tls::TestCa;

class CredentialFilesTest : public ::testing::Test {
 protected:
  void SetUp() override {
    files_.tls_cert_file = Path("cert.pem");
    files_.tls_key_file = Path("key.pem");
  }

  std::string Path(const std::string& name) const { return scratch_.Path(name); }
  static void Write(const std::string& path, const std::string& contents) {
    testing_files::ScratchDirectory::Write(path, contents);
  }
  void WriteIdentity(const TestCa::Issued& identity) const {
    Write(files_.tls_key_file, identity.key_pem);
    Write(files_.tls_cert_file, identity.cert_pem);
  }
  static std::string Served(const TlsKeyMaterial& tls) { return ReadWholeFile(tls.identity_path()).value_or(""); }

  testing_files::ScratchDirectory scratch_{"credentials"};
  CredentialFiles files_;
  ServerMetrics metrics_{"test"};
  const TestCa ca_{"Test CA"};
};

TEST_F(CredentialFilesTest, StartRefusesFilesItCannotServe) {
  const TestCa::Issued a = ca_.Issue(), b = ca_.Issue();
  // Missing files.
  absl::StatusOr<std::unique_ptr<CredentialReloader>> reloader = CredentialReloader::Create(files_, &metrics_);
  EXPECT_EQ(reloader.status().code(), absl::StatusCode::kNotFound) << reloader.status();
  // A key that is not the certificate's.
  Write(files_.tls_key_file, b.key_pem);
  Write(files_.tls_cert_file, a.cert_pem);
  reloader = CredentialReloader::Create(files_, &metrics_);
  EXPECT_EQ(reloader.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StrContains(reloader.status().message(), "does not match")) << reloader.status();
  EXPECT_TRUE(absl::StrContains(reloader.status().message(), files_.tls_cert_file)) << reloader.status();
  // An unparsable client CA file.
  WriteIdentity(a);
  files_.tls_client_ca_file = Path("ca.pem");
  Write(files_.tls_client_ca_file, "not a certificate");
  reloader = CredentialReloader::Create(files_, &metrics_);
  EXPECT_EQ(reloader.status().code(), absl::StatusCode::kInvalidArgument) << reloader.status();
  // A token file without a token.
  files_ = CredentialFiles{};
  files_.auth_token_file = Path("tokens");
  Write(files_.auth_token_file, "# nothing yet\n\n");
  reloader = CredentialReloader::Create(files_, &metrics_);
  EXPECT_EQ(reloader.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StrContains(reloader.status().message(), "no token")) << reloader.status();
}

TEST_F(CredentialFilesTest, ServesAValidRotationAndRefusesABadOne) {
  const TestCa::Issued a = ca_.Issue(), b = ca_.Issue();
  WriteIdentity(a);
  absl::StatusOr<std::unique_ptr<CredentialReloader>> created = CredentialReloader::Create(files_, &metrics_);
  ASSERT_TRUE(created.ok()) << created.status();
  CredentialReloader& reloader = **created;
  ASSERT_NE(reloader.tls(), nullptr);
  EXPECT_FALSE(reloader.tls()->mutual());
  EXPECT_TRUE(absl::StrContains(Served(*reloader.tls()), a.cert_pem));
  EXPECT_TRUE(absl::StrContains(Served(*reloader.tls()), a.key_pem));
  EXPECT_EQ(metrics_.credential_files_served("tls_identity").Value(), 1);
  EXPECT_EQ(reloader.ReloadChanged(nullptr), 0) << "nothing changed";

  // A rotation caught halfway: the new key with the old certificate. Refused; the old pair stays.
  Write(files_.tls_key_file, b.key_pem);
  EXPECT_EQ(reloader.ReloadChanged(nullptr), 0);
  EXPECT_TRUE(absl::StrContains(Served(*reloader.tls()), a.key_pem));
  EXPECT_EQ(metrics_.credential_reload_errors("tls_identity").Value(), 1);
  EXPECT_EQ(metrics_.credential_files_served("tls_identity").Value(), 0);
  EXPECT_EQ(reloader.ReloadChanged(nullptr), 0);
  EXPECT_EQ(metrics_.credential_reload_errors("tls_identity").Value(), 1) << "one error per change, not per look";

  // The rotation completes: served.
  Write(files_.tls_cert_file, b.cert_pem);
  EXPECT_EQ(reloader.ReloadChanged(nullptr), 1);
  EXPECT_TRUE(absl::StrContains(Served(*reloader.tls()), b.key_pem));
  EXPECT_TRUE(absl::StrContains(Served(*reloader.tls()), b.cert_pem));
  EXPECT_FALSE(absl::StrContains(Served(*reloader.tls()), a.cert_pem));
  EXPECT_EQ(metrics_.credential_reloads("tls_identity").Value(), 1);
  EXPECT_EQ(metrics_.credential_files_served("tls_identity").Value(), 1);

  // A deleted file (as between a delete and a copy) is refused too.
  std::filesystem::remove(files_.tls_cert_file);
  EXPECT_EQ(reloader.ReloadChanged(nullptr), 0);
  EXPECT_TRUE(absl::StrContains(Served(*reloader.tls()), b.cert_pem));
  EXPECT_EQ(metrics_.credential_reload_errors("tls_identity").Value(), 2);
  Write(files_.tls_cert_file, b.cert_pem);
  EXPECT_EQ(reloader.ReloadChanged(nullptr), 1);
  EXPECT_EQ(metrics_.credential_files_served("tls_identity").Value(), 1);

  // The expiry gauge follows the served certificate.
  const TestCa::Issued short_lived = ca_.Issue("localhost", 3600);
  WriteIdentity(short_lived);
  EXPECT_EQ(reloader.ReloadChanged(nullptr), 1);
  EXPECT_NEAR(metrics_.tls_certificate_expiry().Value(), static_cast<double>(std::time(nullptr) + 3600), 60.0);
}

TEST_F(CredentialFilesTest, RotatesClientCas) {
  const TestCa other("Other CA");
  files_.tls_client_ca_file = Path("ca.pem");
  WriteIdentity(ca_.Issue());
  Write(files_.tls_client_ca_file, ca_.pem);
  absl::StatusOr<std::unique_ptr<CredentialReloader>> created = CredentialReloader::Create(files_, &metrics_);
  ASSERT_TRUE(created.ok()) << created.status();
  CredentialReloader& reloader = **created;
  ASSERT_TRUE(reloader.tls()->mutual());
  const std::string ca_path = reloader.tls()->client_ca_path();
  EXPECT_EQ(ReadWholeFile(ca_path).value_or(""), ca_.pem);

  Write(files_.tls_client_ca_file, ca_.pem + other.pem);  // both, while clients move over
  EXPECT_EQ(reloader.ReloadChanged(nullptr), 1);
  EXPECT_EQ(ReadWholeFile(ca_path).value_or(""), ca_.pem + other.pem);
  Write(files_.tls_client_ca_file, "");
  EXPECT_EQ(reloader.ReloadChanged(nullptr), 0);
  EXPECT_EQ(ReadWholeFile(ca_path).value_or(""), ca_.pem + other.pem);
  EXPECT_EQ(metrics_.credential_reload_errors("tls_client_ca").Value(), 1);
}

TEST_F(CredentialFilesTest, RotatesTokensAndNeverDropsThemAll) {
  files_ = CredentialFiles{};
  files_.auth_token_file = Path("tokens");
  Write(files_.auth_token_file, "old-token\n");
  absl::StatusOr<std::unique_ptr<CredentialReloader>> created = CredentialReloader::Create(files_, &metrics_);
  ASSERT_TRUE(created.ok()) << created.status();
  CredentialReloader& reloader = **created;
  EXPECT_EQ(reloader.tls(), nullptr);
  Authenticator auth(reloader.initial_tokens());
  EXPECT_TRUE(auth.CheckAuthorization(true, "Bearer old-token").ok());

  Write(files_.auth_token_file, "old-token\nnew-token\n");
  EXPECT_EQ(reloader.ReloadChanged(&auth), 1);
  EXPECT_TRUE(auth.CheckAuthorization(true, "Bearer old-token").ok());
  EXPECT_TRUE(auth.CheckAuthorization(true, "Bearer new-token").ok());

  // Emptied (a truncate before a write) and then deleted: the tokens in service stay.
  Write(files_.auth_token_file, "");
  EXPECT_EQ(reloader.ReloadChanged(&auth), 0);
  std::filesystem::remove(files_.auth_token_file);
  EXPECT_EQ(reloader.ReloadChanged(&auth), 0);
  EXPECT_TRUE(auth.CheckAuthorization(true, "Bearer old-token").ok());
  EXPECT_EQ(auth.CheckAuthorization(true, "Bearer ").code(), absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(metrics_.credential_reload_errors("auth_tokens").Value(), 2);
  EXPECT_EQ(metrics_.credential_files_served("auth_tokens").Value(), 0);

  Write(files_.auth_token_file, "new-token\n");
  EXPECT_EQ(reloader.ReloadChanged(&auth), 1);
  EXPECT_EQ(auth.CheckAuthorization(true, "Bearer old-token").code(), absl::StatusCode::kPermissionDenied);
  EXPECT_TRUE(auth.CheckAuthorization(true, "Bearer new-token").ok());
  EXPECT_EQ(metrics_.credential_files_served("auth_tokens").Value(), 1);
}

TEST_F(CredentialFilesTest, TheThreadReloadsUntilStopped) {
  files_ = CredentialFiles{};
  files_.auth_token_file = Path("tokens");
  Write(files_.auth_token_file, "first\n");
  absl::StatusOr<std::unique_ptr<CredentialReloader>> created = CredentialReloader::Create(files_, &metrics_);
  ASSERT_TRUE(created.ok()) << created.status();
  Authenticator auth((*created)->initial_tokens());
  (*created)->Start(1, &auth);
  Write(files_.auth_token_file, "second\n");
  for (int i = 0; i < 50 && !auth.CheckAuthorization(true, "Bearer second").ok(); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  EXPECT_TRUE(auth.CheckAuthorization(true, "Bearer second").ok());
  (*created)->Stop();
  Write(files_.auth_token_file, "third\n");
  std::this_thread::sleep_for(std::chrono::milliseconds(1500));
  EXPECT_FALSE(auth.CheckAuthorization(true, "Bearer third").ok()) << "stopped: no more reloads";
}

TEST(TlsKeyMaterialTest, EachVersionIsOneFileWithATimeOfItsOwn) {
  const TestCa ca("Test CA");
  const TestCa::Issued a = ca.Issue(), b = ca.Issue();
  absl::StatusOr<std::unique_ptr<TlsKeyMaterial>> material = TlsKeyMaterial::Create(a.key_pem, a.cert_pem, "");
  ASSERT_TRUE(material.ok()) << material.status();
  EXPECT_FALSE((*material)->mutual());
  EXPECT_EQ((*material)->ReplaceClientCa(ca.pem).code(), absl::StatusCode::kFailedPrecondition);
  const std::string path = (*material)->identity_path();
  EXPECT_EQ(ReadWholeFile(path).value_or(""), a.key_pem + a.cert_pem);
  struct stat before;
  ASSERT_EQ(stat(path.c_str(), &before), 0);
  // gRPC reads the key and the chain from the same path, which now shows the new pair.
  ASSERT_TRUE((*material)->ReplaceIdentity(b.key_pem, b.cert_pem).ok());
  EXPECT_EQ((*material)->identity_path(), path);
  EXPECT_EQ(ReadWholeFile(path).value_or(""), b.key_pem + b.cert_pem);
  struct stat after;
  ASSERT_EQ(stat(path.c_str(), &after), 0);
  EXPECT_NE(after.st_mtime, before.st_mtime) << "gRPC tells a replacement during its read by the time";

  // Replacements close what they replace: a server that rotates for months keeps its descriptors.
  const auto open_descriptors = [] {
    return std::distance(std::filesystem::directory_iterator("/proc/self/fd"), std::filesystem::directory_iterator());
  };
  const auto open_before = open_descriptors();
  for (int i = 0; i < 100; ++i) {
    const TestCa::Issued& next = i % 2 == 0 ? b : a;
    ASSERT_TRUE((*material)->ReplaceIdentity(next.key_pem, next.cert_pem).ok());
  }
  EXPECT_EQ(open_descriptors(), open_before);
  EXPECT_EQ(ReadWholeFile(path).value_or(""), a.key_pem + a.cert_pem);
}

}  // namespace
}  // namespace scanserve
