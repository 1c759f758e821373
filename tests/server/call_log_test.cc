// CallLog: which finished calls get a line and at what level, the slow-call threshold, the rate
// limit (on a test clock), and that lines stay one printable line.
#include "server/call_log.h"

#include <string>

#include "gtest/gtest.h"

namespace scanserve {
namespace {

constexpr char kMethod[] = "/scanserve.v1.ScanService/SearchImages";

std::optional<CallLogLine> Record(CallLog& log, absl::string_view method, absl::string_view peer,
                                  absl::StatusCode code, absl::string_view message, double seconds,
                                  bool streaming = false) {
  FinishedCall call;
  call.method = method;
  call.peer = peer;
  call.code = code;
  call.message = message;
  call.seconds = seconds;
  call.streaming = streaming;
  return log.Record(call);
}

TEST(CallLogTest, ServerFailuresAndOverloadAreLoggedClientMistakesAreNot) {
  CallLog log(CallLogOptions{});
  for (absl::StatusCode code : {absl::StatusCode::kInternal, absl::StatusCode::kUnknown,
                                absl::StatusCode::kDataLoss}) {
    const auto line = Record(log, kMethod, "ipv4:127.0.0.1:5", code, "disk on fire", 0.01);
    ASSERT_TRUE(line.has_value()) << absl::StatusCodeToString(code);
    EXPECT_EQ(line->level, LogLevel::kError);
    EXPECT_NE(line->text.find(absl::StatusCodeToString(code)), std::string::npos) << line->text;
    EXPECT_NE(line->text.find(kMethod), std::string::npos) << line->text;
    EXPECT_NE(line->text.find("ipv4:127.0.0.1:5"), std::string::npos) << line->text;
    EXPECT_NE(line->text.find(": disk on fire"), std::string::npos) << line->text;
  }
  for (absl::StatusCode code : {absl::StatusCode::kResourceExhausted, absl::StatusCode::kUnavailable,
                                absl::StatusCode::kDeadlineExceeded, absl::StatusCode::kUnimplemented}) {
    const auto line = Record(log, kMethod, "p", code, "", 0.01);
    ASSERT_TRUE(line.has_value()) << absl::StatusCodeToString(code);
    EXPECT_EQ(line->level, LogLevel::kWarning);
  }
  for (absl::StatusCode code : {absl::StatusCode::kOk, absl::StatusCode::kInvalidArgument,
                                absl::StatusCode::kNotFound, absl::StatusCode::kUnauthenticated,
                                absl::StatusCode::kPermissionDenied, absl::StatusCode::kCancelled,
                                absl::StatusCode::kFailedPrecondition}) {
    EXPECT_FALSE(Record(log, kMethod, "p", code, "x", 0.01).has_value()) << absl::StatusCodeToString(code);
  }
}

TEST(CallLogTest, SlowCallsAreWarningsUnlessTheThresholdIsZero) {
  CallLog log(CallLogOptions{.slow_call_seconds = 0.5});
  EXPECT_FALSE(Record(log, kMethod, "p", absl::StatusCode::kOk, "", 0.499).has_value());
  const auto slow = Record(log, kMethod, "p", absl::StatusCode::kOk, "", 0.75);
  ASSERT_TRUE(slow.has_value());
  EXPECT_EQ(slow->level, LogLevel::kWarning);
  EXPECT_NE(slow->text.find("OK in 750 ms (slow)"), std::string::npos) << slow->text;
  // A slow client mistake is logged for its slowness.
  EXPECT_TRUE(Record(log, kMethod, "p", absl::StatusCode::kNotFound, "", 2.0).has_value());

  // A stream lasts as long as its client streams: only its failures count.
  EXPECT_FALSE(Record(log, "/scanserve.v1.ScanService/Ingest", "p", absl::StatusCode::kOk, "", 60.0,
                          /*streaming=*/true)
                   .has_value());
  EXPECT_TRUE(Record(log, "/scanserve.v1.ScanService/Ingest", "p", absl::StatusCode::kInternal, "", 60.0,
                         /*streaming=*/true)
                  .has_value());

  CallLog never(CallLogOptions{.slow_call_seconds = 0});
  EXPECT_FALSE(Record(never, kMethod, "p", absl::StatusCode::kOk, "", 1e6).has_value());
  EXPECT_TRUE(Record(never, kMethod, "p", absl::StatusCode::kInternal, "", 0).has_value());
}

TEST(CallLogTest, RateLimitCountsWhatItSuppresses) {
  double now = 100;
  CallLog log(CallLogOptions{.slow_call_seconds = 1, .max_lines_per_second = 2}, [&now] { return now; });
  const auto internal = [&] { return Record(log, kMethod, "p", absl::StatusCode::kInternal, "m", 0); };
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
  const auto line = Record(log, kMethod, "", absl::StatusCode::kInternal,
                               "first\nsecond\rthird\x01" + std::string(2000, 'x'), 0);
  ASSERT_TRUE(line.has_value());
  EXPECT_EQ(line->text.find('\n'), std::string::npos);
  EXPECT_EQ(line->text.find('\r'), std::string::npos);
  EXPECT_NE(line->text.find("first?second?third?"), std::string::npos) << line->text;
  EXPECT_LT(line->text.size(), 700u);
  EXPECT_EQ(line->text.substr(line->text.size() - 3), "...");
  EXPECT_NE(line->text.find("from ?"), std::string::npos) << "an unknown peer: " << line->text;
}

// The request id ties a client's error report to the server's line: in the text and as a field.
TEST(CallLogTest, LinesCarryTheRequestId) {
  CallLog log(CallLogOptions{});
  FinishedCall call;
  call.method = kMethod;
  call.peer = "p";
  call.request_id = "4bf92f3577b34da6";
  call.code = absl::StatusCode::kInternal;
  call.message = "m";
  const auto line = log.Record(call);
  ASSERT_TRUE(line.has_value());
  EXPECT_NE(line->text.find(" from p request 4bf92f3577b34da6: m"), std::string::npos) << line->text;
  bool has_field = false;
  for (const LogField& field : line->fields) has_field = has_field || (field.key == "request.id" && field.text == "4bf92f3577b34da6");
  EXPECT_TRUE(has_field);
  call.request_id = "";
  const auto without = log.Record(call);
  ASSERT_TRUE(without.has_value());
  EXPECT_EQ(without->text.find("request"), std::string::npos) << without->text;
  for (const LogField& field : without->fields) EXPECT_NE(field.key, "request.id");
}

TEST(CallLogTest, OptionsAreValidated) {
  EXPECT_TRUE(ValidateCallLogOptions({}).ok());
  EXPECT_EQ(ValidateCallLogOptions({.slow_call_seconds = -1}).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ValidateCallLogOptions({.max_lines_per_second = 0}).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ValidateCallLogOptions({.slow_call_seconds = 1.0 / 0.0}).code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace scanserve
