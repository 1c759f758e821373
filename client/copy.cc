#include "client/copy.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "client/exit_codes.h"
#include "client/json_file.h"
#include "client/output.h"
#include "client/progress.h"

namespace scanserve {
namespace cli {
namespace {

// Where a copy stands: the kind being copied ("image", "caption", or "done") and the last id of it
// copied (ListItems resumes after a listed id given as its page token).
struct CopyCheckpoint {
  std::string identity;
  std::string kind = "image";
  std::string after;
};

absl::StatusOr<CopyCheckpoint> LoadCopyCheckpoint(const std::string& path) {
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(path);
  try {
    const nlohmann::json json = nlohmann::json::parse(in);
    CopyCheckpoint checkpoint;
    checkpoint.identity = json.at("copy").get<std::string>();
    checkpoint.kind = json.at("kind").get<std::string>();
    checkpoint.after = json.at("after").get<std::string>();
    if (checkpoint.kind != "image" && checkpoint.kind != "caption" && checkpoint.kind != "done") {
      throw std::runtime_error("unknown kind " + checkpoint.kind);
    }
    return checkpoint;
  } catch (const std::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat("checkpoint ", path, " is unreadable (", e.what(),
                                                   "); pass --restart to start over"));
  }
}

absl::Status SaveCopyCheckpoint(const std::string& path, const CopyCheckpoint& checkpoint) {
  const nlohmann::json json = {{"copy", checkpoint.identity}, {"kind", checkpoint.kind}, {"after", checkpoint.after}};
  return WriteJsonFileAtomically(path, json);
}

// Codes another try may get past: a server restarting or reopening its store, a memory quota, a
// slow call.
bool Transient(grpc::StatusCode code) {
  return code == grpc::StatusCode::UNAVAILABLE || code == grpc::StatusCode::RESOURCE_EXHAUSTED ||
         code == grpc::StatusCode::ABORTED || code == grpc::StatusCode::DEADLINE_EXCEEDED;
}

double BackoffSeconds(int tries) { return std::min(8.0, 0.25 * static_cast<double>(1 << std::min(tries - 1, 5))); }

struct CopyCounts {
  int64_t images = 0;    // copied
  int64_t captions = 0;
  int64_t failed = 0;    // refused by the target, or unreadable at the source
  int64_t without_region_features = 0;  // images the source stored without their input
  int64_t synthetic = 0;  // benchmark items (never stored, so not copied)
  int64_t vanished = 0;   // listed, then deleted before they were read
  int retries = 0;
};

class Copier {
 public:
  Copier(Connection& source, Connection& target, const CopyOptions& options)
      : source_(source), target_(target), options_(options) {}

  // Copies one kind from checkpoint_.after on; a call that keeps failing ends it with its status.
  grpc::Status CopyKind(bool images) {
    v1::ListItemsRequest list;
    list.set_kind(images ? v1::ITEM_KIND_IMAGE : v1::ITEM_KIND_CAPTION);
    list.set_collection(options_.collection);
    list.set_page_size(1000);
    list.set_page_token(checkpoint_.after);
    const size_t batch = static_cast<size_t>(images ? options_.image_batch : options_.caption_batch);
    for (;;) {
      v1::ListItemsResponse page;
      grpc::Status status = Retrying("ListItems (source)", [&] {
        page.Clear();
        return source_.scan().ListItems(source_.NewContext().get(), list, &page);
      });
      if (!status.ok()) return status;
      for (int begin = 0; begin < page.ids_size(); begin += static_cast<int>(batch)) {
        const int end = std::min(page.ids_size(), begin + static_cast<int>(batch));
        const std::vector<std::string> ids(page.ids().begin() + begin, page.ids().begin() + end);
        status = images ? CopyImages(ids) : CopyCaptions(ids);
        if (!status.ok()) return status;
        checkpoint_.after = ids.back();
        progress_->Update(Done(), counts_.failed);
        MaybeSave(/*force=*/false);
      }
      if (page.next_page_token().empty()) return grpc::Status::OK;
      list.set_page_token(page.next_page_token());
    }
  }

