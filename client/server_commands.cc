// The commands about the server itself: snapshot, stats, health.
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "client/commands.h"
#include "client/exit_codes.h"
#include "client/output.h"

namespace scanserve {
namespace cli {

int Snapshot(Connection& connection, const std::vector<std::string>& argv, bool json) {
  absl::StatusOr<ParsedArgs> args = Parse(argv, {{}, {}});
  if (!args.ok()) return UsageError(std::string(args.status().message()));
  if (args->positionals().size() > 1) return UsageError("usage: snapshot [NAME]");
  v1::CreateSnapshotRequest request;
  if (!args->positionals().empty()) request.set_name(args->positionals()[0]);
  v1::CreateSnapshotResponse response;
  const std::unique_ptr<grpc::ClientContext> context = connection.NewContext();
  const grpc::Status status = connection.scan().CreateSnapshot(context.get(), request, &response);
  if (!status.ok()) return RpcFailed("CreateSnapshot", status, *context);
  if (json) {
    PrintJson(response);
    return kExitOk;
  }
  Table table({"field", "value"});
  table.AddRow({"name", response.name()});
  table.AddRow({"data dir", response.data_dir()});
  table.AddRow({"images", absl::StrCat(response.images())});
  table.AddRow({"captions", absl::StrCat(response.captions())});
  table.AddRow({"writers waited", absl::StrCat(absl::SixDigits(response.seconds() * 1e3), " ms")});
  table.Print(stdout);
  return kExitOk;
}

int Stats(Connection& connection, const std::vector<std::string>& argv, bool json) {
  if (!argv.empty()) return UsageError("stats takes no arguments");
  v1::GetStatsResponse response;
  const std::unique_ptr<grpc::ClientContext> context = connection.NewContext();
  const grpc::Status status = connection.scan().GetStats(context.get(), v1::GetStatsRequest(), &response);
  if (!status.ok()) return RpcFailed("GetStats", status, *context);
  if (json) {
    PrintJson(response);
    return kExitOk;
  }
  Table table({"field", "value"});
  // Synthetic (benchmark) items are counted in, and said.
  const auto count = [](int64_t all, int64_t synthetic) {
    return synthetic == 0 ? absl::StrCat(all) : absl::StrCat(all, " (", synthetic, " synthetic, not stored)");
  };
  table.AddRow({"images", count(response.images(), response.synthetic_images())});
  table.AddRow({"captions", count(response.captions(), response.synthetic_captions())});
  table.AddRow({"feature memory", FormatBytes(response.feature_bytes())});
  table.AddRow({"feature limit", absl::StrCat(FormatBytes(response.feature_bytes_committed()), " of ",
                                              FormatBytes(response.feature_bytes_limit()), " committed")});
  table.AddRow({"store on disk", FormatBytes(response.store_disk_bytes())});
  if (response.store_disk_free_bytes() >= 0) {
    table.AddRow({"disk free", FormatBytes(response.store_disk_free_bytes())});
  }
  if (response.store_writes_stopped()) {
    table.AddRow({"store writes", "stopped by an I/O error: refused until the store reopens"});
  }
  table.AddRow({"change log", absl::StrCat("newest sequence ", response.last_change_sequence(),
                                          response.changes_trimmed_through() > 0
                                              ? absl::StrCat(", kept after ", response.changes_trimmed_through())
                                              : std::string())});
  table.AddRow({"backend", response.backend()});
  table.AddRow({"encoder device", response.encoder_device()});
  table.AddRow({"storage", response.storage()});
  table.AddRow({"query precision", response.query_precision()});
  table.AddRow({"detector", response.detector_loaded()
                                 ? (response.detector().empty() ? std::string("loaded") : response.detector())
                                 : std::string("none")});
  table.AddRow({"version", response.version()});
  for (int i = 0; i < response.models_size(); ++i) {
    table.AddRow({absl::StrCat("model ", i), response.models(i).model_dir()});
    table.AddRow({"", response.models(i).summary()});
  }
  table.Print(stdout);
  return kExitOk;
}

int Health(Connection& connection, const std::vector<std::string>& argv, bool json) {
  absl::StatusOr<ParsedArgs> args = Parse(argv, {{"service"}, {}});
  if (!args.ok()) return UsageError(std::string(args.status().message()));
  if (!args->positionals().empty()) return UsageError("health takes --service NAME only");
  grpc::health::v1::HealthCheckRequest request;
  request.set_service(args->Value("service").value_or(""));
  grpc::health::v1::HealthCheckResponse response;
  // Health is public: no token needed, but sending it does no harm.
  const std::unique_ptr<grpc::ClientContext> context = connection.NewContext();
  const grpc::Status status = connection.health().Check(context.get(), request, &response);
  if (!status.ok()) return RpcFailed("Health.Check", status, *context);
  if (json) {
    PrintJson(response);
  } else {
    std::printf("%s\n", grpc::health::v1::HealthCheckResponse::ServingStatus_Name(response.status()).c_str());
  }
  return response.status() == grpc::health::v1::HealthCheckResponse::SERVING ? kExitOk : kExitUnavailable;
}

}  // namespace cli
}  // namespace scanserve
