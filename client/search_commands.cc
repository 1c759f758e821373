// search-images and search-captions: text -> image and image -> text search.
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "client/commands.h"
#include "client/exit_codes.h"
#include "client/features.h"
#include "client/image_files.h"
#include "client/output.h"

namespace scanserve {
namespace cli {

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

}  // namespace cli
}  // namespace scanserve