  int Run() {
    const std::string identity = absl::StrCat(source_.options().server, " -> ", target_.options().server,
                                              options_.collection.empty() ? "" : " collection " + options_.collection,
                                              options_.images ? " images" : "", options_.captions ? " captions" : "");
    checkpoint_.identity = identity;
    if (!options_.checkpoint_path.empty() && !options_.restart) {
      absl::StatusOr<CopyCheckpoint> loaded = LoadCopyCheckpoint(options_.checkpoint_path);
      if (loaded.ok()) {
        if (loaded->identity != identity) {
          return Fail(kExitUsage, absl::StrCat("the checkpoint ", options_.checkpoint_path, " belongs to another copy (",
                                               loaded->identity, "); pass --restart or another --resume-file"));
        }
        checkpoint_ = *loaded;
        std::fprintf(stderr, "scanctl: resuming the copy %s (checkpoint %s)\n",
                     checkpoint_.kind == "done" ? "which had finished; nothing to do"
                                                : absl::StrCat("after ", checkpoint_.kind, " '", checkpoint_.after, "'").c_str(),
                     options_.checkpoint_path.c_str());
      } else if (!absl::IsNotFound(loaded.status())) {
        return Fail(kExitUsage, std::string(loaded.status().message()));
      }
    }
    if (!options_.images && checkpoint_.kind == "image") checkpoint_ = {identity, "caption", ""};

    // The source's counts size the progress line; a collection's share of them is unknown.
    int64_t total = -1;
    if (options_.collection.empty()) {
      v1::GetStatsResponse stats;
      const grpc::Status status =
          source_.scan().GetStats(source_.NewContext().get(), v1::GetStatsRequest(), &stats);
      if (!status.ok()) return RpcFailed("GetStats (source)", status);
      total = (options_.images ? stats.images() - stats.synthetic_images() : 0) +
              (options_.captions ? stats.captions() - stats.synthetic_captions() : 0);
    }
    Progress progress(checkpoint_.after.empty() && checkpoint_.kind == "image" ? total : -1, 0, options_.progress);
    progress_ = &progress;

    grpc::Status status;
    if (checkpoint_.kind == "image") {
      status = CopyKind(/*images=*/true);
      if (status.ok()) checkpoint_ = {identity, "caption", ""};
    }
    if (status.ok() && checkpoint_.kind == "caption") {
      if (options_.captions) status = CopyKind(/*images=*/false);
      if (status.ok()) checkpoint_ = {identity, "done", ""};
    }
    MaybeSave(/*force=*/true);
    progress.Finish(Done(), counts_.failed);
    return Report(status);
  }

 private:
  int64_t Done() const {
    return counts_.images + counts_.captions + counts_.failed + counts_.without_region_features + counts_.vanished;
  }

  // Runs `call` again while it fails with a transient code, up to max_retries times in a row.
  grpc::Status Retrying(const char* what, const std::function<grpc::Status()>& call) {
    for (int tries = 1;; ++tries) {
      grpc::Status status = call();
      if (status.ok() || !Transient(status.error_code()) || tries > options_.max_retries) return status;
      const double delay_s = BackoffSeconds(tries);
      std::fprintf(stderr, "%sscanctl: %s: %s: %s; retrying in %.2g s\n", options_.progress ? "\n" : "", what,
                   StatusCodeName(status.error_code()), status.error_message().c_str(), delay_s);
      ++counts_.retries;
      std::this_thread::sleep_for(std::chrono::duration<double>(delay_s));
    }
  }

  void ItemFailed(const char* kind, const std::string& id, int code, const std::string& message) {
    if (++counts_.failed <= options_.max_failures_shown) {
      std::fprintf(stderr, "%sscanctl: %s '%s': %s: %s\n", options_.progress ? "\n" : "", kind, id.c_str(),
                   StatusCodeName(code), message.c_str());
    }
  }

