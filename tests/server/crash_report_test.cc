#include "server/crash_report.h"

#include <chrono>
#include <string>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

namespace scanserve {
namespace {

std::string CrashLine(LogFormat format, const std::string& message, std::chrono::system_clock::time_point when,
                      int size = 2048) {
  std::string out(size, '\0');
  const int n = FormatCrashLine(format, message.c_str(), when, out.data(), size);
  EXPECT_LE(n, size);
  out.resize(n);
  return out;
}

std::chrono::system_clock::time_point Ms(long long ms) {
  return std::chrono::system_clock::time_point(std::chrono::milliseconds(ms));
}

// The handler formats its own time (no gmtime in a signal handler): it must read as the log's.
TEST(CrashReportTest, TimestampsAreTheLogsOwn) {
  for (long long ms : {0LL, 951782400000LL /* 2000-02-29 */, 946684799999LL /* 1999-12-31T23:59:59.999 */,
                       1709164800123LL /* 2024-02-29 */, 1796066673630LL, 4102444800000LL /* 2100-01-01 */}) {
    const std::string log_line = FormatLogLine(LogFormat::kText, LogLevel::kError, "m", {}, Ms(ms));
    const std::string crash_line = CrashLine(LogFormat::kText, "m", Ms(ms));
    EXPECT_EQ(crash_line, "F" + log_line.substr(1) + "\n") << ms;
  }
}

TEST(CrashReportTest, JsonLinesParseWhateverTheMessageHolds) {
  const std::string hostile = std::string("frame \"#3\" \\ tab\there\nnewline \x01\x7f \xc3\xa9 end");
  const std::string line = CrashLine(LogFormat::kJson, hostile, Ms(1796066673630LL));
  ASSERT_EQ(line.back(), '\n');
  const nlohmann::json parsed = nlohmann::json::parse(line.substr(0, line.size() - 1));
  EXPECT_EQ(parsed["time"], "2026-11-30T19:24:33.630Z");
  EXPECT_EQ(parsed["level"], "fatal");
  EXPECT_EQ(parsed["source"], "crash");
  EXPECT_EQ(parsed["msg"], "frame \"#3\" \\ tab\there\nnewline \x01\x7f ?? end") << "non-ASCII bytes become '?'";
}

TEST(CrashReportTest, ALongMessageIsCutAndTheLineStaysWhole) {
  const std::string message(5000, '"');  // every byte escaped: the worst case
  for (int size : {128, 333, 2048}) {
    const std::string json = CrashLine(LogFormat::kJson, message, Ms(0), size);
    ASSERT_LE(static_cast<int>(json.size()), size);
    const nlohmann::json parsed = nlohmann::json::parse(json.substr(0, json.size() - 1));
    EXPECT_GT(parsed["msg"].get<std::string>().size(), 0u);
    const std::string text = CrashLine(LogFormat::kText, message, Ms(0), size);
    EXPECT_EQ(text.back(), '\n');
    EXPECT_LE(static_cast<int>(text.size()), size);
  }
}

}  // namespace
}  // namespace scanserve
