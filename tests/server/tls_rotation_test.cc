// Rotating the server's certificate, the client CAs and the bearer tokens while it serves, over
// real TLS handshakes on loopback (fake engine): new connections get the new credentials within
// seconds, connections already open keep working, and a half-done rotation changes nothing.
#include <chrono>
#include <functional>
#include <string>
#include <thread>

#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include "absl/strings/str_cat.h"
#include "scanserve/v1/scanserve.grpc.pb.h"
#include "server/metrics.h"
#include "server/server.h"
#include "tests/engine/test_util/scratch_directory.h"
#include "tests/server/eventually.h"
#include "tests/server/fake_engine.h"
#include "tests/server/test_certificates.h"

namespace scanserve {
namespace {

using testing_tls::TestCa;

class TlsRotationTest : public ::testing::Test {
 protected:
  void SetUp() override {
    options_.listen_address = "127.0.0.1:0";
    options_.metrics_address = "";
    options_.tls.cert_file = Path("cert.pem");
    options_.tls.key_file = Path("key.pem");
    options_.credential_reload_s = 1;
  }

  void TearDown() override {
    if (server_ != nullptr) server_->Stop(std::chrono::system_clock::now() + std::chrono::seconds(5));
  }

  std::string Path(const std::string& name) const { return scratch_.Path(name); }
  static void Write(const std::string& path, const std::string& contents) {
    testing_files::ScratchDirectory::Write(path, contents);
  }

  void WriteIdentity(const TestCa::Issued& identity) const {
    Write(options_.tls.key_file, identity.key_pem);
    Write(options_.tls.cert_file, identity.cert_pem);
  }

  void Start() {
    absl::StatusOr<std::unique_ptr<Server>> server =
        Server::Create(options_, std::make_unique<testing_fake::FakeRetrievalEngine>());
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
    ASSERT_TRUE(server_->Start().ok());
  }

  // A channel of its own (no connection shared with another channel), trusting `root_pem`, with
  // a client certificate when given.
  std::shared_ptr<grpc::Channel> Channel(const std::string& root_pem, const TestCa::Issued* client = nullptr) {
    grpc::SslCredentialsOptions ssl;
    ssl.pem_root_certs = root_pem;
    if (client != nullptr) {
      ssl.pem_private_key = client->key_pem;
      ssl.pem_cert_chain = client->cert_pem;
    }
    grpc::ChannelArguments arguments;
    arguments.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
    return grpc::CreateCustomChannel(absl::StrCat("localhost:", server_->port()), grpc::SslCredentials(ssl),
                                     arguments);
  }

  static grpc::Status Stats(const std::shared_ptr<grpc::Channel>& channel, const std::string& token = "") {
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
    if (!token.empty()) context.AddMetadata("authorization", "Bearer " + token);
    v1::GetStatsResponse response;
    return v1::ScanService::NewStub(channel)->GetStats(&context, v1::GetStatsRequest(), &response);
  }

  // A reload round plus gRPC's certificate watcher take about 2 s.
  static bool Eventually(const std::function<bool()>& done) {
    return testing_wait::Eventually(done, std::chrono::seconds(15), std::chrono::milliseconds(200));
  }

