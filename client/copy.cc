#include "client/copy.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <optional>
#include <set>
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

// Where a copy stands: the kind being copied ("image", "caption"; "changes" once both are, or
// "done" where the source keeps no change log) and the last id of it copied (ListItems resumes
// after a listed id given as its page token); and the source's change sequence the catch-up goes
// on from (the last one when the copy started, then the last one applied).
struct CopyCheckpoint {
  std::string identity;
  std::string kind = "image";
  std::string after;
  std::optional<uint64_t> changes_after;  // unset: not known (a checkpoint from before change logs)
  std::string log_id;                     // the source's change log (ListChangesResponse.log_id)
};

absl::StatusOr<CopyCheckpoint> LoadCopyCheckpoint(const std::string& path) {
  CopyCheckpoint checkpoint;
  const absl::Status read = ReadJsonCheckpoint(path, [&](const JsonFields& fields) -> absl::Status {
    SCANSERVE_RETURN_IF_ERROR(fields.Required("copy", &checkpoint.identity));
    SCANSERVE_RETURN_IF_ERROR(fields.Required("kind", &checkpoint.kind));
    SCANSERVE_RETURN_IF_ERROR(fields.Required("after", &checkpoint.after));
    if (fields.Has("changes_after")) {
      uint64_t changes_after = 0;
      SCANSERVE_RETURN_IF_ERROR(fields.Required("changes_after", &changes_after));
      checkpoint.changes_after = changes_after;
    }
    SCANSERVE_RETURN_IF_ERROR(fields.Optional("log_id", &checkpoint.log_id));
    if (checkpoint.kind != "image" && checkpoint.kind != "caption" && checkpoint.kind != "changes" &&
        checkpoint.kind != "done") {
      return fields.Error("kind", absl::StrCat("is unknown: \"", checkpoint.kind, "\""));
    }
    if (checkpoint.kind == "changes" && !checkpoint.changes_after.has_value()) {
      return fields.Error("changes_after", "is missing (kind is \"changes\")");
    }
    return absl::OkStatus();
  });
  if (!read.ok()) return read;
  return checkpoint;
}

absl::Status SaveCopyCheckpoint(const std::string& path, const CopyCheckpoint& checkpoint) {
  nlohmann::json json = {{"copy", checkpoint.identity}, {"kind", checkpoint.kind}, {"after", checkpoint.after}};
  if (checkpoint.changes_after.has_value()) json["changes_after"] = *checkpoint.changes_after;
  if (!checkpoint.log_id.empty()) json["log_id"] = checkpoint.log_id;
  return WriteJsonFileAtomically(path, json);
}

// `copy --follow` stops at SIGINT / SIGTERM, after the batch in hand, with its checkpoint saved.
std::atomic<bool> stop_requested{false};

extern "C" void RequestStop(int) { stop_requested = true; }

// Codes another try may get past: a server restarting or reopening its store, a memory quota, a
// slow call.
bool Transient(grpc::StatusCode code) {
  return code == grpc::StatusCode::UNAVAILABLE || code == grpc::StatusCode::RESOURCE_EXHAUSTED ||
         code == grpc::StatusCode::ABORTED || code == grpc::StatusCode::DEADLINE_EXCEEDED;
}

