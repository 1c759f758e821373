// scanctl: the command-line client of scanserve. See kUsage (scanctl --help) for the commands, and
// exit_codes.h for the exit codes scripts can rely on.
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "absl/time/time.h"
#include "client/bench.h"
#include "client/cli_args.h"
#include "client/connection.h"
#include "client/copy.h"
#include "client/exit_codes.h"
#include "client/features.h"
#include "client/image_files.h"
#include "client/import.h"
#include "client/ingest_source.h"
#include "client/output.h"
#include "engine/common/file_read.h"

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

int UsageError(const std::string& message) {
  std::fprintf(stderr, "scanctl: %s\nRun 'scanctl --help' for usage.\n", message.c_str());
  return kExitUsage;
}

// The exit code of a per-item result.
int ItemExitCode(int code) {
  if (code == 0) return kExitOk;
  if (code == static_cast<int>(grpc::StatusCode::NOT_FOUND)) return kExitNotFound;
  if (code == static_cast<int>(grpc::StatusCode::UNAVAILABLE)) return kExitUnavailable;
  return kExitError;
}

// The worst of several item exit codes: any error beats not-found beats ok.
int CombineItemExitCodes(int a, int b) {
  auto rank = [](int code) { return code == kExitOk ? 0 : code == kExitNotFound ? 1 : 2; };
  return rank(a) >= rank(b) ? a : b;
}

absl::Status FillFilter(const ParsedArgs& args, v1::Filter* filter) {
  if (std::optional<std::string> collection = args.Value("collection")) filter->set_collection(*collection);
  absl::StatusOr<std::map<std::string, std::string>> where = args.KeyValues("where");
  if (!where.ok()) return where.status();
  for (const auto& [key, value] : *where) (*filter->mutable_metadata())[key] = value;
  return absl::OkStatus();
}

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

absl::StatusOr<int32_t> TopK(const ParsedArgs& args) {
  absl::StatusOr<std::optional<int64_t>> top_k = args.Int("top-k", 1, 1'000'000);
  if (!top_k.ok()) return top_k.status();
  return static_cast<int32_t>(top_k->value_or(10));
}

std::string FormatMetadata(const google::protobuf::Map<std::string, std::string>& metadata) {
  std::map<std::string, std::string> sorted(metadata.begin(), metadata.end());
  std::string text;
  for (const auto& [key, value] : sorted) absl::StrAppend(&text, text.empty() ? "" : ",", key, "=", value);
  return text;
}

// ---- commands ----

int SearchImages(Connection& connection, const std::vector<std::string>& argv, bool json) {
  absl::StatusOr<ParsedArgs> args = Parse(argv, {{"top-k", "collection", "where"}, {"explain"}});
  if (!args.ok()) return UsageError(std::string(args.status().message()));
  if (args->positionals().empty()) return UsageError("search-images needs the query text");
  v1::SearchImagesRequest request;
  for (const std::string& query : args->positionals()) request.add_queries(query);
  absl::StatusOr<int32_t> top_k = TopK(*args);
  if (!top_k.ok()) return UsageError(std::string(top_k.status().message()));
  request.set_top_k(*top_k);
  request.set_explain(args->Switch("explain"));
  if (absl::Status status = FillFilter(*args, request.mutable_filter()); !status.ok()) {
    return UsageError(std::string(status.message()));
  }
  v1::SearchImagesResponse response;
  const std::unique_ptr<grpc::ClientContext> context = connection.NewContext();
  const grpc::Status status = connection.scan().SearchImages(context.get(), request, &response);
  if (!status.ok()) return RpcFailed("SearchImages", status, *context);
  if (json) {
    PrintJson(response);
    return kExitOk;
  }
  for (int q = 0; q < response.results_size(); ++q) {
    std::printf("%squery %d: \"%s\"\n", q > 0 ? "\n" : "", q, request.queries(q).c_str());
    const v1::ImageHits& hits = response.results(q);
    if (hits.hits_size() == 0) {
      std::printf("  (no images)\n");
      continue;
    }
    Table table({"  rank", "id", "score", "collection", "metadata"});
    for (int i = 0; i < hits.hits_size(); ++i) {
      const v1::ImageHit& hit = hits.hits(i);
      table.AddRow({absl::StrCat("  ", i + 1), hit.id(), FormatScore(hit.score()), hit.collection(),
                    FormatMetadata(hit.metadata())});
    }
    table.Print(stdout);
    if (!request.explain()) continue;
    for (int i = 0; i < hits.hits_size(); ++i) {
      const v1::ImageHit& hit = hits.hits(i);
      std::printf("  explain #%d %s:\n", i + 1, hit.id().c_str());
      Table words({"    word", "region", "attention", "label", "box"});
      for (const v1::WordExplanation& word : hit.explanation()) {
        words.AddRow({absl::StrCat("    ", word.word()), absl::StrCat(word.region()),
                      absl::StrFormat("%.3f", word.attention()), word.label(),
                      word.has_box() ? absl::StrFormat("%.0f,%.0f,%.0f,%.0f", word.box().x1(), word.box().y1(),
                                                       word.box().x2(), word.box().y2())
                                     : ""});
      }
      words.Print(stdout);
    }
  }
  return kExitOk;
}

