// The log line formats: text as before, JSON lines that parse whatever the message holds.
#include "server/log.h"

#include <cmath>
#include <string>

#include <grpc/grpc.h>
#include <grpc/support/log.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "absl/strings/str_split.h"
#include "engine/common/engine_log.h"
#include "scanserve/v1/scanserve.pb.h"
#include "server/call_log.h"

namespace scanserve {
namespace {

// 2026-11-30T19:24:33.630Z
const std::chrono::system_clock::time_point kWhen =
    std::chrono::system_clock::time_point(std::chrono::milliseconds(1796066673630LL));

TEST(LogTest, TextLinesKeepTheirFormat) {
  EXPECT_EQ(FormatLogLine(LogFormat::kText, LogLevel::kWarning, "disk low", {LogField::Number("free", 3)}, kWhen),
            "W 2026-11-30T19:24:33.630Z scanserve: disk low");
  EXPECT_EQ(FormatLogLine(LogFormat::kText, LogLevel::kInfo, "x", {}, kWhen), "I 2026-11-30T19:24:33.630Z scanserve: x");
}

TEST(LogTest, JsonLinesCarryTimeLevelMessageAndFields) {
  const std::string line = FormatLogLine(
      LogFormat::kJson, LogLevel::kError, "store write failed",
      {LogField::Text("path", "/var/lib/scanserve"), LogField::Number("bytes", 4096), LogField::Number("ms", 12.5),
       LogField::Bool("retry", false), LogField::Number("nan", std::nan(""))},
      kWhen);
  EXPECT_EQ(line,
            "{\"time\":\"2026-11-30T19:24:33.630Z\",\"level\":\"error\",\"msg\":\"store write failed\","
            "\"path\":\"/var/lib/scanserve\",\"bytes\":4096,\"ms\":12.5,\"retry\":false,\"nan\":null}");
  const nlohmann::json parsed = nlohmann::json::parse(line);
  EXPECT_EQ(parsed["level"], "error");
  EXPECT_EQ(parsed["bytes"], 4096);
}

TEST(LogTest, JsonEscapesWhateverTheMessageHolds) {
  // Quotes, backslashes, newlines (DescribeConfig's multi-line start-up message), control bytes,
  // UTF-8, and bytes that are not UTF-8 (a status message quoting a client's id).
  const std::string hostile = std::string("say \"hi\" \\ C:\\path\nnext\tline\r\x01\x1f\x7f caf\xc3\xa9 \xe2\x82\xac ") +
                              "\xff\xfe \xc3 \xed\xa0\x80 \xf0\x9f\x98\x80 end";
  const std::string line = FormatLogLine(LogFormat::kJson, LogLevel::kInfo, hostile,
                                         {LogField::Text("k\"ey", hostile)}, kWhen);
  EXPECT_EQ(line.find('\n'), std::string::npos) << "one line";
  nlohmann::json parsed;
  ASSERT_NO_THROW(parsed = nlohmann::json::parse(line)) << line;
  const std::string expected = std::string("say \"hi\" \\ C:\\path\nnext\tline\r\x01\x1f\x7f caf\xc3\xa9 \xe2\x82\xac ") +
                               "\xef\xbf\xbd\xef\xbf\xbd \xef\xbf\xbd \xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd " +
                               "\xf0\x9f\x98\x80 end";
  EXPECT_EQ(parsed["msg"].get<std::string>(), expected);
  EXPECT_EQ(parsed["k\"ey"].get<std::string>(), expected);
}

TEST(LogTest, ParseLogFormat) {
  EXPECT_EQ(ParseLogFormat("text").value_or(LogFormat::kJson), LogFormat::kText);
  EXPECT_EQ(ParseLogFormat("json").value_or(LogFormat::kText), LogFormat::kJson);
  EXPECT_EQ(ParseLogFormat("JSON").status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(LogTest, CallLogLinesHaveTheirFieldsInJson) {
  CallLog log(CallLogOptions{});
  FinishedCall call;
  call.method = "/scanserve.v1.ScanService/SearchImages";
  call.peer = "ipv4:10.0.0.7:5123";
  call.request_id = "4bf92f3577b34da6";
  call.code = absl::StatusCode::kInternal;
  call.message = "scorer \"failed\"";
  call.seconds = 0.25;
  std::optional<CallLogLine> line = log.Record(call);
  ASSERT_TRUE(line.has_value());
  const nlohmann::json parsed =
      nlohmann::json::parse(FormatLogLine(LogFormat::kJson, line->level, line->text, line->fields, kWhen));
  EXPECT_EQ(parsed["level"], "error");
  EXPECT_EQ(parsed["msg"], line->text);
  EXPECT_EQ(parsed["grpc.method"], "/scanserve.v1.ScanService/SearchImages");
  EXPECT_EQ(parsed["grpc.code"], "INTERNAL");
  EXPECT_DOUBLE_EQ(parsed["grpc.time_ms"].get<double>(), 250.0);
  EXPECT_EQ(parsed["grpc.slow"], false);
  EXPECT_EQ(parsed["peer.address"], "ipv4:10.0.0.7:5123");
  EXPECT_EQ(parsed["request.id"], "4bf92f3577b34da6");
  EXPECT_EQ(parsed["error"], "scorer \"failed\"");
  EXPECT_FALSE(parsed.contains("suppressed"));
}

TEST(LogTest, JsonCarriesTheLibrariesLinesToo) {
  // Protobuf logs its own line when a request's string is not UTF-8, gRPC one when a handshake
  // fails, and the engine one when its store stops writing: in JSON mode all must be JSON lines, or
  // a collector drops or mangles them.
  grpc_init();  // gpr_log prints nothing before it
  SetLogFormat(LogFormat::kJson);
  RouteLibraryLogs();
  testing::internal::CaptureStderr();
  v1::SearchImagesRequest request;
  const bool parsed_bad_utf8 = request.ParseFromString(std::string("\x0a\x03" "a\xff" "b", 5));
  gpr_log(GPR_ERROR, "handshake \"failed\"");
  EngineLog(EngineLogLevel::kWarning, "store: \"reopened\"");
  const std::string captured = testing::internal::GetCapturedStderr();
  SetLogFormat(LogFormat::kText);  // the routes stay, and write text from here on
  grpc_shutdown();
  EXPECT_FALSE(parsed_bad_utf8);

  std::vector<std::string> sources;
  for (absl::string_view line : absl::StrSplit(captured, '\n', absl::SkipEmpty())) {
    nlohmann::json parsed;
    ASSERT_NO_THROW(parsed = nlohmann::json::parse(line)) << line;
    ASSERT_TRUE(parsed.contains("source")) << line;
    sources.push_back(parsed["source"]);
    if (parsed["source"] == "protobuf") {
      EXPECT_EQ(parsed["level"], "error");
      EXPECT_NE(parsed["msg"].get<std::string>().find("UTF-8"), std::string::npos) << line;
    } else if (parsed["source"] == "engine") {
      EXPECT_EQ(parsed["level"], "warning");
      EXPECT_EQ(parsed["msg"], "store: \"reopened\"");
    } else {
      EXPECT_EQ(parsed["msg"], "handshake \"failed\"");
      EXPECT_GT(parsed["line"].get<int>(), 0);
    }
  }
  EXPECT_EQ(sources, (std::vector<std::string>{"protobuf", "grpc", "engine"})) << captured;
}

}  // namespace
}  // namespace scanserve