  // Upserts `items` into the target; items it answers UNAVAILABLE are sent again after a backoff.
  template <typename Request, typename Response, typename Item>
  grpc::Status Upsert(std::vector<Item> items, const char* kind, int64_t* copied,
                      grpc::Status (v1::ScanService::Stub::*method)(grpc::ClientContext*, const Request&, Response*),
                      google::protobuf::RepeatedPtrField<Item>* (Request::*mutable_items)()) {
    for (int tries = 1; !items.empty(); ++tries) {
      Request request;
      for (Item& item : items) (request.*mutable_items)()->Add()->Swap(&item);
      Response response;
      const grpc::Status status = Retrying(absl::StrCat("upserting ", kind, "s (target)").c_str(), [&] {
        response.Clear();
        return (target_.scan().*method)(target_.NewContext().get(), request, &response);
      });
      if (!status.ok()) return status;
      std::vector<Item> again;
      std::string refusal;
      for (int i = 0; i < response.results_size(); ++i) {
        const v1::ItemStatus& result = response.results(i);
        if (result.code() == 0) {
          ++*copied;
        } else if (result.code() == static_cast<int>(grpc::StatusCode::UNAVAILABLE)) {
          again.push_back((*(request.*mutable_items)())[i]);
          refusal = result.message();
        } else {
          ItemFailed(kind, result.id(), result.code(), result.message());
        }
      }
      if (!again.empty()) {
        if (tries > options_.max_retries) {
          return grpc::Status(grpc::StatusCode::UNAVAILABLE,
                              absl::StrCat("the target kept refusing ", kind, "s for now: ", refusal));
        }
        const double delay_s = BackoffSeconds(tries);
        std::fprintf(stderr, "%sscanctl: the target could not store %zu %ss for now (%s); resending in %.2g s\n",
                     options_.progress ? "\n" : "", again.size(), kind, refusal.c_str(), delay_s);
        ++counts_.retries;
        std::this_thread::sleep_for(std::chrono::duration<double>(delay_s));
      }
      items = std::move(again);
    }
    return grpc::Status::OK;
  }

  grpc::Status Read(const v1::GetItemsRequest& get, v1::GetItemsResponse* got) {
    return Retrying("GetItems (source)", [&] {
      got->Clear();
      return source_.scan().GetItems(source_.NewContext().get(), get, got);
    });
  }

  // Counts an item read back that is not to be sent (deleted since it was listed, unreadable, or
  // a synthetic benchmark item); true for one that is.
  bool Copyable(const v1::ItemStatus& result, bool synthetic, const char* kind) {
    if (result.code() == static_cast<int>(grpc::StatusCode::NOT_FOUND)) {
      ++counts_.vanished;
    } else if (result.code() != 0) {
      ItemFailed(kind, result.id(), result.code(), result.message());
    } else if (synthetic) {
      ++counts_.synthetic;
    } else {
      return true;
    }
    return false;
  }

  grpc::Status CopyImages(const std::vector<std::string>& ids) {
    v1::GetItemsRequest get;
    for (const std::string& id : ids) get.add_image_ids(id);
    get.set_include_region_features(true);
    v1::GetItemsResponse got;
    if (grpc::Status status = Read(get, &got); !status.ok()) return status;
    std::vector<v1::Image> items;
    for (v1::StoredImage& stored : *got.mutable_images()) {
      if (!Copyable(stored.status(), stored.synthetic(), "image")) continue;
      if (!stored.has_region_features() || !stored.image().has_region_features()) {
        if (++counts_.without_region_features <= options_.max_failures_shown) {
          std::fprintf(stderr, "%sscanctl: image '%s' was stored without its region features; not copied\n",
                       options_.progress ? "\n" : "", stored.image().id().c_str());
        }
        continue;
      }
      items.push_back(std::move(*stored.mutable_image()));
    }
    return Upsert<v1::UpsertImagesRequest, v1::UpsertImagesResponse>(
        std::move(items), "image", &counts_.images, &v1::ScanService::Stub::UpsertImages,
        &v1::UpsertImagesRequest::mutable_images);
  }