int SearchCaptions(Connection& connection, const std::vector<std::string>& argv, bool json) {
  absl::StatusOr<ParsedArgs> args =
      Parse(argv, {{"top-k", "collection", "where", "image-id", "features", "image"}, {}});
  if (!args.ok()) return UsageError(std::string(args.status().message()));
  if (!args->positionals().empty()) return UsageError("search-captions takes no positional arguments");
  const std::vector<std::string> ids = args->Values("image-id");
  const std::vector<std::string> feature_files = args->Values("features");
  const std::vector<std::string> image_files = args->Values("image");
  if (ids.empty() && feature_files.empty() && image_files.empty()) {
    return UsageError("search-captions needs --image-id ID, --features FILE.npy or --image FILE");
  }
  v1::SearchCaptionsRequest request;
  std::vector<std::string> labels;  // how each query is shown
  for (const std::string& id : ids) {
    request.add_queries()->set_image_id(id);
    labels.push_back(absl::StrCat("image ", id));
  }
  for (const std::string& path : feature_files) {
    absl::StatusOr<FloatMatrix> features = ReadMatrixNpy(path, "--features");
    if (!features.ok()) return Fail(kExitUsage, features.status().ToString());
    SetRegionFeatures(features->data.data(), features->rows, features->cols,
                      request.add_queries()->mutable_region_features());
    labels.push_back(absl::StrCat(features->rows, "x", features->cols, " features from ", path));
  }
  for (const std::string& path : image_files) {
    absl::StatusOr<std::string> bytes = ReadImageFile(path);
    if (!bytes.ok()) return Fail(kExitUsage, absl::StrCat("--image ", bytes.status().message()));
    labels.push_back(absl::StrCat("image file ", path, " (", bytes->size(), " bytes)"));
    request.add_queries()->set_image_bytes(*std::move(bytes));
  }
  absl::StatusOr<int32_t> top_k = TopK(*args);
  if (!top_k.ok()) return UsageError(std::string(top_k.status().message()));
  request.set_top_k(*top_k);
  if (absl::Status status = FillFilter(*args, request.mutable_filter()); !status.ok()) {
    return UsageError(std::string(status.message()));
  }
  v1::SearchCaptionsResponse response;
  const std::unique_ptr<grpc::ClientContext> context = connection.NewContext();
  const grpc::Status status = connection.scan().SearchCaptions(context.get(), request, &response);
  if (!status.ok()) return RpcFailed("SearchCaptions", status, *context);
  if (json) {
    PrintJson(response);
    return kExitOk;
  }
  for (int q = 0; q < response.results_size(); ++q) {
    std::printf("%squery %d: %s\n", q > 0 ? "\n" : "", q,
                q < static_cast<int>(labels.size()) ? labels[static_cast<size_t>(q)].c_str() : "?");
    const v1::CaptionHits& hits = response.results(q);
    if (hits.hits_size() == 0) {
      std::printf("  (no captions)\n");
      continue;
    }
    Table table({"  rank", "id", "score", "text"});
    for (int i = 0; i < hits.hits_size(); ++i) {
      const v1::CaptionHit& hit = hits.hits(i);
      table.AddRow({absl::StrCat("  ", i + 1), hit.id(), FormatScore(hit.score()), hit.text()});
    }
    table.Print(stdout);
  }
  return kExitOk;
}

