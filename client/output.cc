#include "client/output.h"

#include <google/protobuf/util/json_util.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "client/exit_codes.h"

namespace scanserve {
namespace cli {

void Table::Print(std::FILE* out) const {
  std::vector<size_t> widths;
  for (const auto& row : rows_) {
    if (widths.size() < row.size()) widths.resize(row.size(), 0);
    for (size_t c = 0; c < row.size(); ++c) widths[c] = std::max(widths[c], row[c].size());
  }
  for (const auto& row : rows_) {
    std::string line;
    for (size_t c = 0; c < row.size(); ++c) {
      line += row[c];
      if (c + 1 < row.size()) line.append(widths[c] - row[c].size() + 2, ' ');
    }
    std::fprintf(out, "%s\n", line.c_str());
  }
}

void PrintJson(const google::protobuf::Message& message) {
  google::protobuf::util::JsonPrintOptions options;
  options.preserve_proto_field_names = true;
  options.always_print_primitive_fields = true;
  std::string json;
  if (!google::protobuf::util::MessageToJsonString(message, &json, options).ok()) json = "{}";
  std::printf("%s\n", json.c_str());
}

const char* StatusCodeName(int code) {
  static const char* const kNames[] = {"OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED",
                                       "NOT_FOUND", "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED",
                                       "FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED",
                                       "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED"};
  if (code < 0 || code >= static_cast<int>(sizeof(kNames) / sizeof(kNames[0]))) return "UNKNOWN";
  return kNames[code];
}

int Fail(int exit_code, const std::string& message) {
  std::fprintf(stderr, "scanctl: %s\n", message.c_str());
  return exit_code;
}

namespace {

// "scanctl: <what>: <CODE>: <message><suffix>" on stderr; the exit code for `status`.
int PrintRpcFailure(const std::string& what, const grpc::Status& status, absl::string_view suffix) {
  return Fail(ExitCodeFor(status),
              absl::StrCat(what, ": ", StatusCodeName(status.error_code()), ": ", status.error_message(), suffix));
}

}  // namespace

int RpcFailed(const std::string& what, const grpc::Status& status) { return PrintRpcFailure(what, status, ""); }

int RpcFailed(const std::string& what, const grpc::Status& status, const grpc::ClientContext& context) {
  // Complete for a finished unary call; empty when no answer came (no connection, a deadline).
  const auto& metadata = context.GetServerInitialMetadata();
  const auto it = metadata.find("x-request-id");
  if (it == metadata.end()) return PrintRpcFailure(what, status, "");
  return PrintRpcFailure(what, status,
                         absl::StrCat(" (request ", absl::string_view(it->second.data(), it->second.size()), ")"));
}

std::string FormatScore(float score) { return absl::StrFormat("%.4f", score); }

std::string FormatBytes(int64_t bytes) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  double value = static_cast<double>(bytes);
  int unit = 0;
  while (value >= 1024 && unit < 4) {
    value /= 1024;
    ++unit;
  }
  return unit == 0 ? absl::StrCat(bytes, " B") : absl::StrFormat("%.1f %s", value, units[unit]);
}

}  // namespace cli
}  // namespace scanserve
