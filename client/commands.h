// scanctl's commands. Each parses its own arguments (the words after the command name), calls the
// server, prints a table or JSON on stdout (errors on stderr) and returns the exit code
// (exit_codes.h). scanctl.cc reads the global flags and dispatches.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "client/cli_args.h"
#include "client/connection.h"
#include "scanserve/v1/scanserve.pb.h"

namespace scanserve {
namespace cli {

// search_commands.cc
int SearchImages(Connection& connection, const std::vector<std::string>& argv, bool json);
int SearchCaptions(Connection& connection, const std::vector<std::string>& argv, bool json);

// item_commands.cc
int UpsertCaption(Connection& connection, const std::vector<std::string>& argv, bool json);
int UpsertImage(Connection& connection, const std::vector<std::string>& argv, bool json);
int Delete(Connection& connection, const std::vector<std::string>& argv, bool json);
int Update(Connection& connection, const std::vector<std::string>& argv, bool json);
int Get(Connection& connection, const std::vector<std::string>& argv, bool json);
int List(Connection& connection, const std::vector<std::string>& argv, bool json);
int Changes(Connection& connection, const std::vector<std::string>& argv, bool json);

// server_commands.cc
int Snapshot(Connection& connection, const std::vector<std::string>& argv, bool json);
int Stats(Connection& connection, const std::vector<std::string>& argv, bool json);
int Health(Connection& connection, const std::vector<std::string>& argv, bool json);

// bulk_commands.cc. copy and bench make their own connections (copy to two servers, bench one per
// client) from the global flags.
int Import(Connection& connection, const std::vector<std::string>& argv, bool json);
int Copy(const ConnectionOptions& connection_options, const std::vector<std::string>& argv, bool json);
int Bench(const ConnectionOptions& connection_options, const std::vector<std::string>& argv, bool json);

// Shared by the commands (command_support.cc).

// Prints "scanctl: MESSAGE" and the --help hint on stderr; returns kExitUsage.
int UsageError(const std::string& message);

// --collection and --where KEY=VALUE... into a search filter.
absl::Status FillFilter(const ParsedArgs& args, v1::Filter* filter);

// --top-k, 10 when absent.
absl::StatusOr<int32_t> TopK(const ParsedArgs& args);

// "key=value,key=value" in key order.
std::string FormatMetadata(const google::protobuf::Map<std::string, std::string>& metadata);

}  // namespace cli
}  // namespace scanserve