// Prints per-item results (table or JSON already printed by the caller) and returns the exit code.
int ReportItems(const char* kind, const google::protobuf::RepeatedPtrField<v1::ItemStatus>& results, bool json,
                Table* table) {
  int exit_code = kExitOk;
  for (const v1::ItemStatus& result : results) {
    exit_code = CombineItemExitCodes(exit_code, ItemExitCode(result.code()));
    if (!json) {
      table->AddRow({kind, result.id(), StatusCodeName(result.code()), result.message()});
    }
  }
  return exit_code;
}

// A response with per-item image_results and caption_results (Delete, UpdateItems): JSON, or a
// table on stdout (on stderr when an item failed); the exit code of the worst item.
template <typename Response>
int ReportImageAndCaptionResults(const Response& response, bool json) {
  if (json) PrintJson(response);
  Table table({"kind", "id", "result", "message"});
  const int images = ReportItems("image", response.image_results(), json, &table);
  const int captions = ReportItems("caption", response.caption_results(), json, &table);
  const int exit_code = CombineItemExitCodes(images, captions);
  if (!json) table.Print(exit_code == kExitOk ? stdout : stderr);
  return exit_code;
}

int UpsertCaption(Connection& connection, const std::vector<std::string>& argv, bool json) {
  absl::StatusOr<ParsedArgs> args = Parse(argv, {{"collection", "meta"}, {}});
  if (!args.ok()) return UsageError(std::string(args.status().message()));
  if (args->positionals().size() != 2) return UsageError("usage: upsert-caption ID \"TEXT\"");
  v1::UpsertCaptionsRequest request;
  v1::Caption* caption = request.add_captions();
  caption->set_id(args->positionals()[0]);
  caption->set_text(args->positionals()[1]);
  caption->set_collection(args->Value("collection").value_or(""));
  absl::StatusOr<std::map<std::string, std::string>> meta = args->KeyValues("meta");
  if (!meta.ok()) return UsageError(std::string(meta.status().message()));
  for (const auto& [key, value] : *meta) (*caption->mutable_metadata())[key] = value;
  v1::UpsertCaptionsResponse response;
  const std::unique_ptr<grpc::ClientContext> context = connection.NewContext();
  const grpc::Status status = connection.scan().UpsertCaptions(context.get(), request, &response);
  if (!status.ok()) return RpcFailed("UpsertCaptions", status, *context);
  if (json) PrintJson(response);
  Table table({"kind", "id", "result", "message"});
  const int exit_code = ReportItems("caption", response.results(), json, &table);
  if (!json) table.Print(exit_code == kExitOk ? stdout : stderr);
  return exit_code;
}

int SendUpsertImage(Connection& connection, const v1::UpsertImagesRequest& request, bool json) {
  v1::UpsertImagesResponse response;
  const std::unique_ptr<grpc::ClientContext> context = connection.NewContext();
  const grpc::Status status = connection.scan().UpsertImages(context.get(), request, &response);
  if (!status.ok()) return RpcFailed("UpsertImages", status, *context);
  if (json) PrintJson(response);
  Table table({"kind", "id", "result", "message"});
  const int exit_code = ReportItems("image", response.results(), json, &table);
  if (!json) table.Print(exit_code == kExitOk ? stdout : stderr);
  return exit_code;
}

