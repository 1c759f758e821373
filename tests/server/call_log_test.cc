// CallLog: which finished calls get a line and at what level, the slow-call threshold, the rate
// limit (on a test clock), and that lines stay one printable line.
#include "server/call_log.h"

#include <string>

#include "gtest/gtest.h"

namespace scanserve {
namespace {

constexpr char kMethod[] = "/scanserve.v1.ScanService/SearchImages";

TEST(CallLogTest, ServerFailuresAndOverloadAreLoggedClientMistakesAreNot) {
  CallLog log(CallLogOptions{});
  for (absl::StatusCode code : {absl::StatusCode::kInternal, absl::StatusCode::kUnknown,
                                absl::StatusCode::kDataLoss}) {
    const auto line = log.Record(kMethod, "ipv4:127.0.0.1:5", code, "disk on fire", 0.01);
    ASSERT_TRUE(line.has_value()) << absl::StatusCodeToString(code);
    EXPECT_EQ(line->level, LogLevel::kError);
    EXPECT_NE(line->text.find(absl::StatusCodeToString(code)), std::string::npos) << line->text;
    EXPECT_NE(line->text.find(kMethod), std::string::npos) << line->text;
    EXPECT_NE(line->text.find("ipv4:127.0.0.1:5"), std::string::npos) << line->text;
    EXPECT_NE(line->text.find(": disk on fire"), std::string::npos) << line->text;
  }
  for (absl::StatusCode code : {absl::StatusCode::kResourceExhausted, absl::StatusCode::kUnavailable,
                                absl::StatusCode::kDeadlineExceeded, absl::StatusCode::kUnimplemented}) {
    const auto line = log.Record(kMethod, "p", code, "", 0.01);
    ASSERT_TRUE(line.has_value()) << absl::StatusCodeToString(code);
    EXPECT_EQ(line->level, LogLevel::kWarning);
  }
  for (absl::StatusCode code : {absl::StatusCode::kOk, absl::StatusCode::kInvalidArgument,
                                absl::StatusCode::kNotFound, absl::StatusCode::kUnauthenticated,
                                absl::StatusCode::kPermissionDenied, absl::StatusCode::kCancelled,
                                absl::StatusCode::kFailedPrecondition}) {
    EXPECT_FALSE(log.Record(kMethod, "p", code, "x", 0.01).has_value()) << absl::StatusCodeToString(code);
  }
}

TEST(CallLogTest, SlowCallsAreWarningsUnlessTheThresholdIsZero) {
  CallLog log(CallLogOptions{.slow_call_seconds = 0.5});
  EXPECT_FALSE(log.Record(kMethod, "p", absl::StatusCode::kOk, "", 0.499).has_value());
  const auto slow = log.Record(kMethod, "p", absl::StatusCode::kOk, "", 0.75);
  ASSERT_TRUE(slow.has_value());
  EXPECT_EQ(slow->level, LogLevel::kWarning);
  EXPECT_NE(slow->text.find("OK in 750 ms (slow)"), std::string::npos) << slow->text;
  // A slow client mistake is logged for its slowness.
  EXPECT_TRUE(log.Record(kMethod, "p", absl::StatusCode::kNotFound, "", 2.0).has_value());

  // A stream lasts as long as its client streams: only its failures count.
  EXPECT_FALSE(log.Record("/scanserve.v1.ScanService/Ingest", "p", absl::StatusCode::kOk, "", 60.0,
                          /*streaming=*/true)
                   .has_value());
  EXPECT_TRUE(log.Record("/scanserve.v1.ScanService/Ingest", "p", absl::StatusCode::kInternal, "", 60.0,
                         /*streaming=*/true)
                  .has_value());

  CallLog never(CallLogOptions{.slow_call_seconds = 0});
  EXPECT_FALSE(never.Record(kMethod, "p", absl::StatusCode::kOk, "", 1e6).has_value());
  EXPECT_TRUE(never.Record(kMethod, "p", absl::StatusCode::kInternal, "", 0).has_value());
}

TEST(CallLogTest, RateLimitCountsWhatItSuppresses) {
  double now = 100;
  CallLog log(CallLogOptions{.slow_call_seconds = 1, .max_lines_per_second = 2}, [&now] { return now; });
  const auto internal = [&] { return log.Record(kMethod, "p", absl::StatusCode::kInternal, "m", 0); };
  EXPECT_TRUE(internal().has_value());
  EXPECT_TRUE(internal().has_value());  // a burst of two
  for (int i = 0; i < 5; ++i) EXPECT_FALSE(internal().has_value());
  EXPECT_EQ(log.suppressed_total(), 5);
  now += 0.5;  // one token back
  const auto line = internal();
  ASSERT_TRUE(line.has_value());
  EXPECT_NE(line->text.find("[5 call log lines suppressed before this]"), std::string::npos) << line->text;
  EXPECT_FALSE(internal().has_value());
  now += 100;  // the bucket refills to its size, no more
  const auto next = internal();
  ASSERT_TRUE(next.has_value());
  EXPECT_NE(next->text.find("[1 call log lines suppressed"), std::string::npos) << next->text;
  const auto clean = internal();
  ASSERT_TRUE(clean.has_value());
  EXPECT_EQ(clean->text.find("suppressed"), std::string::npos) << "counted once: " << clean->text;
  EXPECT_FALSE(internal().has_value());
  EXPECT_EQ(log.suppressed_total(), 7);
}

TEST(CallLogTest, MessagesStayOnePrintableLine) {
  CallLog log(CallLogOptions{});
  const auto line = log.Record(kMethod, "", absl::StatusCode::kInternal,
                               "first\nsecond\rthird\x01" + std::string(2000, 'x'), 0);
  ASSERT_TRUE(line.has_value());
  EXPECT_EQ(line->text.find('\n'), std::string::npos);
  EXPECT_EQ(line->text.find('\r'), std::string::npos);
  EXPECT_NE(line->text.find("first?second?third?"), std::string::npos) << line->text;
  EXPECT_LT(line->text.size(), 700u);
  EXPECT_EQ(line->text.substr(line->text.size() - 3), "...");
  EXPECT_NE(line->text.find("from ?"), std::string::npos) << "an unknown peer: " << line->text;
}

TEST(CallLogTest, OptionsAreValidated) {
  EXPECT_TRUE(ValidateCallLogOptions({}).ok());
  EXPECT_EQ(ValidateCallLogOptions({.slow_call_seconds = -1}).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ValidateCallLogOptions({.max_lines_per_second = 0}).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ValidateCallLogOptions({.slow_call_seconds = 1.0 / 0.0}).code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace scanserve
