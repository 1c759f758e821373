#include "server/call_log.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <utility>

#include "absl/strings/str_cat.h"

namespace scanserve {
namespace {

constexpr size_t kMaxMessageBytes = 512;  // of the status message, in one line

double SteadySeconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// The level a call ending with `code` is logged at, if any (slowness aside).
std::optional<LogLevel> LevelOf(absl::StatusCode code) {
  switch (code) {
    case absl::StatusCode::kInternal:
    case absl::StatusCode::kUnknown:
    case absl::StatusCode::kDataLoss:
      return LogLevel::kError;
    case absl::StatusCode::kResourceExhausted:
    case absl::StatusCode::kUnavailable:
    case absl::StatusCode::kDeadlineExceeded:
    case absl::StatusCode::kUnimplemented:
      return LogLevel::kWarning;
    default:
      return std::nullopt;
  }
}

// Printable and on one line: control bytes become '?', long messages are cut.
std::string OneLine(absl::string_view text) {
  std::string out(text.substr(0, kMaxMessageBytes));
  for (char& c : out) {
    if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) c = '?';
  }
  if (text.size() > kMaxMessageBytes) out += "...";
  return out;
}

}  // namespace

absl::Status ValidateCallLogOptions(const CallLogOptions& options) {
  if (!std::isfinite(options.slow_call_seconds) || options.slow_call_seconds < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("slow_call_seconds must be >= 0, got ", options.slow_call_seconds));
  }
  if (!std::isfinite(options.max_lines_per_second) || options.max_lines_per_second <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_lines_per_second must be > 0, got ", options.max_lines_per_second));
  }
  return absl::OkStatus();
}

CallLog::CallLog(CallLogOptions options, std::function<double()> now_seconds)
    : options_(options),
      now_seconds_(now_seconds ? std::move(now_seconds) : SteadySeconds),
      tokens_(options.max_lines_per_second),
      last_refill_(now_seconds_()) {}

std::optional<CallLogLine> CallLog::Record(const FinishedCall& call) {
  std::optional<LogLevel> level = LevelOf(call.code);
  const bool slow = !call.streaming && options_.slow_call_seconds > 0 && call.seconds >= options_.slow_call_seconds;
  if (!level.has_value() && !slow) return std::nullopt;
  if (!level.has_value()) level = LogLevel::kWarning;

  int64_t suppressed = 0;
  {
    std::lock_guard<std::mutex> lock(mu_);
    const double now = now_seconds_();
    tokens_ = std::min(options_.max_lines_per_second,
                       tokens_ + (now - last_refill_) * options_.max_lines_per_second);
    last_refill_ = now;
    if (tokens_ < 1) {
      ++suppressed_;
      ++suppressed_total_;
      return std::nullopt;
    }
    tokens_ -= 1;
    suppressed = std::exchange(suppressed_, 0);
  }
  const std::string code = absl::StatusCodeToString(call.code);
  std::string text = absl::StrCat("call ", call.method, " ", code, " in ", absl::SixDigits(call.seconds * 1e3), " ms",
                                  slow ? " (slow)" : "", " from ", call.peer.empty() ? "?" : call.peer);
  // The request id is the client's (request_id.h): kept to its printable form, as the message is.
  if (!call.request_id.empty()) absl::StrAppend(&text, " request ", OneLine(call.request_id));
  if (!call.message.empty()) absl::StrAppend(&text, ": ", OneLine(call.message));
  if (suppressed > 0) absl::StrAppend(&text, " [", suppressed, " call log lines suppressed before this]");
  std::vector<LogField> fields = {LogField::Text("grpc.method", std::string(call.method)),
                                  LogField::Text("grpc.code", code),
                                  LogField::Number("grpc.time_ms", call.seconds * 1e3),
                                  LogField::Bool("grpc.slow", slow),
                                  LogField::Text("peer.address", std::string(call.peer))};
  if (!call.request_id.empty()) fields.push_back(LogField::Text("request.id", OneLine(call.request_id)));
  if (!call.message.empty()) fields.push_back(LogField::Text("error", OneLine(call.message)));
  if (suppressed > 0) fields.push_back(LogField::Number("suppressed", static_cast<double>(suppressed)));
  return CallLogLine{*level, std::move(text), std::move(fields)};
}

int64_t CallLog::suppressed_total() const {
  std::lock_guard<std::mutex> lock(mu_);
  return suppressed_total_;
}

}  // namespace scanserve