int UpsertImage(Connection& connection, const std::vector<std::string>& argv, bool json) {
  absl::StatusOr<ParsedArgs> args = Parse(argv, {{"collection", "meta", "features", "boxes", "labels", "image"}, {}});
  if (!args.ok()) return UsageError(std::string(args.status().message()));
  if (args->positionals().size() != 1) {
    return UsageError("usage: upsert-image ID (--features FILE.npy | --image FILE)");
  }
  const std::optional<std::string> features_path = args->Value("features");
  const std::optional<std::string> image_path = args->Value("image");
  if (features_path.has_value() == image_path.has_value()) {
    return UsageError("upsert-image needs exactly one of --features FILE.npy and --image FILE");
  }
  if (image_path.has_value() && (args->Value("boxes").has_value() || args->Value("labels").has_value())) {
    return UsageError("--boxes and --labels go with --features; with --image the server's detector supplies them");
  }
  v1::UpsertImagesRequest request;
  v1::Image* image = request.add_images();
  image->set_id(args->positionals()[0]);
  image->set_collection(args->Value("collection").value_or(""));
  absl::StatusOr<std::map<std::string, std::string>> meta = args->KeyValues("meta");
  if (!meta.ok()) return UsageError(std::string(meta.status().message()));
  for (const auto& [key, value] : *meta) (*image->mutable_metadata())[key] = value;
  if (image_path.has_value()) {
    absl::StatusOr<std::string> bytes = ReadImageFile(*image_path);
    if (!bytes.ok()) return Fail(kExitUsage, absl::StrCat("--image ", bytes.status().message()));
    image->set_image_bytes(*std::move(bytes));
    return SendUpsertImage(connection, request, json);
  }
  absl::StatusOr<FloatMatrix> features = ReadMatrixNpy(*features_path, "--features");
  if (!features.ok()) return Fail(kExitUsage, features.status().ToString());
  SetRegionFeatures(features->data.data(), features->rows, features->cols, image->mutable_region_features());
  if (const std::optional<std::string> boxes_path = args->Value("boxes")) {
    absl::StatusOr<FloatMatrix> boxes = ReadMatrixNpy(*boxes_path, "--boxes");
    if (!boxes.ok()) return Fail(kExitUsage, boxes.status().ToString());
    if (boxes->cols != 4) return Fail(kExitUsage, absl::StrCat("--boxes ", *boxes_path, ": expected (k, 4), got (",
                                                               boxes->rows, ", ", boxes->cols, ")"));
    for (int64_t b = 0; b < boxes->rows; ++b) {
      v1::Box* box = image->add_boxes();
      box->set_x1(boxes->at(b, 0));
      box->set_y1(boxes->at(b, 1));
      box->set_x2(boxes->at(b, 2));
      box->set_y2(boxes->at(b, 3));
    }
  }
  if (const std::optional<std::string> labels_path = args->Value("labels")) {
    std::ifstream in(*labels_path);
    if (!in) return Fail(kExitUsage, absl::StrCat("--labels: cannot read ", *labels_path));
    std::string line;
    while (std::getline(in, line)) image->add_labels(std::string(absl::StripAsciiWhitespace(line)));
  }
  return SendUpsertImage(connection, request, json);
}

// `COMMAND (--image ID | --caption ID)...` as a request with image_ids and caption_ids (Delete,
// GetItems); the usage error's message otherwise.
template <typename Request>
absl::StatusOr<Request> IdsRequestFromArgs(const std::vector<std::string>& argv, const std::string& command) {
  absl::StatusOr<ParsedArgs> args = Parse(argv, {{"image", "caption"}, {}});
  if (!args.ok()) return args.status();
  if (!args->positionals().empty()) {
    return absl::InvalidArgumentError(command + " takes --image ID and --caption ID flags only");
  }
  Request request;
  for (const std::string& id : args->Values("image")) request.add_image_ids(id);
  for (const std::string& id : args->Values("caption")) request.add_caption_ids(id);
  if (request.image_ids_size() + request.caption_ids_size() == 0) {
    return absl::InvalidArgumentError(command + " needs at least one --image ID or --caption ID");
  }
  return request;
}

int Delete(Connection& connection, const std::vector<std::string>& argv, bool json) {
  absl::StatusOr<v1::DeleteRequest> request = IdsRequestFromArgs<v1::DeleteRequest>(argv, "delete");
  if (!request.ok()) return UsageError(std::string(request.status().message()));
  v1::DeleteResponse response;
  const std::unique_ptr<grpc::ClientContext> context = connection.NewContext();
  const grpc::Status status = connection.scan().Delete(context.get(), *request, &response);
  if (!status.ok()) return RpcFailed("Delete", status, *context);
  return ReportImageAndCaptionResults(response, json);
}