struct CopyCounts {
  int64_t images = 0;    // copied
  int64_t captions = 0;
  int64_t failed = 0;    // refused by the target, or unreadable at the source
  int64_t without_region_features = 0;  // images the source stored without their input
  int64_t synthetic = 0;  // benchmark items (never stored, so not copied)
  int64_t vanished = 0;   // listed, then deleted before they were read
  int64_t changes = 0;    // read from the source's change log
  int64_t deleted = 0;    // deleted from the target to follow the source
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
        if (checkpoint_.kind == "done" && checkpoint_.changes_after.has_value()) checkpoint_.kind = "changes";
        std::string where = absl::StrCat("after ", checkpoint_.kind, " '", checkpoint_.after, "'");
        if (checkpoint_.kind == "done") where = "which had finished; nothing to do";
        if (checkpoint_.kind == "changes") {
          where = absl::StrCat("with the source's changes after sequence ", *checkpoint_.changes_after);
        }
        std::fprintf(stderr, "scanctl: resuming the copy %s (checkpoint %s)\n", where.c_str(),
                     options_.checkpoint_path.c_str());
      } else if (!absl::IsNotFound(loaded.status())) {
        return Fail(kExitUsage, std::string(loaded.status().message()));
      }
    }
    const bool fresh = checkpoint_.kind == "image" && checkpoint_.after.empty();
    if (!options_.images && checkpoint_.kind == "image") StartKind("caption");

    v1::GetStatsResponse stats;
    const grpc::Status stats_status =
        source_.scan().GetStats(source_.NewContext().get(), v1::GetStatsRequest(), &stats);
    if (!stats_status.ok()) return RpcFailed("GetStats (source)", stats_status);
    // Before the first id is read: every write after this sequence is applied again at the end.
    if (fresh) {
      checkpoint_.changes_after = stats.last_change_sequence();
      checkpoint_.log_id = stats.change_log_id();
    }
    // The source's counts size the progress line; a collection's share of them is unknown.
    int64_t total = -1;
    if (options_.collection.empty()) {
      total = (options_.images ? stats.images() - stats.synthetic_images() : 0) +
              (options_.captions ? stats.captions() - stats.synthetic_captions() : 0);
    }
    Progress progress(checkpoint_.after.empty() && checkpoint_.kind == "image" ? total : -1, 0, options_.progress);
    progress_ = &progress;

    if (options_.follow) {
      std::signal(SIGINT, RequestStop);
      std::signal(SIGTERM, RequestStop);
    }
    grpc::Status status;
    if (checkpoint_.kind == "image") {
      status = CopyKind(/*images=*/true);
      if (status.ok()) StartKind("caption");
    }
    if (status.ok() && checkpoint_.kind == "caption") {
      if (options_.captions) status = CopyKind(/*images=*/false);
      if (status.ok()) StartKind(checkpoint_.changes_after.has_value() ? "changes" : "done");
    }
    if (status.ok() && checkpoint_.kind == "changes") status = CatchUp();
    MaybeSave(/*force=*/true);
    progress.Finish(Done(), counts_.failed);
    return Report(status);
  }

 private:
  void StartKind(const char* kind) {
    checkpoint_.kind = kind;
    checkpoint_.after.clear();
  }

  // Applies the source's changes after checkpoint_.changes_after: each changed item is read and
  // upserted into the target, or deleted there when the source no longer has it (or, with
  // --collection, it left the collection). With --follow it goes on until SIGINT / SIGTERM.
  grpc::Status CatchUp() {
    v1::ListChangesRequest request;
    request.set_page_size(1000);
    for (;;) {
      request.set_after_sequence(*checkpoint_.changes_after);
      v1::ListChangesResponse page;
      grpc::Status status = Retrying("ListChanges (source)", [&] {
        page.Clear();
        return source_.scan().ListChanges(source_.NewContext().get(), request, &page);
      });
      if (status.error_code() == grpc::StatusCode::UNIMPLEMENTED) {
        std::fprintf(stderr, "%sscanctl: the source keeps no change log (an older scanserve): writes it took "
                     "during the copy may be missing from the target\n", options_.progress ? "\n" : "");
        StartKind("done");
        checkpoint_.changes_after.reset();
        return grpc::Status::OK;
      }
      if (status.error_code() == grpc::StatusCode::OUT_OF_RANGE) {
        // Behind the retention, or following another log: the server's message says which.
        return grpc::Status(status.error_code(), absl::StrCat(status.error_message(), " (--restart)"));
      }
      if (!status.ok()) return status;
      if (checkpoint_.log_id.empty()) checkpoint_.log_id = page.log_id();
      if (page.log_id() != checkpoint_.log_id) {
        return grpc::Status(grpc::StatusCode::FAILED_PRECONDITION,
                            absl::StrCat("the source's change log is ", page.log_id(), ", not ", checkpoint_.log_id,
                                         " that this copy follows: the source was restored from a snapshot or "
                                         "its store made again; copy everything again (--restart)"));
      }
      counts_.changes += page.changes_size();
      source_last_sequence_ = page.last_sequence();
      if (status = Apply(page); !status.ok()) return status;
      if (page.changes_size() > 0) checkpoint_.changes_after = page.changes(page.changes_size() - 1).sequence();
      progress_->set_status(absl::StrCat(ChangesBehind(), " changes behind"));
      progress_->Update(Done(), counts_.failed);
      MaybeSave(/*force=*/false);
      if (stop_requested) return grpc::Status::OK;
      if (page.changes_size() < request.page_size()) {
        if (!options_.follow) return grpc::Status::OK;
        MaybeSave(/*force=*/true);
        const auto wake = std::chrono::steady_clock::now() + std::chrono::duration<double>(options_.poll_interval_s);
        while (!stop_requested && std::chrono::steady_clock::now() < wake) {
          std::this_thread::sleep_for(std::chrono::milliseconds(50));
        }
        if (stop_requested) return grpc::Status::OK;
      }
    }
  }

  // One page of changes: every item it names once, whatever it says happened (the read says what
  // is there now).
  grpc::Status Apply(const v1::ListChangesResponse& page) {
    std::vector<std::string> images, captions;
    std::set<std::string> seen_images, seen_captions;
    for (const v1::ItemChange& change : page.changes()) {
      const bool image = change.kind() == v1::ITEM_KIND_IMAGE;
      if (image ? !options_.images : !options_.captions) continue;
      if ((image ? seen_images : seen_captions).insert(change.id()).second) {
        (image ? images : captions).push_back(change.id());
      }
    }
    for (const bool image : {true, false}) {
      const std::vector<std::string>& ids = image ? images : captions;
      const size_t batch = static_cast<size_t>(image ? options_.image_batch : options_.caption_batch);
      for (size_t begin = 0; begin < ids.size(); begin += batch) {
        const std::vector<std::string> chunk(ids.begin() + begin, ids.begin() + std::min(ids.size(), begin + batch));
        grpc::Status status = image ? CopyImages(chunk, /*mirror=*/true) : CopyCaptions(chunk, /*mirror=*/true);
        if (!status.ok()) return status;
      }
    }
    return grpc::Status::OK;
  }

  // Deletes from the target the items the source no longer has; NOT_FOUND is what was wanted.
  grpc::Status DeleteFromTarget(std::vector<std::string> ids, bool images) {
    const char* kind = images ? "image" : "caption";
    return SendResendingRefused<std::string>(
        std::move(ids), absl::StrCat(kind, " deletes"),
        [&](std::vector<std::string>* batch, std::vector<std::string>* again, std::string* refusal) {
          v1::DeleteRequest request;
          for (const std::string& id : *batch) (images ? request.add_image_ids() : request.add_caption_ids())->assign(id);
          v1::DeleteResponse response;
          const grpc::Status status = Retrying(absl::StrCat("deleting ", kind, "s (target)").c_str(), [&] {
            response.Clear();
            return target_.scan().Delete(target_.NewContext().get(), request, &response);
          });
          if (!status.ok()) return status;
          for (const v1::ItemStatus& result : images ? response.image_results() : response.caption_results()) {
            if (result.code() == 0) {
              ++counts_.deleted;
            } else if (result.code() == static_cast<int>(grpc::StatusCode::UNAVAILABLE)) {
              again->push_back(result.id());
              *refusal = result.message();
            } else if (result.code() != static_cast<int>(grpc::StatusCode::NOT_FOUND)) {
              ItemFailed(kind, result.id(), result.code(), result.message());
            }
          }
          return grpc::Status::OK;
        });
  }

  // The source's changes not applied yet, as of its last page read: what a follower lags by.
  uint64_t ChangesBehind() const {
    const uint64_t applied = checkpoint_.changes_after.value_or(0);
    return source_last_sequence_ > applied ? source_last_sequence_ - applied : 0;
  }

  int64_t Done() const {
    return counts_.images + counts_.captions + counts_.failed + counts_.without_region_features + counts_.vanished +
           counts_.deleted;
  }

  // After `tries` failures in a row of one call. A follower rides out a server down for longer (a
  // restart, a rolling update, a reopening store): it is there to keep the target in step.
  bool GiveUp(int tries) const {
    return tries > options_.max_retries && !(options_.follow && checkpoint_.kind == "changes");
  }

  // Runs `call` again while it fails with a transient code, up to max_retries times in a row.
  grpc::Status Retrying(const char* what, const std::function<grpc::Status()>& call) {
    for (int tries = 1;; ++tries) {
      grpc::Status status = call();
      if (status.ok() || !Transient(status.error_code()) || GiveUp(tries)) return status;
      const double delay_s = RetryBackoffSeconds(tries);
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

  // Sends `items` through `send`, which makes one call and puts into `again` the items the target
  // answered UNAVAILABLE (it could not store them for now, e.g. a full disk or a reopening store);
  // those are sent again after a backoff. Every write sent here is idempotent, so a resend is safe.
  template <typename Item>
  grpc::Status SendResendingRefused(
      std::vector<Item> items, const std::string& what,
      const std::function<grpc::Status(std::vector<Item>* batch, std::vector<Item>* again, std::string* refusal)>&
          send) {
    for (int tries = 1; !items.empty(); ++tries) {
      std::vector<Item> again;
      std::string refusal;
      const grpc::Status status = send(&items, &again, &refusal);
      if (!status.ok()) return status;
      if (!again.empty()) {
        if (GiveUp(tries)) {
          return grpc::Status(grpc::StatusCode::UNAVAILABLE,
                              absl::StrCat("the target kept refusing ", what, " for now: ", refusal));
        }
        const double delay_s = RetryBackoffSeconds(tries);
        std::fprintf(stderr, "%sscanctl: the target refused %zu %s for now (%s); resending in %.2g s\n",
                     options_.progress ? "\n" : "", again.size(), what.c_str(), refusal.c_str(), delay_s);
        ++counts_.retries;
        std::this_thread::sleep_for(std::chrono::duration<double>(delay_s));
      }
      items = std::move(again);
    }
    return grpc::Status::OK;
  }

  // Upserts `items` into the target.
  template <typename Request, typename Response, typename Item>
  grpc::Status Upsert(std::vector<Item> items, const char* kind, int64_t* copied,
                      grpc::Status (v1::ScanService::Stub::*method)(grpc::ClientContext*, const Request&, Response*),
                      google::protobuf::RepeatedPtrField<Item>* (Request::*mutable_items)()) {
    return SendResendingRefused<Item>(
        std::move(items), absl::StrCat(kind, "s"),
        [&](std::vector<Item>* batch, std::vector<Item>* again, std::string* refusal) {
          Request request;
          for (Item& item : *batch) (request.*mutable_items)()->Add()->Swap(&item);
          Response response;
          const grpc::Status status = Retrying(absl::StrCat("upserting ", kind, "s (target)").c_str(), [&] {
            response.Clear();
            return (target_.scan().*method)(target_.NewContext().get(), request, &response);
          });
          if (!status.ok()) return status;
          for (int i = 0; i < response.results_size(); ++i) {
            const v1::ItemStatus& result = response.results(i);
            if (result.code() == 0) {
              ++*copied;
            } else if (result.code() == static_cast<int>(grpc::StatusCode::UNAVAILABLE)) {
              again->push_back((*(request.*mutable_items)())[i]);
              *refusal = result.message();
            } else {
              ItemFailed(kind, result.id(), result.code(), result.message());
            }
          }
          return grpc::Status::OK;
        });
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

  // Whether a changed item read back (mirror) is one the target must no longer have: gone from the
  // source, or out of the collection copied.
  bool Gone(const v1::ItemStatus& result, const std::string& collection) const {
    if (result.code() == static_cast<int>(grpc::StatusCode::NOT_FOUND)) return true;
    return result.code() == 0 && !options_.collection.empty() && collection != options_.collection;
  }

  // mirror: the ids come from the change log, and the target follows the source (see Gone).
  grpc::Status CopyImages(const std::vector<std::string>& ids, bool mirror = false) {
    v1::GetItemsRequest get;
    for (const std::string& id : ids) get.add_image_ids(id);
    get.set_include_region_features(true);
    v1::GetItemsResponse got;
    if (grpc::Status status = Read(get, &got); !status.ok()) return status;
    std::vector<v1::Image> items;
    std::vector<std::string> gone;
    for (v1::StoredImage& stored : *got.mutable_images()) {
      if (mirror && Gone(stored.status(), stored.image().collection())) {
        gone.push_back(stored.status().id());
        continue;
      }
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
    grpc::Status status = Upsert<v1::UpsertImagesRequest, v1::UpsertImagesResponse>(
        std::move(items), "image", &counts_.images, &v1::ScanService::Stub::UpsertImages,
        &v1::UpsertImagesRequest::mutable_images);
    if (!status.ok()) return status;
    return DeleteFromTarget(std::move(gone), /*images=*/true);
  }

  grpc::Status CopyCaptions(const std::vector<std::string>& ids, bool mirror = false) {
    v1::GetItemsRequest get;
    for (const std::string& id : ids) get.add_caption_ids(id);
    v1::GetItemsResponse got;
    if (grpc::Status status = Read(get, &got); !status.ok()) return status;
    std::vector<v1::Caption> items;
    std::vector<std::string> gone;
    for (v1::StoredCaption& stored : *got.mutable_captions()) {
      if (mirror && Gone(stored.status(), stored.caption().collection())) {
        gone.push_back(stored.status().id());
      } else if (Copyable(stored.status(), stored.synthetic(), "caption")) {
        items.push_back(std::move(*stored.mutable_caption()));
      }
    }
    grpc::Status status = Upsert<v1::UpsertCaptionsRequest, v1::UpsertCaptionsResponse>(
        std::move(items), "caption", &counts_.captions, &v1::ScanService::Stub::UpsertCaptions,
        &v1::UpsertCaptionsRequest::mutable_captions);
    if (!status.ok()) return status;
    return DeleteFromTarget(std::move(gone), /*images=*/false);
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
                                      {"changes", counts_.changes},
                                      {"deleted", counts_.deleted},
                                      {"changes_after", checkpoint_.changes_after.has_value()
                                                            ? nlohmann::json(*checkpoint_.changes_after)
                                                            : nlohmann::json(nullptr)},
                                      {"changes_behind", ChangesBehind()},
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
      if (status.ok() && checkpoint_.kind == "changes") {
        std::fprintf(stderr, "scanctl: applied the source's %lld changes (%lld deletes) through sequence %llu\n",
                     static_cast<long long>(counts_.changes), static_cast<long long>(counts_.deleted),
                     static_cast<unsigned long long>(*checkpoint_.changes_after));
      }
    }
    if (!checkpoint_status_.ok()) std::fprintf(stderr, "scanctl: %s\n", std::string(checkpoint_status_.message()).c_str());
    if (!status.ok()) {
      const int code = RpcFailed("copy", status);
      // A log that cannot be caught up with (OUT_OF_RANGE, another log) needs --restart, not a rerun.
      const bool resumable = status.error_code() != grpc::StatusCode::OUT_OF_RANGE &&
                             status.error_code() != grpc::StatusCode::FAILED_PRECONDITION;
      if (!options_.checkpoint_path.empty() && resumable) {
        if (checkpoint_.kind == "changes") {
          std::fprintf(stderr, "scanctl: rerun the same command to resume after the source's change %llu\n",
                       static_cast<unsigned long long>(*checkpoint_.changes_after));
        } else {
          std::fprintf(stderr, "scanctl: rerun the same command to resume after %s '%s'\n", checkpoint_.kind.c_str(),
                       checkpoint_.after.c_str());
        }
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
  uint64_t source_last_sequence_ = 0;  // the source's newest change when CatchUp last read a page
  std::chrono::steady_clock::time_point last_save_;
  absl::Status checkpoint_status_;
};

}  // namespace

int RunCopy(Connection& source, Connection& target, const CopyOptions& options) {
  return Copier(source, target, options).Run();
}

}  // namespace cli
}  // namespace scanserve
