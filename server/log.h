// Logging for the server process: one line per event on stderr, written with one call (lines of
// concurrent threads never interleave). (Debian's Abseil predates absl/log.)
//
// Two formats, chosen once at start (--log-format):
//   text: "I 2026-11-30T19:24:33.630Z scanserve: message"
//   json: {"time":"2026-11-30T19:24:33.630Z","level":"info","msg":"message",...fields}, one object
//         per line for log collectors (Loki, Elasticsearch, Cloud Logging), with gRPC's and
//         protobuf's own lines routed through it too (RouteLibraryLogs) so that every line parses.
#pragma once

#include <chrono>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace scanserve {

enum class LogLevel { kInfo, kWarning, kError };
enum class LogFormat { kText, kJson };

// "text" or "json"; INVALID_ARGUMENT otherwise.
absl::StatusOr<LogFormat> ParseLogFormat(absl::string_view name);

// The process's format (text until set). Set it before other threads log.
void SetLogFormat(LogFormat format);

// A key of a structured line: JSON lines carry it beside time, level and msg; text lines show the
// message alone, which says the same in words.
struct LogField {
  enum class Kind { kText, kNumber, kBool };
  static LogField Text(std::string key, std::string value) {
    return {std::move(key), Kind::kText, std::move(value), 0};
  }
  static LogField Number(std::string key, double value) { return {std::move(key), Kind::kNumber, {}, value}; }
  static LogField Bool(std::string key, bool value) { return {std::move(key), Kind::kBool, {}, value ? 1.0 : 0.0}; }

  std::string key;
  Kind kind = Kind::kText;
  std::string text;   // kText
  double number = 0;  // kNumber; kBool: 1 or 0
};

void Log(LogLevel level, absl::string_view message, const std::vector<LogField>& fields = {});

// The line Log writes at `now` in `format`, without its newline. JSON strings are escaped
// (control characters as \u00XX, bytes that are not UTF-8 as U+FFFD); a whole number is written
// without exponent or fraction, one that is not finite as null.
std::string FormatLogLine(LogFormat format, LogLevel level, absl::string_view message,
                          const std::vector<LogField>& fields, std::chrono::system_clock::time_point now);

// Routes the engine's messages (engine_log.h: the store, the scorers) through Log, with the field
// source "engine". With the JSON format, also gRPC's log lines (gpr_log: failed handshakes,
// transport errors) and protobuf's (a request string that is not UTF-8), with the fields source
// ("grpc" or "protobuf"), file and line; the text format keeps those libraries' own lines. Call
// once at start.
void RouteLibraryLogs();

}  // namespace scanserve
