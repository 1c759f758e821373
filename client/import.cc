#include "client/import.h"

#include <algorithm>
#include <condition_variable>
#include <deque>
#include <cstdio>
#include <filesystem>
#include <mutex>
#include <sstream>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "client/exit_codes.h"
#include "client/json_file.h"
#include "client/output.h"
#include "client/progress.h"
#include "engine/common/status_macros.h"

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
  Checkpoint checkpoint;
  const absl::Status read = ReadJsonCheckpoint(path, [&](const JsonFields& fields) -> absl::Status {
    SCANSERVE_RETURN_IF_ERROR(fields.Required("source", &checkpoint.source));
    SCANSERVE_RETURN_IF_ERROR(fields.Required("total", &checkpoint.total));
    return fields.Required("acked_through", &checkpoint.acked_through);
  });
  if (!read.ok()) return read;
  return checkpoint;
}

absl::Status SaveCheckpoint(const std::string& path, const Checkpoint& checkpoint) {
  const nlohmann::json json = {{"source", checkpoint.source},
                               {"total", checkpoint.total},
                               {"acked_through", checkpoint.acked_through}};
  return WriteJsonFileAtomically(path, json);
}

// Ends of an Ingest stream that another stream may get past: the connection closed (a server
// restarting, a rolling update, --max-connection-age on the server), or the server or gRPC's
// memory quota refusing for now.
bool Reconnectable(const grpc::Status& status) {
  return status.error_code() == grpc::StatusCode::UNAVAILABLE ||
         status.error_code() == grpc::StatusCode::RESOURCE_EXHAUSTED ||
         status.error_code() == grpc::StatusCode::ABORTED;
}