  grpc::Status CopyCaptions(const std::vector<std::string>& ids) {
    v1::GetItemsRequest get;
    for (const std::string& id : ids) get.add_caption_ids(id);
    v1::GetItemsResponse got;
    if (grpc::Status status = Read(get, &got); !status.ok()) return status;
    std::vector<v1::Caption> items;
    for (v1::StoredCaption& stored : *got.mutable_captions()) {
      if (Copyable(stored.status(), stored.synthetic(), "caption")) items.push_back(std::move(*stored.mutable_caption()));
    }
    return Upsert<v1::UpsertCaptionsRequest, v1::UpsertCaptionsResponse>(
        std::move(items), "caption", &counts_.captions, &v1::ScanService::Stub::UpsertCaptions,
        &v1::UpsertCaptionsRequest::mutable_captions);
  }

  void MaybeSave(bool force) {
    if (options_.checkpoint_path.empty()) return;
    const auto now = std::chrono::steady_clock::now();
    if (!force && now - last_save_ < std::chrono::seconds(1)) return;
    last_save_ = now;
    checkpoint_status_ = SaveCopyCheckpoint(options_.checkpoint_path, checkpoint_);
  }

  int Report(const grpc::Status& status) {
    const double seconds = progress_->elapsed_seconds();
    if (options_.json) {
      const nlohmann::json summary = {{"source", source_.options().server},
                                      {"target", target_.options().server},
                                      {"collection", options_.collection},
                                      {"images", counts_.images},
                                      {"captions", counts_.captions},
                                      {"failed", counts_.failed},
                                      {"images_without_region_features", counts_.without_region_features},
                                      {"synthetic_skipped", counts_.synthetic},
                                      {"vanished", counts_.vanished},
                                      {"retries", counts_.retries},
                                      {"seconds", seconds},
                                      {"checkpoint", options_.checkpoint_path},
                                      {"status", status.ok() ? "OK" : "ERROR"}};
      std::printf("%s\n", summary.dump().c_str());
    } else {
      std::fprintf(stderr, "scanctl: copied %lld images and %lld captions to %s in %.1f s (%lld failed",
                   static_cast<long long>(counts_.images), static_cast<long long>(counts_.captions),
                   target_.options().server.c_str(), seconds, static_cast<long long>(counts_.failed));
      if (counts_.without_region_features > 0) {
        std::fprintf(stderr, ", %lld images without region features",
                     static_cast<long long>(counts_.without_region_features));
      }
      if (counts_.synthetic > 0) std::fprintf(stderr, ", %lld synthetic skipped", static_cast<long long>(counts_.synthetic));
      if (counts_.vanished > 0) std::fprintf(stderr, ", %lld deleted meanwhile", static_cast<long long>(counts_.vanished));
      std::fprintf(stderr, ")\n");
    }
    if (!checkpoint_status_.ok()) std::fprintf(stderr, "scanctl: %s\n", std::string(checkpoint_status_.message()).c_str());
    if (!status.ok()) {
      const int code = RpcFailed("copy", status);
      if (!options_.checkpoint_path.empty()) {
        std::fprintf(stderr, "scanctl: rerun the same command to resume after %s '%s'\n", checkpoint_.kind.c_str(),
                     checkpoint_.after.c_str());
      }
      return code;
    }
    if (counts_.without_region_features > 0) {
      return Fail(kExitError, absl::StrCat(counts_.without_region_features,
                                           " images were stored without their region features (the source "
                                           "server did not run with --region-features keep when they were "
                                           "ingested): ingest them into the target from their images or "
                                           "features"));
    }
    if (counts_.failed > 0) return Fail(kExitError, absl::StrCat(counts_.failed, " items failed"));
    return kExitOk;
  }

  Connection& source_;
  Connection& target_;
  const CopyOptions& options_;
  CopyCheckpoint checkpoint_;
  CopyCounts counts_;
  Progress* progress_ = nullptr;
  std::chrono::steady_clock::time_point last_save_;
  absl::Status checkpoint_status_;
};

}  // namespace

int RunCopy(Connection& source, Connection& target, const CopyOptions& options) {
  return Copier(source, target, options).Run();
}

}  // namespace cli
}  // namespace scanserve
