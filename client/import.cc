#include "client/import.h"

#include <condition_variable>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <sstream>
#include <thread>

#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "client/exit_codes.h"
#include "client/output.h"
#include "client/progress.h"

namespace scanserve {
namespace cli {
namespace {

struct Checkpoint {
  std::string source;
  int64_t total = 0;
  int64_t acked_through = -1;  // -1: nothing acknowledged yet
};

// NOT_FOUND when there is no checkpoint file; INVALID_ARGUMENT when it does not parse.
absl::StatusOr<Checkpoint> LoadCheckpoint(const std::string& path) {
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(path);
  try {
    const nlohmann::json json = nlohmann::json::parse(in);
    Checkpoint checkpoint;
    checkpoint.source = json.at("source").get<std::string>();
    checkpoint.total = json.at("total").get<int64_t>();
    checkpoint.acked_through = json.at("acked_through").get<int64_t>();
    return checkpoint;
  } catch (const std::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat("checkpoint ", path, " is unreadable (", e.what(),
                                                   "); pass --restart to start over"));
  }
}

absl::Status SaveCheckpoint(const std::string& path, const Checkpoint& checkpoint) {
  const nlohmann::json json = {{"source", checkpoint.source},
                               {"total", checkpoint.total},
                               {"acked_through", checkpoint.acked_through}};
  const std::string temp = path + ".tmp";
  {
    std::ofstream out(temp, std::ios::trunc);
    out << json.dump(2) << "\n";
    if (!out) return absl::UnavailableError(absl::StrCat("cannot write the checkpoint ", temp));
  }
  std::error_code error;
  std::filesystem::rename(temp, path, error);
  if (error) return absl::UnavailableError(absl::StrCat("cannot write the checkpoint ", path, ": ", error.message()));
  return absl::OkStatus();
}

}  // namespace

int RunImport(Connection& connection, IngestSource& source, const ImportOptions& options) {
  const int64_t total = source.total();
  Checkpoint checkpoint{source.identity(), total, -1};
  if (!options.checkpoint_path.empty() && !options.restart) {
    absl::StatusOr<Checkpoint> loaded = LoadCheckpoint(options.checkpoint_path);
    if (loaded.ok()) {
      if (loaded->source != checkpoint.source) {
        return Fail(kExitUsage, absl::StrCat("the checkpoint ", options.checkpoint_path, " belongs to another import (",
                                             loaded->source, "); pass --restart or --resume-file"));
      }
      checkpoint.acked_through = std::min(loaded->acked_through, total - 1);
    } else if (!absl::IsNotFound(loaded.status())) {
      return Fail(kExitUsage, std::string(loaded.status().message()));
    }
  }
  const int64_t skip = checkpoint.acked_through + 1;
  if (skip > 0) {
    std::fprintf(stderr, "scanctl: resuming after item %lld of %lld (checkpoint %s)\n",
                 static_cast<long long>(checkpoint.acked_through), static_cast<long long>(total),
                 options.checkpoint_path.c_str());
    if (absl::Status status = source.Skip(skip); !status.ok()) return Fail(kExitUsage, status.ToString());
  }

  std::unique_ptr<grpc::ClientContext> context = connection.NewContext(/*with_deadline=*/false);
  std::unique_ptr<grpc::ClientReaderWriter<v1::IngestRequest, v1::IngestResponse>> stream =
      connection.scan().Ingest(context.get());

  std::mutex mu;  // guards sent, acked, stream_over, source_status
  std::condition_variable window_open;
  int64_t sent = 0;
  int64_t acked = 0;
  bool stream_over = false;
  absl::Status source_status;

  // The writer: reads the source and keeps at most `window` items unacknowledged.
  std::thread writer([&] {
    v1::IngestRequest item;
    for (;;) {
      absl::StatusOr<bool> more = source.Next(&item);
      if (!more.ok()) {
        std::lock_guard<std::mutex> lock(mu);
        source_status = more.status();
        break;
      }
      if (!*more) break;
      {
        std::unique_lock<std::mutex> lock(mu);
        window_open.wait(lock, [&] { return sent - acked < options.window || stream_over; });
        if (stream_over) break;
      }
      if (!stream->Write(item)) break;  // the call is over; Finish() says why
      std::lock_guard<std::mutex> lock(mu);
      ++sent;
    }
    stream->WritesDone();
  });

  Progress progress(total, skip, options.progress);
  int64_t failed = 0;
  auto last_save = std::chrono::steady_clock::now();
  v1::IngestResponse response;
  absl::Status checkpoint_status;
  while (stream->Read(&response)) {
    {
      std::lock_guard<std::mutex> lock(mu);
      ++acked;
    }
    window_open.notify_one();
    checkpoint.acked_through = skip + acked - 1;
    if (response.result().code() != 0) {
      if (++failed <= options.max_failures_shown) {
        std::fprintf(stderr, "%sscanctl: item %lld (%s '%s'): %s: %s\n", options.progress ? "\n" : "",
                     static_cast<long long>(checkpoint.acked_through), response.is_caption() ? "caption" : "image",
                     response.result().id().c_str(), StatusCodeName(response.result().code()),
                     response.result().message().c_str());
      }
    }
    progress.Update(skip + acked, failed);
    const auto now = std::chrono::steady_clock::now();
    if (!options.checkpoint_path.empty() && now - last_save > std::chrono::seconds(1)) {
      checkpoint_status = SaveCheckpoint(options.checkpoint_path, checkpoint);
      last_save = now;
    }
  }
  {
    std::lock_guard<std::mutex> lock(mu);
    stream_over = true;
  }
  window_open.notify_one();
  writer.join();
  const grpc::Status status = stream->Finish();
  if (!options.checkpoint_path.empty()) checkpoint_status = SaveCheckpoint(options.checkpoint_path, checkpoint);
  progress.Finish(skip + acked, failed);

  const double seconds = progress.elapsed_seconds();
  if (options.json) {
    const nlohmann::json summary = {
        {"source", checkpoint.source},  {"total", total},
        {"skipped", skip},              {"sent", sent},
        {"acked", acked},               {"failed", failed},
        {"seconds", seconds},           {"items_per_second", seconds > 0 ? acked / seconds : 0.0},
        {"acked_through", checkpoint.acked_through}, {"checkpoint", options.checkpoint_path},
        {"status", status.ok() && source_status.ok() ? "OK" : "ERROR"}};
    std::printf("%s\n", summary.dump().c_str());
  } else {
    std::fprintf(stderr, "scanctl: %lld items acknowledged (%lld failed), %lld skipped from an earlier run, in %.1f s\n",
                 static_cast<long long>(acked), static_cast<long long>(failed), static_cast<long long>(skip), seconds);
  }
  if (!checkpoint_status.ok()) std::fprintf(stderr, "scanctl: %s\n", std::string(checkpoint_status.message()).c_str());
  if (!status.ok()) return RpcFailed("Ingest", status);
  if (!source_status.ok()) return Fail(kExitUsage, absl::StrCat("reading the input: ", source_status.ToString()));
  if (failed > 0) return Fail(kExitError, absl::StrCat(failed, " items failed; rerun with --restart to resend all"));
  return kExitOk;
}

}  // namespace cli
}  // namespace scanserve