// What the streams of one import share. The server answers a stream's items in order, so the
// oldest unanswered item is the next answer's.
struct ImportState {
  std::mutex mu;  // guards everything below
  std::condition_variable window_open;
  std::deque<v1::IngestRequest> unanswered;  // sent, not yet answered; resent first on a new stream
  int64_t sent = 0;                          // items taken from the source (each sent at least once)
  bool source_done = false;
  absl::Status source_status;
  bool stream_over = false;
};

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

  ImportState state;
  Progress progress(total, skip, options.progress);
  int64_t acked = 0;
  int64_t failed = 0;
  int reconnects = 0;
  int failures_in_a_row = 0;  // streams that ended without an answer
  auto last_save = std::chrono::steady_clock::now();
  absl::Status checkpoint_status;
  grpc::Status status;
  for (;;) {
    std::unique_ptr<grpc::ClientContext> context = connection.NewContext(/*with_deadline=*/false);
    std::unique_ptr<grpc::ClientReaderWriter<v1::IngestRequest, v1::IngestResponse>> stream =
        connection.scan().Ingest(context.get());
    {
      std::lock_guard<std::mutex> lock(state.mu);
      state.stream_over = false;
    }

    // The writer: what the last stream left unanswered, then the source, keeping at most `window`
    // items unanswered.
    std::thread writer([&] {
      std::vector<v1::IngestRequest> resend;  // a copy: their answers pop them while they are sent
      {
        std::lock_guard<std::mutex> lock(state.mu);
        resend.assign(state.unanswered.begin(), state.unanswered.end());
      }
      for (const v1::IngestRequest& item : resend) {
        if (!stream->Write(item)) {
          stream->WritesDone();
          return;
        }
      }
      v1::IngestRequest item;
      for (;;) {
        {
          std::unique_lock<std::mutex> lock(state.mu);
          state.window_open.wait(lock, [&] {
            return static_cast<int64_t>(state.unanswered.size()) < options.window || state.stream_over;
          });
          if (state.stream_over || state.source_done) break;
        }
        absl::StatusOr<bool> more = source.Next(&item);
        std::unique_lock<std::mutex> lock(state.mu);
        if (!more.ok() || !*more) {
          state.source_done = true;
          if (!more.ok()) state.source_status = more.status();
          break;
        }
        state.unanswered.push_back(item);  // before the write: a failed one is resent
        ++state.sent;
        lock.unlock();
        if (!stream->Write(item)) break;  // the call is over; Finish() says why
      }
      stream->WritesDone();
    });

    v1::IngestResponse response;
    int64_t answered_here = 0;
    grpc::Status item_refused;  // an item the server could not store for now
    while (stream->Read(&response)) {
      if (response.result().code() == static_cast<int>(grpc::StatusCode::UNAVAILABLE)) {
        // The server cannot store now (its store reopening after an I/O error, say): end this
        // stream and resend from this item after a backoff, as when a stream is cut short. The
        // item stays unanswered, so the checkpoint does not pass it.
        item_refused = grpc::Status(
            grpc::StatusCode::UNAVAILABLE,
            absl::StrCat("the server could not store item ", skip + acked, " (",
                         response.is_caption() ? "caption" : "image", " '", response.result().id(),
                         "'): ", response.result().message()));
        context->TryCancel();
        break;
      }
      {
        std::lock_guard<std::mutex> lock(state.mu);
        if (!state.unanswered.empty()) state.unanswered.pop_front();
      }
      state.window_open.notify_one();
      ++acked;
      ++answered_here;
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
      std::lock_guard<std::mutex> lock(state.mu);
      state.stream_over = true;
    }
    state.window_open.notify_one();
    writer.join();
    status = stream->Finish();
    if (!item_refused.ok()) status = item_refused;

    bool more_to_send;
    {
      std::lock_guard<std::mutex> lock(state.mu);
      more_to_send = !state.unanswered.empty() || !state.source_done;
    }
    // Only a stream cut short, or that the server answered "not now", is reopened: one that never
    // got an answer in this run (a wrong address, a server down) fails at once, as other commands do.
    if (status.ok() || !Reconnectable(status) || !more_to_send || !state.source_status.ok() ||
        (acked == 0 && item_refused.ok())) {
      break;
    }
    failures_in_a_row = answered_here > 0 ? 1 : failures_in_a_row + 1;
    if (failures_in_a_row > options.max_reconnects) break;
    const double delay_s = RetryBackoffSeconds(failures_in_a_row);
    if (!item_refused.ok()) {
      std::fprintf(stderr, "%sscanctl: %s; resending from it in %.2g s\n", options.progress ? "\n" : "",
                   item_refused.error_message().c_str(), delay_s);
    } else {
      std::fprintf(stderr, "%sscanctl: the Ingest stream ended (%s: %s) after item %lld; reconnecting in %.2g s and "
                   "resending the %zu unanswered items\n", options.progress ? "\n" : "",
                   StatusCodeName(status.error_code()), status.error_message().c_str(),
                   static_cast<long long>(checkpoint.acked_through), delay_s, state.unanswered.size());
    }
    std::this_thread::sleep_for(std::chrono::duration<double>(delay_s));
    ++reconnects;
  }
  if (!options.checkpoint_path.empty()) checkpoint_status = SaveCheckpoint(options.checkpoint_path, checkpoint);
  progress.Finish(skip + acked, failed);

  const int64_t sent = state.sent;
  const absl::Status source_status = state.source_status;
  const double seconds = progress.elapsed_seconds();
  if (options.json) {
    const nlohmann::json summary = {
        {"source", checkpoint.source},  {"total", total},
        {"skipped", skip},              {"sent", sent},
        {"acked", acked},               {"failed", failed},
        {"reconnects", reconnects},
        {"seconds", seconds},           {"items_per_second", seconds > 0 ? acked / seconds : 0.0},
        {"acked_through", checkpoint.acked_through}, {"checkpoint", options.checkpoint_path},
        {"status", status.ok() && source_status.ok() ? "OK" : "ERROR"}};
    std::printf("%s\n", summary.dump().c_str());
  } else {
    std::fprintf(stderr, "scanctl: %lld items acknowledged (%lld failed), %lld skipped from an earlier run, in %.1f s%s\n",
                 static_cast<long long>(acked), static_cast<long long>(failed), static_cast<long long>(skip), seconds,
                 reconnects > 0 ? absl::StrCat(", ", reconnects, " reconnect(s)").c_str() : "");
  }
  if (!checkpoint_status.ok()) std::fprintf(stderr, "scanctl: %s\n", std::string(checkpoint_status.message()).c_str());
  if (!status.ok()) return RpcFailed("Ingest", status);
  if (!source_status.ok()) return Fail(kExitUsage, absl::StrCat("reading the input: ", source_status.ToString()));
  if (failed > 0) return Fail(kExitError, absl::StrCat(failed, " items failed; rerun with --restart to resend all"));
  return kExitOk;
}

}  // namespace cli
}  // namespace scanserve
