#include "server/log.h"

#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <ctime>

#include <google/protobuf/stubs/logging.h>  // SetLogHandler: protobuf 3.21's public logging API lives under stubs/
#include <grpc/support/log.h>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "engine/common/engine_log.h"

namespace scanserve {
namespace {

std::atomic<LogFormat> g_format{LogFormat::kText};

// "2026-11-30T19:24:33.630Z"
std::string Timestamp(std::chrono::system_clock::time_point now) {
  const std::time_t seconds = std::chrono::system_clock::to_time_t(now);
  const int millis = static_cast<int>(
      std::chrono::duration_cast<std::chrono::milliseconds>(now.time_since_epoch()).count() % 1000);
  std::tm utc{};
  gmtime_r(&seconds, &utc);
  char stamp[32];
  std::strftime(stamp, sizeof(stamp), "%Y-%m-%dT%H:%M:%S", &utc);
  return absl::StrCat(stamp, ".", absl::Dec(millis, absl::kZeroPad3), "Z");
}

// The length of the well-formed UTF-8 sequence at the start of `s` (1..4), or 0.
size_t Utf8SequenceLength(absl::string_view s) {
  const auto byte = [&](size_t i) { return static_cast<unsigned char>(s[i]); };
  const unsigned char lead = byte(0);
  size_t length = 0;
  unsigned char low = 0x80, high = 0xBF;  // the allowed range of the second byte
  if (lead >= 0xC2 && lead <= 0xDF) {
    length = 2;
  } else if (lead >= 0xE0 && lead <= 0xEF) {
    length = 3;
    if (lead == 0xE0) low = 0xA0;   // no overlong forms
    if (lead == 0xED) high = 0x9F;  // no surrogates
  } else if (lead >= 0xF0 && lead <= 0xF4) {
    length = 4;
    if (lead == 0xF0) low = 0x90;
    if (lead == 0xF4) high = 0x8F;  // nothing above U+10FFFF
  } else {
    return 0;
  }
  if (s.size() < length || byte(1) < low || byte(1) > high) return 0;
  for (size_t i = 2; i < length; ++i) {
    if (byte(i) < 0x80 || byte(i) > 0xBF) return 0;
  }
  return length;
}

void AppendJsonString(std::string* out, absl::string_view s) {
  out->push_back('"');
  for (size_t i = 0; i < s.size();) {
    const unsigned char c = static_cast<unsigned char>(s[i]);
    if (c >= 0x80) {
      const size_t length = Utf8SequenceLength(s.substr(i));
      if (length == 0) {
        out->append("\\ufffd");
        ++i;
      } else {
        out->append(s.data() + i, length);
        i += length;
      }
      continue;
    }
    switch (c) {
      case '"': out->append("\\\""); break;
      case '\\': out->append("\\\\"); break;
      case '\n': out->append("\\n"); break;
      case '\r': out->append("\\r"); break;
      case '\t': out->append("\\t"); break;
      default:
        if (c < 0x20 || c == 0x7F) {
          absl::StrAppend(out, "\\u00", absl::Hex(c, absl::kZeroPad2));
        } else {
          out->push_back(static_cast<char>(c));
        }
    }
    ++i;
  }
  out->push_back('"');
}

const char* LevelName(LogLevel level) {
  return level == LogLevel::kInfo ? "info" : level == LogLevel::kWarning ? "warning" : "error";
}

void WriteLine(std::string line) {
  line.push_back('\n');
  std::fwrite(line.data(), 1, line.size(), stderr);
  std::fflush(stderr);
}

void LogFromGrpc(gpr_log_func_args* args) {
  const LogLevel level = args->severity == GPR_LOG_SEVERITY_ERROR ? LogLevel::kError : LogLevel::kInfo;
  Log(level, absl::StripTrailingAsciiWhitespace(args->message != nullptr ? args->message : ""),
      {LogField::Text("source", "grpc"), LogField::Text("file", args->file != nullptr ? args->file : ""),
       LogField::Number("line", args->line)});
}

void LogFromProtobuf(google::protobuf::LogLevel severity, const char* file, int line, const std::string& message) {
  const LogLevel level = severity >= google::protobuf::LOGLEVEL_ERROR     ? LogLevel::kError
                         : severity == google::protobuf::LOGLEVEL_WARNING ? LogLevel::kWarning
                                                                          : LogLevel::kInfo;
  Log(level, absl::StripTrailingAsciiWhitespace(message),
      {LogField::Text("source", "protobuf"), LogField::Text("file", file != nullptr ? file : ""),
       LogField::Number("line", line)});
}

void LogFromEngine(EngineLogLevel severity, std::string_view message) {
  const LogLevel level = severity == EngineLogLevel::kError     ? LogLevel::kError
                         : severity == EngineLogLevel::kWarning ? LogLevel::kWarning
                                                                : LogLevel::kInfo;
  Log(level, absl::string_view(message.data(), message.size()), {LogField::Text("source", "engine")});
}

}  // namespace

absl::StatusOr<LogFormat> ParseLogFormat(absl::string_view name) {
  if (name == "text") return LogFormat::kText;
  if (name == "json") return LogFormat::kJson;
  return absl::InvalidArgumentError(absl::StrCat("expected text or json, got '", name, "'"));
}

void SetLogFormat(LogFormat format) { g_format = format; }

std::string FormatLogLine(LogFormat format, LogLevel level, absl::string_view message,
                          const std::vector<LogField>& fields, std::chrono::system_clock::time_point now) {
  if (format == LogFormat::kText) {
    const char* tag = level == LogLevel::kInfo ? "I" : level == LogLevel::kWarning ? "W" : "E";
    return absl::StrCat(tag, " ", Timestamp(now), " scanserve: ", message);
  }
  std::string line = absl::StrCat("{\"time\":\"", Timestamp(now), "\",\"level\":\"", LevelName(level), "\",\"msg\":");
  AppendJsonString(&line, message);
  for (const LogField& field : fields) {
    line.push_back(',');
    AppendJsonString(&line, field.key);
    line.push_back(':');
    switch (field.kind) {
      case LogField::Kind::kText:
        AppendJsonString(&line, field.text);
        break;
      case LogField::Kind::kBool:
        line.append(field.number != 0 ? "true" : "false");
        break;
      case LogField::Kind::kNumber:
        if (!std::isfinite(field.number)) {
          line.append("null");
        } else if (std::abs(field.number) < 9.0e15 && std::trunc(field.number) == field.number) {
          absl::StrAppend(&line, static_cast<int64_t>(field.number));
        } else {
          absl::StrAppend(&line, field.number);
        }
        break;
    }
  }
  line.push_back('}');
  return line;
}

void Log(LogLevel level, absl::string_view message, const std::vector<LogField>& fields) {
  WriteLine(FormatLogLine(g_format.load(), level, message, fields, std::chrono::system_clock::now()));
}

void RouteLibraryLogs() {
  SetEngineLogSink(LogFromEngine);
  if (g_format.load() != LogFormat::kJson) return;
  gpr_set_log_function(LogFromGrpc);
  google::protobuf::SetLogHandler(LogFromProtobuf);
}

}  // namespace scanserve
