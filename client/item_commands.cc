// The commands on stored items: upsert-caption, upsert-image, delete, update, get, list, changes.
#include <algorithm>
#include <cstdio>
#include <fstream>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "client/commands.h"
#include "client/exit_codes.h"
#include "client/features.h"
#include "client/image_files.h"
#include "client/output.h"

namespace scanserve {
namespace cli {

namespace {

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

}  // namespace

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

}  // namespace cli
}  // namespace scanserve
