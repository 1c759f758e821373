// Authenticator: bearer tokens, several at once, replaced while serving; ParseTokenFile.
#include "server/auth.h"

#include <gtest/gtest.h>

namespace scanserve {
namespace {

TEST(AuthenticatorTest, BearerTokens) {
  const Authenticator off("");
  EXPECT_FALSE(off.enabled());
  EXPECT_TRUE(off.CheckAuthorization(false, "").ok());
  const Authenticator auth("s3cret");
  EXPECT_TRUE(auth.enabled());
  EXPECT_EQ(auth.CheckAuthorization(false, "").code(), absl::StatusCode::kUnauthenticated);
  EXPECT_EQ(auth.CheckAuthorization(true, "Basic abc").code(), absl::StatusCode::kUnauthenticated);
  EXPECT_EQ(auth.CheckAuthorization(true, "Bearer wrong").code(), absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(auth.CheckAuthorization(true, "Bearer s3cre").code(), absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(auth.CheckAuthorization(true, "Bearer s3cret!").code(), absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(auth.CheckAuthorization(true, "Bearer ").code(), absl::StatusCode::kPermissionDenied);
  EXPECT_TRUE(auth.CheckAuthorization(true, "Bearer s3cret").ok());
  EXPECT_TRUE(auth.CheckAuthorization(true, "bearer s3cret").ok());
}

TEST(AuthenticatorTest, AcceptsEveryTokenItHoldsAndTheReplacementsOnly) {
  Authenticator auth(std::vector<std::string>{"old-token", "new-token"});
  EXPECT_TRUE(auth.CheckAuthorization(true, "Bearer old-token").ok());
  EXPECT_TRUE(auth.CheckAuthorization(true, "Bearer new-token").ok());
  EXPECT_EQ(auth.CheckAuthorization(true, "Bearer other").code(), absl::StatusCode::kPermissionDenied);

  auth.SetTokens({"new-token"});  // the rotation's last step
  EXPECT_EQ(auth.CheckAuthorization(true, "Bearer old-token").code(), absl::StatusCode::kPermissionDenied);
  EXPECT_TRUE(auth.CheckAuthorization(true, "Bearer new-token").ok());

  // No tokens must never open the door: the previous ones stay.
  auth.SetTokens({});
  auth.SetTokens({""});
  EXPECT_TRUE(auth.enabled());
  EXPECT_EQ(auth.CheckAuthorization(true, "Bearer ").code(), absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(auth.CheckAuthorization(false, "").code(), absl::StatusCode::kUnauthenticated);
  EXPECT_TRUE(auth.CheckAuthorization(true, "Bearer new-token").ok());

  // Nor can tokens turn on a server started without authentication.
  Authenticator off(std::vector<std::string>{});
  off.SetTokens({"late"});
  EXPECT_FALSE(off.enabled());
  EXPECT_TRUE(off.CheckAuthorization(false, "").ok());
}

TEST(ParseTokenFileTest, OneTokenPerLine) {
  absl::StatusOr<std::vector<std::string>> tokens = ParseTokenFile("  s3cret \n");
  ASSERT_TRUE(tokens.ok()) << tokens.status();
  EXPECT_EQ(*tokens, std::vector<std::string>({"s3cret"}));
  tokens = ParseTokenFile("# rotated 2026-11-30\nnew-token\r\n\n  old-token\n");
  ASSERT_TRUE(tokens.ok()) << tokens.status();
  EXPECT_EQ(*tokens, std::vector<std::string>({"new-token", "old-token"}));
  for (const char* empty : {"", "\n\n", "  \t\n", "# only a comment\n"}) {
    EXPECT_EQ(ParseTokenFile(empty).status().code(), absl::StatusCode::kInvalidArgument) << empty;
  }
}

}  // namespace
}  // namespace scanserve