  testing_files::ScratchDirectory scratch_{"tls-rotation"};
  ServerOptions options_;
  std::unique_ptr<Server> server_;
  const TestCa old_ca_{"Old CA"};
  const TestCa new_ca_{"New CA"};
};

TEST_F(TlsRotationTest, TheServerCertificateRotatesWithoutARestart) {
  const TestCa::Issued old_identity = old_ca_.Issue(), new_identity = new_ca_.Issue();
  WriteIdentity(old_identity);
  Start();
  std::shared_ptr<grpc::Channel> open_before = Channel(old_ca_.pem);
  ASSERT_TRUE(Stats(open_before).ok());
  EXPECT_EQ(Stats(Channel(new_ca_.pem)).error_code(), grpc::StatusCode::UNAVAILABLE) << "not trusted yet";

  WriteIdentity(new_identity);
  EXPECT_TRUE(Eventually([&] { return Stats(Channel(new_ca_.pem)).ok(); }));
  EXPECT_EQ(Stats(Channel(old_ca_.pem)).error_code(), grpc::StatusCode::UNAVAILABLE) << "new connections: new pair";
  EXPECT_TRUE(Stats(open_before).ok()) << "an open connection keeps its session";
  EXPECT_EQ(server_->metrics().credential_reloads("tls_identity").Value(), 1);

  // Half a rotation: a key that is not the certificate's. gRPC would fail every handshake with it;
  // the server keeps serving the last good pair, and says so in its metrics.
  Write(options_.tls.key_file, old_identity.key_pem);
  EXPECT_TRUE(Eventually([&] { return server_->metrics().credential_files_served("tls_identity").Value() == 0; }));
  std::this_thread::sleep_for(std::chrono::milliseconds(2500));  // gRPC's watcher would have read it by now
  EXPECT_TRUE(Stats(Channel(new_ca_.pem)).ok());
  EXPECT_EQ(server_->metrics().credential_reload_errors("tls_identity").Value(), 1);

  // Garbage, then the files fixed.
  Write(options_.tls.cert_file, "-----BEGIN CERTIFICATE-----\nnot base64\n");
  std::this_thread::sleep_for(std::chrono::milliseconds(2500));
  EXPECT_TRUE(Stats(Channel(new_ca_.pem)).ok());
  WriteIdentity(old_identity);
  EXPECT_TRUE(Eventually([&] { return Stats(Channel(old_ca_.pem)).ok(); }));
  EXPECT_EQ(server_->metrics().credential_files_served("tls_identity").Value(), 1);
}

TEST_F(TlsRotationTest, ClientCasAndTokensRotateWithoutARestart) {
  options_.tls.client_ca_file = Path("client-ca.pem");
  options_.auth_token_file = Path("tokens");
  WriteIdentity(old_ca_.Issue());
  Write(options_.tls.client_ca_file, old_ca_.pem);
  Write(options_.auth_token_file, "old-token\n");
  Start();
  const TestCa::Issued old_client = old_ca_.Issue("old client"), new_client = new_ca_.Issue("new client");
  std::shared_ptr<grpc::Channel> old_client_channel = Channel(old_ca_.pem, &old_client);
  ASSERT_TRUE(Stats(old_client_channel, "old-token").ok());
  EXPECT_EQ(Stats(Channel(old_ca_.pem, &new_client), "old-token").error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_EQ(Stats(Channel(old_ca_.pem), "old-token").error_code(), grpc::StatusCode::UNAVAILABLE)
      << "mutual TLS: no client certificate, no connection";

  // Overlap: both CAs and both tokens are accepted while clients move over.
  Write(options_.tls.client_ca_file, old_ca_.pem + new_ca_.pem);
  Write(options_.auth_token_file, "old-token\nnew-token\n");
  EXPECT_TRUE(Eventually([&] { return Stats(Channel(old_ca_.pem, &new_client), "new-token").ok(); }));
  EXPECT_TRUE(Stats(Channel(old_ca_.pem, &old_client), "old-token").ok());

  // The old ones retired.
  Write(options_.tls.client_ca_file, new_ca_.pem);
  Write(options_.auth_token_file, "new-token\n");
  EXPECT_TRUE(Eventually([&] {
    return Stats(Channel(old_ca_.pem, &old_client), "new-token").error_code() == grpc::StatusCode::UNAVAILABLE;
  }));
  std::shared_ptr<grpc::Channel> new_client_channel = Channel(old_ca_.pem, &new_client);
  EXPECT_TRUE(Eventually([&] {
    return Stats(new_client_channel, "old-token").error_code() == grpc::StatusCode::PERMISSION_DENIED;
  }));
  EXPECT_TRUE(Stats(new_client_channel, "new-token").ok());

  // An emptied token file does not open the door.
  Write(options_.auth_token_file, "\n");
  EXPECT_TRUE(Eventually([&] { return server_->metrics().credential_files_served("auth_tokens").Value() == 0; }));
  EXPECT_EQ(Stats(new_client_channel).error_code(), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_TRUE(Stats(new_client_channel, "new-token").ok());
}

TEST_F(TlsRotationTest, WithReloadingOffTheFilesAreReadOnce) {
  const TestCa::Issued old_identity = old_ca_.Issue(), new_identity = new_ca_.Issue();
  options_.credential_reload_s = 0;
  WriteIdentity(old_identity);
  Start();
  ASSERT_TRUE(Stats(Channel(old_ca_.pem)).ok());
  WriteIdentity(new_identity);
  std::this_thread::sleep_for(std::chrono::milliseconds(2500));
  EXPECT_TRUE(Stats(Channel(old_ca_.pem)).ok());
  EXPECT_EQ(Stats(Channel(new_ca_.pem)).error_code(), grpc::StatusCode::UNAVAILABLE);
}

TEST_F(TlsRotationTest, StartRefusesAKeyThatIsNotTheCertificates) {
  Write(options_.tls.key_file, old_ca_.Issue().key_pem);
  Write(options_.tls.cert_file, old_ca_.Issue().cert_pem);
  absl::StatusOr<std::unique_ptr<Server>> server =
      Server::Create(options_, std::make_unique<testing_fake::FakeRetrievalEngine>());
  EXPECT_EQ(server.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(server.status().message().find("does not match"), absl::string_view::npos) << server.status();
}

}  // namespace
}  // namespace scanserve