int Update(Connection& connection, const std::vector<std::string>& argv, bool json) {
  absl::StatusOr<ParsedArgs> args = Parse(argv, {{"image", "caption", "collection", "meta", "remove-meta"}, {}});
  if (!args.ok()) return UsageError(std::string(args.status().message()));
  if (!args->positionals().empty()) return UsageError("update takes flags only");
  absl::StatusOr<std::map<std::string, std::string>> meta = args->KeyValues("meta");
  if (!meta.ok()) return UsageError(std::string(meta.status().message()));
  v1::ItemUpdate change;
  if (std::optional<std::string> collection = args->Value("collection")) {
    change.set_set_collection(true);
    change.set_collection(*collection);
  }
  for (const auto& [key, value] : *meta) (*change.mutable_set_metadata())[key] = value;
  for (const std::string& key : args->Values("remove-meta")) change.add_remove_metadata(key);
  if (!change.set_collection() && change.set_metadata().empty() && change.remove_metadata().empty()) {
    return UsageError("update needs --collection, --meta or --remove-meta");
  }
  v1::UpdateItemsRequest request;
  for (const std::string& id : args->Values("image")) {
    v1::ItemUpdate* update = request.add_images();
    *update = change;
    update->set_id(id);
  }
  for (const std::string& id : args->Values("caption")) {
    v1::ItemUpdate* update = request.add_captions();
    *update = change;
    update->set_id(id);
  }
  if (request.images_size() + request.captions_size() == 0) {
    return UsageError("update needs at least one --image ID or --caption ID");
  }
  v1::UpdateItemsResponse response;
  const std::unique_ptr<grpc::ClientContext> context = connection.NewContext();
  const grpc::Status status = connection.scan().UpdateItems(context.get(), request, &response);
  if (!status.ok()) return RpcFailed("UpdateItems", status, *context);
  return ReportImageAndCaptionResults(response, json);
}

int Get(Connection& connection, const std::vector<std::string>& argv, bool json) {
  absl::StatusOr<v1::GetItemsRequest> request = IdsRequestFromArgs<v1::GetItemsRequest>(argv, "get");
  if (!request.ok()) return UsageError(std::string(request.status().message()));
  v1::GetItemsResponse response;
  const std::unique_ptr<grpc::ClientContext> context = connection.NewContext();
  const grpc::Status status = connection.scan().GetItems(context.get(), *request, &response);
  if (!status.ok()) return RpcFailed("GetItems", status, *context);
  if (json) PrintJson(response);
  Table table({"kind", "id", "result", "collection", "content", "metadata"});
  int exit_code = kExitOk;
  for (const v1::StoredImage& image : response.images()) {
    exit_code = CombineItemExitCodes(exit_code, ItemExitCode(image.status().code()));
    if (image.status().code() != 0) {
      table.AddRow({"image", image.status().id(), StatusCodeName(image.status().code()), "", image.status().message(), ""});
      continue;
    }
    std::string content = absl::StrCat(image.num_regions(), " regions");
    if (image.image().boxes_size() > 0) absl::StrAppend(&content, ", boxes");
    if (image.image().labels_size() > 0) {
      const int shown = std::min(image.image().labels_size(), 3);
      absl::StrAppend(&content, ", labels ");
      for (int i = 0; i < shown; ++i) absl::StrAppend(&content, i > 0 ? "/" : "", image.image().labels(i));
      if (shown < image.image().labels_size()) absl::StrAppend(&content, "/...");
    }
    if (image.has_region_features()) absl::StrAppend(&content, ", features kept");
    if (image.synthetic()) absl::StrAppend(&content, " (synthetic, not stored)");
    table.AddRow({"image", image.image().id(), "OK", image.image().collection(), content,
                  FormatMetadata(image.image().metadata())});
  }
  for (const v1::StoredCaption& caption : response.captions()) {
    exit_code = CombineItemExitCodes(exit_code, ItemExitCode(caption.status().code()));
    if (caption.status().code() != 0) {
      table.AddRow({"caption", caption.status().id(), StatusCodeName(caption.status().code()), "",
                    caption.status().message(), ""});
      continue;
    }
    table.AddRow({"caption", caption.caption().id(), "OK", caption.caption().collection(),
                  caption.synthetic() ? std::string("(synthetic, not stored)") : caption.caption().text(),
                  FormatMetadata(caption.caption().metadata())});
  }
  if (!json) table.Print(exit_code == kExitOk ? stdout : stderr);
  return exit_code;
}

