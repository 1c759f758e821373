// scanctl's output: aligned text tables for people (default) or one JSON document per command for
// scripts (--json: the response message in protobuf's canonical JSON mapping, field names as in the
// .proto, defaults included). Errors always go to stderr as "scanctl: ..." lines.
#pragma once

#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

#include <google/protobuf/message.h>
#include <grpcpp/client_context.h>
#include <grpcpp/support/status.h>

namespace scanserve {
namespace cli {

// A text table: a header row, then rows; columns padded to their widest cell.
class Table {
 public:
  explicit Table(std::vector<std::string> header) : rows_{std::move(header)} {}
  void AddRow(std::vector<std::string> row) { rows_.push_back(std::move(row)); }
  void Print(std::FILE* out) const;

 private:
  std::vector<std::vector<std::string>> rows_;
};

// The message as one line of JSON on stdout.
void PrintJson(const google::protobuf::Message& message);

// "NOT_FOUND", "INVALID_ARGUMENT", ... (the canonical spelling, as grpcurl prints it).
const char* StatusCodeName(int code);

// Prints "scanctl: <message>" to stderr and returns `exit_code`.
int Fail(int exit_code, const std::string& message);
// Prints "scanctl: <what>: <CODE>: <message>" to stderr and returns the exit code for `status`.
int RpcFailed(const std::string& what, const grpc::Status& status);
// The same for a finished unary call, with " (request ID)" appended when the server answered with
// one: the id its log line for the call carries.
int RpcFailed(const std::string& what, const grpc::Status& status, const grpc::ClientContext& context);

std::string FormatScore(float score);
std::string FormatBytes(int64_t bytes);  // "1.5 GiB"

}  // namespace cli
}  // namespace scanserve
