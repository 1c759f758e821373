// RequestIdFor: a client's x-request-id is kept when it is a short printable token, else the
// trace id of a valid W3C traceparent, else a fresh id; fresh ids differ.
#include "server/request_id.h"

#include <set>
#include <string>

#include "gtest/gtest.h"

namespace scanserve {
namespace {

constexpr char kTraceparent[] = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

bool IsFreshId(const std::string& id) {
  return id.size() == 16 && id.find_first_not_of("0123456789abcdef") == std::string::npos;
}

TEST(RequestIdTest, KeepsAClientsPrintableId) {
  EXPECT_EQ(RequestIdFor("client-7/retry:2", ""), "client-7/retry:2");
  EXPECT_EQ(RequestIdFor("f47ac10b-58cc-4372-a567-0e02b2c3d479", kTraceparent),
            "f47ac10b-58cc-4372-a567-0e02b2c3d479")
      << "x-request-id wins over traceparent";
  EXPECT_EQ(RequestIdFor(std::string(kMaxRequestIdBytes, 'a'), ""), std::string(kMaxRequestIdBytes, 'a'));
}

TEST(RequestIdTest, ReplacesAnIdThatCouldBreakALogLine) {
  for (const std::string& bad : {std::string("two words"), std::string("line\nbreak"), std::string("quote\""),
                                std::string("caf\xc3\xa9"), std::string(kMaxRequestIdBytes + 1, 'a')}) {
    EXPECT_TRUE(IsFreshId(RequestIdFor(bad, ""))) << bad;
  }
  EXPECT_EQ(RequestIdFor("two words", kTraceparent), "4bf92f3577b34da6a3ce929d0e0e4736")
      << "an unusable x-request-id falls back to the trace id";
}

TEST(RequestIdTest, TakesTheTraceIdOfAValidTraceparent) {
  EXPECT_EQ(RequestIdFor("", kTraceparent), "4bf92f3577b34da6a3ce929d0e0e4736");
  // A later version may append fields; version 00 may not.
  EXPECT_EQ(RequestIdFor("", std::string("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra")),
            "4bf92f3577b34da6a3ce929d0e0e4736");
  for (const char* bad : {"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
                          "00-00000000000000000000000000000000-00f067aa0ba902b7-01",  // zero trace id
                          "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",  // zero parent id
                          "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",  // forbidden version
                          "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",  // upper case
                          "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",     // short
                          "00_4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7_01", "garbage"}) {
    EXPECT_TRUE(IsFreshId(RequestIdFor("", bad))) << bad;
  }
}

TEST(RequestIdTest, FreshIdsDiffer) {
  std::set<std::string> ids;
  for (int i = 0; i < 1000; ++i) {
    const std::string id = RequestIdFor("", "");
    EXPECT_TRUE(IsFreshId(id)) << id;
    ids.insert(id);
  }
  EXPECT_EQ(ids.size(), 1000u);
}

}  // namespace
}  // namespace scanserve