int List(Connection& connection, const std::vector<std::string>& argv, bool json) {
  absl::StatusOr<ParsedArgs> args = Parse(argv, {{"collection", "page-size", "limit"}, {}});
  if (!args.ok()) return UsageError(std::string(args.status().message()));
  if (args->positionals().size() != 1 ||
      (args->positionals()[0] != "images" && args->positionals()[0] != "captions")) {
    return UsageError("usage: list images|captions [--collection C] [--page-size N] [--limit N]");
  }
  absl::StatusOr<std::optional<int64_t>> page_size = args->Int("page-size", 1, 10000);
  if (!page_size.ok()) return UsageError(std::string(page_size.status().message()));
  absl::StatusOr<std::optional<int64_t>> limit = args->Int("limit", 1, int64_t{1} << 40);
  if (!limit.ok()) return UsageError(std::string(limit.status().message()));
  v1::ListItemsRequest request;
  request.set_kind(args->positionals()[0] == "images" ? v1::ITEM_KIND_IMAGE : v1::ITEM_KIND_CAPTION);
  request.set_collection(args->Value("collection").value_or(""));
  // --json: one document, every listed id and the server's token for the rest (empty at the end).
  // With --limit, the last page asks for just what is left, so that its token resumes exactly there.
  v1::ListItemsResponse all;
  int64_t listed = 0;
  while (true) {
    int64_t want = page_size->value_or(0);  // 0: the server's default (1000)
    if (limit->has_value()) want = std::min(want == 0 ? 1000 : want, **limit - listed);
    request.set_page_size(static_cast<int32_t>(want));
    v1::ListItemsResponse page;
    const std::unique_ptr<grpc::ClientContext> context = connection.NewContext();
    const grpc::Status status = connection.scan().ListItems(context.get(), request, &page);
    if (!status.ok()) return RpcFailed("ListItems", status, *context);
    for (const std::string& id : page.ids()) {
      if (json) {
        all.add_ids(id);
      } else {
        std::printf("%s\n", id.c_str());
      }
    }
    listed += page.ids_size();
    all.set_next_page_token(page.next_page_token());
    if (page.next_page_token().empty() || (limit->has_value() && listed >= **limit)) break;
    request.set_page_token(page.next_page_token());
  }
  if (json) PrintJson(all);
  return kExitOk;
}

int Changes(Connection& connection, const std::vector<std::string>& argv, bool json) {
  absl::StatusOr<ParsedArgs> args = Parse(argv, {{"after", "limit"}, {}});
  if (!args.ok()) return UsageError(std::string(args.status().message()));
  if (!args->positionals().empty()) return UsageError("usage: changes [--after SEQUENCE] [--limit N]");
  absl::StatusOr<std::optional<int64_t>> after = args->Int("after", 0, INT64_MAX);
  if (!after.ok()) return UsageError(std::string(after.status().message()));
  absl::StatusOr<std::optional<int64_t>> limit = args->Int("limit", 1, 10000);
  if (!limit.ok()) return UsageError(std::string(limit.status().message()));
  v1::ListChangesRequest request;
  request.set_after_sequence(static_cast<uint64_t>(after->value_or(0)));
  request.set_page_size(static_cast<int32_t>(limit->value_or(100)));
  v1::ListChangesResponse response;
  const std::unique_ptr<grpc::ClientContext> context = connection.NewContext();
  const grpc::Status status = connection.scan().ListChanges(context.get(), request, &response);
  if (!status.ok()) return RpcFailed("ListChanges", status, *context);
  if (json) {
    PrintJson(response);
    return kExitOk;
  }
  Table table({"sequence", "time (UTC)", "kind", "change", "id"});
  for (const v1::ItemChange& change : response.changes()) {
    table.AddRow({absl::StrCat(change.sequence()),
                  absl::FormatTime("%Y-%m-%dT%H:%M:%E3SZ", absl::FromUnixMicros(change.unix_micros()), absl::UTCTimeZone()),
                  change.kind() == v1::ITEM_KIND_CAPTION ? "caption" : "image", change.deleted() ? "delete" : "put",
                  change.id()});
  }
  table.Print(stdout);
  std::printf("newest sequence: %llu%s\n", static_cast<unsigned long long>(response.last_sequence()),
              response.changes_size() == request.page_size() ? " (more after the last one shown)" : "");
  return kExitOk;
}

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
