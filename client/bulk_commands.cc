// The commands that move many items or calls: import, copy, bench.
#include <cstdio>
#include <filesystem>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "client/bench.h"
#include "client/commands.h"
#include "client/copy.h"
#include "client/exit_codes.h"
#include "client/import.h"
#include "client/ingest_source.h"
#include "client/output.h"
#include "engine/common/file_read.h"

namespace scanserve {
namespace cli {

namespace {

// A byte count with an optional binary suffix K, M or G (as the server's flags take it).
absl::StatusOr<int64_t> ParseByteCount(const std::string& text) {
  std::string digits = text;
  int64_t scale = 1;
  if (!digits.empty()) {
    const char suffix = absl::ascii_toupper(digits.back());
    scale = suffix == 'K' ? int64_t{1} << 10 : suffix == 'M' ? int64_t{1} << 20 : suffix == 'G' ? int64_t{1} << 30 : 1;
    if (scale != 1) digits.pop_back();
  }
  int64_t value = 0;
  if (!absl::SimpleAtoi(digits, &value) || value < 1 || value > (int64_t{1} << 40) / scale) {
    return absl::InvalidArgumentError(absl::StrCat("expected a byte count such as 32M, got '", text, "'"));
  }
  return value * scale;
}

// The import flags; the checkpoint next to the input unless --resume-file says otherwise.
absl::StatusOr<ImportOptions> ImportOptionsFrom(const ParsedArgs& args, const std::string& default_checkpoint,
                                                bool json, int default_window) {
  ImportOptions options;
  options.checkpoint_path = args.Value("resume-file").value_or(default_checkpoint);
  options.restart = args.Switch("restart");
  options.progress = !args.Switch("no-progress");
  options.json = json;
  absl::StatusOr<std::optional<int64_t>> window = args.Int("window", 1, 1'000'000);
  if (!window.ok()) return window.status();
  options.window = static_cast<int>(window->value_or(default_window));
  absl::StatusOr<std::optional<int64_t>> reconnects = args.Int("max-reconnects", 0, 1000);
  if (!reconnects.ok()) return reconnects.status();
  if (reconnects->has_value()) options.max_reconnects = static_cast<int>(**reconnects);
  return options;
}

// Non-empty lines of a file (captions or ids for bench).
absl::StatusOr<std::vector<std::string>> ReadLines(const std::string& path, const char* flag) {
  absl::StatusOr<std::string> text = ReadWholeFile(path, flag);
  if (!text.ok()) return text.status();
  std::vector<std::string> lines;
  for (absl::string_view line : absl::StrSplit(*text, '\n')) {
    std::string stripped(absl::StripAsciiWhitespace(line));
    if (!stripped.empty()) lines.push_back(std::move(stripped));
  }
  if (lines.empty()) return absl::InvalidArgumentError(absl::StrCat(flag, ": ", path, " has no non-empty line"));
  return lines;
}

}  // namespace

int Import(Connection& connection, const std::vector<std::string>& argv, bool json) {
  if (argv.empty()) return UsageError("import needs a kind: precomp, tsv or images");
  const std::string kind = argv[0];
  const std::vector<std::string> rest(argv.begin() + 1, argv.end());
  const std::set<std::string> import_flags = {"resume-file", "window", "max-reconnects"};
  const std::set<std::string> import_switches = {"restart", "no-progress"};
  if (kind == "precomp") {
    cli::ArgSpec spec{{"data-dir", "split", "collection"}, {"images-only", "captions-only"}};
    spec.value_flags.insert(import_flags.begin(), import_flags.end());
    spec.switches.insert(import_switches.begin(), import_switches.end());
    absl::StatusOr<ParsedArgs> args = Parse(rest, spec);
    if (!args.ok()) return UsageError(std::string(args.status().message()));
    if (!args->positionals().empty()) return UsageError("import precomp takes flags only");
    PrecompOptions options;
    options.data_dir = args->Value("data-dir").value_or("");
    options.split = args->Value("split").value_or("");
    if (options.data_dir.empty() || options.split.empty()) return UsageError("import precomp needs --data-dir and --split");
    options.collection = args->Value("collection").value_or("");
    if (args->Switch("images-only") && args->Switch("captions-only")) {
      return UsageError("--images-only and --captions-only exclude each other");
    }
    options.images = !args->Switch("captions-only");
    options.captions = !args->Switch("images-only");
    absl::StatusOr<ImportOptions> import_options = ImportOptionsFrom(
        *args, (std::filesystem::path(options.data_dir) / (options.split + ".scanctl-import.json")).string(), json,
        ImportOptions().window);
    if (!import_options.ok()) return UsageError(std::string(import_options.status().message()));
    absl::StatusOr<std::unique_ptr<PrecompSource>> source = PrecompSource::Open(options);
    if (!source.ok()) return Fail(kExitUsage, source.status().ToString());
    std::fprintf(stderr, "scanctl: importing %lld images and %lld captions from %s/%s\n",
                 static_cast<long long>((*source)->num_images()), static_cast<long long>((*source)->num_captions()),
                 options.data_dir.c_str(), options.split.c_str());
    return RunImport(connection, **source, *import_options);
  }
  if (kind == "tsv") {
    cli::ArgSpec spec{{"collection", "id-prefix", "feature-dim", "objects-vocab", "attributes-vocab"}, {}};
    spec.value_flags.insert(import_flags.begin(), import_flags.end());
    spec.switches.insert(import_switches.begin(), import_switches.end());
    absl::StatusOr<ParsedArgs> args = Parse(rest, spec);
    if (!args.ok()) return UsageError(std::string(args.status().message()));
    if (args->positionals().size() != 1) return UsageError("usage: import tsv FILE.tsv");
    TsvOptions options;
    options.path = args->positionals()[0];
    options.collection = args->Value("collection").value_or("");
    options.id_prefix = args->Value("id-prefix").value_or("");
    options.objects_vocab = args->Value("objects-vocab").value_or("");
    options.attributes_vocab = args->Value("attributes-vocab").value_or("");
    absl::StatusOr<std::optional<int64_t>> dim = args->Int("feature-dim", 0, 1 << 20);
    if (!dim.ok()) return UsageError(std::string(dim.status().message()));
    options.feature_dim = dim->value_or(2048);
    absl::StatusOr<ImportOptions> import_options =
        ImportOptionsFrom(*args, options.path + ".scanctl-import.json", json, ImportOptions().window);
    if (!import_options.ok()) return UsageError(std::string(import_options.status().message()));
    absl::StatusOr<std::unique_ptr<TsvSource>> source = TsvSource::Open(options);
    if (!source.ok()) return Fail(kExitUsage, source.status().ToString());
    std::fprintf(stderr, "scanctl: importing %lld images from %s\n", static_cast<long long>((*source)->total()),
                 options.path.c_str());
    return RunImport(connection, **source, *import_options);
  }
  if (kind == "images") {
    cli::ArgSpec spec{{"collection", "id-prefix", "max-image-bytes"}, {"recursive"}};
    spec.value_flags.insert(import_flags.begin(), import_flags.end());
    spec.switches.insert(import_switches.begin(), import_switches.end());
    absl::StatusOr<ParsedArgs> args = Parse(rest, spec);
    if (!args.ok()) return UsageError(std::string(args.status().message()));
    if (args->positionals().empty()) return UsageError("usage: import images PATH... (image files or directories)");
    ImageFilesOptions options;
    options.paths = args->positionals();
    options.recursive = args->Switch("recursive");
    options.collection = args->Value("collection").value_or("");
    options.id_prefix = args->Value("id-prefix").value_or("");
    if (const std::optional<std::string> max_bytes = args->Value("max-image-bytes")) {
      absl::StatusOr<int64_t> parsed = ParseByteCount(*max_bytes);
      if (!parsed.ok()) return UsageError(absl::StrCat("--max-image-bytes: ", parsed.status().message()));
      options.max_image_bytes = *parsed;
    }
    absl::StatusOr<std::unique_ptr<ImageFilesSource>> source = ImageFilesSource::Open(options);
    if (!source.ok()) return Fail(kExitUsage, source.status().ToString());
    if ((*source)->total() == 0) return Fail(kExitUsage, "import images: no .jpg, .jpeg, .png or .webp files found");
    std::fprintf(stderr, "scanctl: importing %lld image files through the server's detector\n",
                 static_cast<long long>((*source)->total()));
    // The checkpoint sits next to the first path (inside it, when it is a directory).
    const std::filesystem::path first(options.paths.front());
    const std::string checkpoint =
        std::filesystem::is_directory(first)
            ? (first / ".scanctl-import.json").string()
            : (first.parent_path() / (first.filename().string() + ".scanctl-import.json")).string();
    // Each image takes the detector seconds: a smaller window.
    absl::StatusOr<ImportOptions> import_options = ImportOptionsFrom(*args, checkpoint, json, 16);
    if (!import_options.ok()) return UsageError(std::string(import_options.status().message()));
    return RunImport(connection, **source, *import_options);
  }
  return UsageError(absl::StrCat("unknown import kind '", kind, "' (precomp, tsv or images)"));
}

int Copy(const ConnectionOptions& connection_options, const std::vector<std::string>& argv, bool json) {
  absl::StatusOr<ParsedArgs> args =
      Parse(argv, {{"to", "collection", "batch", "resume-file", "max-retries"},
                   {"images-only", "captions-only", "restart", "no-progress", "follow"}});
  if (!args.ok()) return UsageError(std::string(args.status().message()));
  if (!args->positionals().empty()) return UsageError("copy takes flags only");
  const std::optional<std::string> to = args->Value("to");
  if (!to.has_value() || to->empty()) return UsageError("copy needs --to HOST:PORT (the server to copy into)");
  if (args->Switch("images-only") && args->Switch("captions-only")) {
    return UsageError("--images-only and --captions-only exclude each other");
  }
  CopyOptions options;
  options.collection = args->Value("collection").value_or("");
  options.images = !args->Switch("captions-only");
  options.captions = !args->Switch("images-only");
  absl::StatusOr<std::optional<int64_t>> batch = args->Int("batch", 1, 32);
  if (!batch.ok()) return UsageError(std::string(batch.status().message()));
  options.image_batch = static_cast<int>(batch->value_or(options.image_batch));
  absl::StatusOr<std::optional<int64_t>> retries = args->Int("max-retries", 0, 1000);
  if (!retries.ok()) return UsageError(std::string(retries.status().message()));
  options.max_retries = static_cast<int>(retries->value_or(options.max_retries));
  options.checkpoint_path = args->Value("resume-file").value_or("");
  options.restart = args->Switch("restart");
  options.progress = !args->Switch("no-progress");
  options.follow = args->Switch("follow");
  options.json = json;
  ConnectionOptions target_options = connection_options;
  target_options.server = *to;
  absl::StatusOr<std::unique_ptr<Connection>> source = Connection::Create(connection_options);
  if (!source.ok()) return Fail(kExitUsage, std::string(source.status().message()));
  absl::StatusOr<std::unique_ptr<Connection>> target = Connection::Create(target_options);
  if (!target.ok()) return Fail(kExitUsage, std::string(target.status().message()));
  return RunCopy(**source, **target, options);
}

int Bench(const ConnectionOptions& connection_options, const std::vector<std::string>& argv, bool json) {
  absl::StatusOr<ParsedArgs> args =
      Parse(argv, {{"captions", "image-id", "image-ids", "concurrency", "duration", "requests", "warmup",
                    "queries-per-call", "top-k", "collection", "where"},
                   {}});
  if (!args.ok()) return UsageError(std::string(args.status().message()));
  BenchOptions options;
  options.captions = args->positionals();
  if (std::optional<std::string> file = args->Value("captions")) {
    absl::StatusOr<std::vector<std::string>> lines = ReadLines(*file, "--captions");
    if (!lines.ok()) return Fail(kExitUsage, lines.status().ToString());
    options.captions.insert(options.captions.end(), lines->begin(), lines->end());
  }
  options.image_ids = args->Values("image-id");
  if (std::optional<std::string> file = args->Value("image-ids")) {
    absl::StatusOr<std::vector<std::string>> lines = ReadLines(*file, "--image-ids");
    if (!lines.ok()) return Fail(kExitUsage, lines.status().ToString());
    options.image_ids.insert(options.image_ids.end(), lines->begin(), lines->end());
  }
  if (options.captions.empty() == options.image_ids.empty()) {
    return UsageError("bench needs captions (\"TEXT\"... or --captions FILE) or stored image ids "
                      "(--image-id ID... or --image-ids FILE), not both");
  }
  if (std::optional<std::string> levels = args->Value("concurrency")) {
    options.concurrency.clear();
    for (absl::string_view part : absl::StrSplit(*levels, ',')) {
      int level = 0;
      if (!absl::SimpleAtoi(part, &level) || level < 1 || level > 1024) {
        return UsageError(absl::StrCat("--concurrency: expected levels in 1..1024 separated by commas, got '",
                                       *levels, "'"));
      }
      options.concurrency.push_back(level);
    }
  }
  absl::StatusOr<std::optional<double>> duration = args->Double("duration", 0.1, 86400);
  absl::StatusOr<std::optional<double>> warmup = args->Double("warmup", 0, 3600);
  absl::StatusOr<std::optional<int64_t>> requests = args->Int("requests", 1, int64_t{1} << 40);
  absl::StatusOr<std::optional<int64_t>> per_call = args->Int("queries-per-call", 1, 1024);
  absl::StatusOr<int32_t> top_k = TopK(*args);
  for (const absl::Status& status : {duration.status(), warmup.status(), requests.status(), per_call.status(),
                                     top_k.status()}) {
    if (!status.ok()) return UsageError(std::string(status.message()));
  }
  if (duration->has_value() && requests->has_value()) return UsageError("give --duration or --requests, not both");
  options.duration_s = duration->value_or(options.duration_s);
  options.warmup_s = warmup->value_or(options.warmup_s);
  options.max_calls = requests->value_or(0);
  options.queries_per_call = static_cast<int>(per_call->value_or(1));
  options.top_k = *top_k;
  if (absl::Status status = FillFilter(*args, &options.filter); !status.ok()) {
    return UsageError(std::string(status.message()));
  }
  absl::StatusOr<std::vector<BenchLevel>> levels = RunBench(connection_options, options);
  if (!levels.ok()) {
    const bool unavailable = absl::IsUnavailable(levels.status());
    return Fail(unavailable ? kExitUnavailable : kExitUsage, absl::StrCat("bench: ", levels.status().message()));
  }
  return ReportBench(options, *levels, json);
}

}  // namespace cli
}  // namespace scanserve
