// scanctl: the command-line client of scanserve. Reads the global flags and runs the command
// (commands.h); see kUsage (scanctl --help) for the commands, and exit_codes.h for the exit codes
// scripts can rely on.
#include <cstdio>
#include <cstdlib>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "client/commands.h"
#include "client/connection.h"
#include "client/exit_codes.h"
#include "client/output.h"

namespace scanserve {
namespace cli {
namespace {

constexpr char kUsage[] = R"(Usage: scanctl [global flags] COMMAND [arguments]

Talks to a scanserve server (scanserve.v1.ScanService over gRPC).

Global flags (accepted anywhere on the line):
  --server HOST:PORT    server address [$SCANCTL_SERVER, else 127.0.0.1:50051]
  --token TOKEN         bearer token for a server started with --auth-token [$SCANCTL_TOKEN]
  --token-file FILE     read the token from FILE (its one line besides blank and '#' ones)
  --tls                 connect with TLS, trusting the system's CA certificates
  --tls-ca FILE         connect with TLS, trusting the CA certificates in FILE (PEM)
  --tls-cert FILE       this client's certificate chain (PEM), for a server started with
                        --tls-client-ca (mutual TLS); with --tls-key
  --tls-key FILE        the private key (PEM) of --tls-cert
  --timeout SECONDS     deadline of each call; 0 = none [30]
  --json                print JSON (one document per command) instead of tables
  --help                show this text

Commands:
  search-images "TEXT" ["TEXT"...] [--top-k K] [--collection C] [--where KEY=VALUE]... [--explain]
      text -> image search; --explain shows, per query word, the region it attends to
  search-captions (--image-id ID | --features FILE.npy | --image FILE)... [--top-k K] [--collection C]
                  [--where KEY=VALUE]...
      image -> text search, for a stored image, (k, d) float region features, or an image file
      (JPEG/PNG/WebP, sent as bytes: the server's detector extracts its regions; needs a server
      started with --detector-dir). Each flag may repeat: one result list per query, in order
  upsert-caption ID "TEXT" [--collection C] [--meta KEY=VALUE]...
  upsert-image ID (--features FILE.npy [--boxes FILE.npy] [--labels FILE.txt] | --image FILE)
               [--collection C] [--meta KEY=VALUE]...
      (k, d) region features with optional (k, 4) boxes x1,y1,x2,y2 and k labels (one per line); or
      an image file (JPEG/PNG/WebP) sent as bytes, whose regions, boxes and labels the server's
      detector extracts (needs --detector-dir on the server)
  delete (--image ID | --caption ID)...
  update (--image ID | --caption ID)... [--collection C] [--meta KEY=VALUE]... [--remove-meta KEY]...
      changes stored items' collection and metadata (the same change for each id) without sending
      their content again; scores do not change
  get (--image ID | --caption ID)...
      stored items as they were sent: collection, metadata, caption text; an image's region count,
      boxes and labels (not its features; "features kept" where the server stored them). Exit 3
      when an id is unknown
  list images|captions [--collection C] [--page-size N] [--limit N]
      stored ids in byte order, one per line, every page (or the first --limit ids)
  changes [--after SEQUENCE] [--limit N]
      the store's change log: items upserted, updated or deleted after SEQUENCE (default 0: the
      oldest kept), oldest first, at most N (default 100, up to 10000), with the newest sequence
  snapshot [NAME]
      a restorable copy of the store, in NAME (default snapshot-YYYYMMDDTHHMMSSZ) under the server's
      --snapshot-dir; restore by starting scanserve with --data-dir set to the printed directory
  stats
      counts, models, memory, version
  health [--service NAME]
      grpc.health.v1 Check of NAME ("" = the whole server); exit 4 unless SERVING
  import precomp --data-dir DIR --split SPLIT [--collection C] [--images-only | --captions-only]
      streams a SCAN precomputed split (SPLIT_ims.npy, SPLIT_caps.txt) as images SPLIT/img/N and
      captions SPLIT/cap/N (metadata image=SPLIT/img/N/5)
  import tsv FILE.tsv [--collection C] [--id-prefix P] [--feature-dim N]
             [--objects-vocab objects_vocab.txt --attributes-vocab attributes_vocab.txt]
      streams bottom-up-attention TSV images (6-column or LXMERT 10-column layout) with their boxes
      (and region labels, given the Visual Genome vocabularies)
  import images PATH... [--recursive] [--collection C] [--id-prefix P] [--max-image-bytes BYTES]
      streams image files (.jpg, .jpeg, .png, .webp) as image bytes through the server's detector
      (needs --detector-dir on the server). PATH is a file (id: its name without the extension) or a
      directory (its image files; id: the path below it without the extension); metadata
      file=NAME. Files above --max-image-bytes (default 32M, the server's default) are refused
      before sending; the window defaults to 16 (each image takes the detector seconds)
    import flags: --resume-file FILE (default: next to the input), --restart (ignore the
      checkpoint), --window N (unacknowledged items in flight, default 256), --no-progress,
      --max-reconnects N (default 8)
    An import keeps a checkpoint of the last acknowledged item; rerunning it resumes after that.
    A stream cut short (UNAVAILABLE, RESOURCE_EXHAUSTED, ABORTED: a server restarting, a rolling
    update, the server's --max-connection-age-s) is reopened where it stopped, with backoff, up to
    --max-reconnects times in a row without progress.
  copy --to HOST:PORT [--collection C] [--images-only | --captions-only] [--batch N]
       [--resume-file FILE] [--restart] [--no-progress] [--max-retries N] [--follow]
      copies what --server stores into the server at --to, which encodes it again with its own
      models: how a collection moves to retrained weights without the detector. Images go with the
      region features the source kept (scanserve --region-features keep; others are listed and not
      copied, exit 1), boxes, labels, collection and metadata; captions with their text. Both
      servers take the same token and TLS flags. --batch: images per call (1..32, default 16;
      captions go 256 at a time). With --resume-file, a rerun resumes after the last id copied.
      Writes the source takes meanwhile are applied at the end from its change log (upserts, and
      deletes of what it no longer has), so the target ends equal to the source; a rerun with the
      same --resume-file catches up again. --follow keeps catching up (every second) until
      SIGINT/SIGTERM: writes go on while clients move to the target; it waits out either server
      being down (a restart) for as long as it takes. The progress line, and changes_behind in
      --json's summary, say how many of the source's changes are not applied yet
  bench ("TEXT"... | --captions FILE | --image-id ID... | --image-ids FILE) [--concurrency N[,N...]]
        [--duration SECONDS] [--requests N] [--warmup SECONDS] [--queries-per-call Q] [--top-k K]
        [--collection C] [--where KEY=VALUE]...
      closed-loop load test through gRPC: per concurrency level (default 1), that many clients
      (one connection each, all connected first: exit 4 when one cannot be within --timeout)
      search back to back, cycling through the captions (text -> image; a file has one per line)
      or stored image ids (image -> text); after --warmup (default 1 s) it measures --duration
      (default 10 s) or --requests calls, and prints calls, errors, queries/s and p50/p90/p99/max
      latency per level. Exit 1 when any measured call failed

Exit codes: 0 ok, 1 server/RPC error, 2 usage error (or unreadable input), 3 not found,
            4 server unavailable or not serving.
)";

std::string EnvOr(const char* name, const std::string& fallback) {
  const char* value = std::getenv(name);
  return value != nullptr && *value != '\0' ? value : fallback;
}

int Main(int argc, char** argv) {
  // Global flags anywhere; the first other word is the command, the rest its arguments.
  ConnectionOptions connection_options;
  connection_options.server = EnvOr("SCANCTL_SERVER", connection_options.server);
  connection_options.token = EnvOr("SCANCTL_TOKEN", "");
  bool json = false;
  std::string command;
  std::vector<std::string> command_args;
  const std::set<std::string> global_values = {"--server",   "--token",    "--token-file", "--tls-ca",
                                               "--tls-cert", "--tls-key", "--timeout"};
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    std::string value;
    bool has_value = false;
    if (const size_t eq = arg.find('='); arg.rfind("--", 0) == 0 && eq != std::string::npos &&
                                         global_values.count(arg.substr(0, eq)) > 0) {
      value = arg.substr(eq + 1);
      arg = arg.substr(0, eq);
      has_value = true;
    }
    if (arg == "--help" || arg == "-h") {
      std::fputs(kUsage, stdout);
      return kExitOk;
    }
    if (arg == "--json") {
      json = true;
    } else if (arg == "--tls") {
      connection_options.tls = true;
    } else if (global_values.count(arg) > 0) {
      if (!has_value) {
        if (i + 1 >= argc) return UsageError(absl::StrCat(arg, " needs a value"));
        value = argv[++i];
      }
      if (arg == "--server") {
        connection_options.server = value;
      } else if (arg == "--token") {
        connection_options.token = value;
      } else if (arg == "--token-file") {
        absl::StatusOr<std::string> token = ReadBearerTokenFile(value);
        if (!token.ok()) return Fail(kExitUsage, std::string(token.status().message()));
        connection_options.token = *std::move(token);
      } else if (arg == "--tls-ca") {
        connection_options.tls_ca = value;
      } else if (arg == "--tls-cert") {
        connection_options.tls_cert = value;
      } else if (arg == "--tls-key") {
        connection_options.tls_key = value;
      } else if (arg == "--timeout") {
        double seconds = 0;
        if (!absl::SimpleAtod(value, &seconds) || !(seconds >= 0)) {
          return UsageError(absl::StrCat("--timeout: expected seconds >= 0, got '", value, "'"));
        }
        connection_options.timeout_s = seconds;
      }
    } else if (command.empty() && arg.rfind("--", 0) != 0) {
      command = arg;
    } else {
      command_args.push_back(argv[i]);
    }
  }
  if (command.empty()) return UsageError("no command given");
  // bench makes a connection per client from the options (RunBench reports bad TLS files).
  if (command == "bench") return Bench(connection_options, command_args, json);
  if (command == "copy") return Copy(connection_options, command_args, json);

  using Command = int (*)(Connection&, const std::vector<std::string>&, bool);
  const std::map<std::string, Command> commands = {
      {"search-images", SearchImages}, {"search-captions", SearchCaptions}, {"upsert-caption", UpsertCaption},
      {"upsert-image", UpsertImage},   {"update", Update},                  {"delete", Delete},
      {"get", Get},                    {"list", List},                      {"snapshot", Snapshot},
      {"stats", Stats},                {"health", Health},                  {"import", Import},
      {"changes", Changes}};
  const auto it = commands.find(command);
  if (it == commands.end()) return UsageError(absl::StrCat("unknown command '", command, "'"));
  absl::StatusOr<std::unique_ptr<Connection>> connection = Connection::Create(connection_options);
  if (!connection.ok()) return Fail(kExitUsage, std::string(connection.status().message()));
  return it->second(**connection, command_args, json);
}

}  // namespace
}  // namespace cli
}  // namespace scanserve

int main(int argc, char** argv) { return scanserve::cli::Main(argc, argv); }

