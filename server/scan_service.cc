#include "server/scan_service.h"

#include <chrono>
#include <cstdint>
#include <exception>
#include <optional>
#include <string_view>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "google/protobuf/descriptor.h"
#include "server/convert.h"
#include "server/grpc_status.h"
#include "server/stream_read_ahead.h"

namespace scanserve {
namespace {

using SteadyClock = std::chrono::steady_clock;

// The call's deadline on the steady clock the batcher uses (max() when the client set none).
SteadyClock::time_point SteadyDeadline(const grpc::ServerContext& context) {
  const auto deadline = context.deadline();
  if (deadline == std::chrono::system_clock::time_point::max()) return SteadyClock::time_point::max();
  const auto remaining = deadline - std::chrono::system_clock::now();
  return SteadyClock::now() + std::chrono::duration_cast<SteadyClock::duration>(remaining);
}

double SecondsSince(SteadyClock::time_point start) {
  return std::chrono::duration<double>(SteadyClock::now() - start).count();
}

// Engine results in item order; a count that does not match is an engine bug, reported per item.
void AppendEngineResults(const std::vector<ItemResult>& engine_results, const std::vector<size_t>& slots,
                         std::vector<v1::ItemStatus>* results) {
  for (size_t i = 0; i < slots.size(); ++i) {
    v1::ItemStatus& out = (*results)[slots[i]];
    if (engine_results.size() != slots.size()) {
      ItemStatusToProto(out.id(), absl::InternalError(absl::StrCat(
                                      "the engine answered ", engine_results.size(), " results for ",
                                      slots.size(), " items")),
                        &out);
    } else {
      ItemResultToProto(engine_results[i], &out);
    }
  }
}

// INVALID_ARGUMENT beyond RetrievalLimits::kMaxWriteItems items in one write request: 2M ids in a
// 64 MiB Delete took seconds of work, then failed on an answer larger than the message limit.
absl::Status CheckWriteItemCount(absl::string_view method, size_t items) {
  if (items <= RetrievalLimits::kMaxWriteItems) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat("at most ", RetrievalLimits::kMaxWriteItems, " items per ", method,
                                                 ", got ", items, ": send more requests, or use the Ingest stream"));
}

}  // namespace

ScanServiceImpl::ScanServiceImpl(RetrievalEngine* engine, TextToImageBatcher* image_batcher,
                                 ImageToTextBatcher* caption_batcher, DetectorPool* detector_pool,
                                 const Authenticator* auth, ServerMetrics* metrics, ScanServiceOptions options)
    : engine_(engine),
      image_batcher_(image_batcher),
      caption_batcher_(caption_batcher),
      detector_pool_(detector_pool),
      auth_(auth),
      metrics_(metrics),
      options_(std::move(options)) {
  // The generated service adds its methods in the .proto's order, so the descriptor's index is
  // gRPC's index. This replaces only the handler: the method stays a bidi stream of the same name.
  const google::protobuf::MethodDescriptor* ingest =
      v1::IngestRequest::descriptor()->file()->FindServiceByName("ScanService")->FindMethodByName("Ingest");
  MarkMethodStreamed(ingest->index(),
                     new grpc::internal::BidiStreamingHandler<ScanServiceImpl, grpc::ByteBuffer, grpc::ByteBuffer>(
                         [](ScanServiceImpl* service, grpc::ServerContext* context,
                            grpc::ServerReaderWriter<grpc::ByteBuffer, grpc::ByteBuffer>* stream) {
                           return service->IngestMessages(context, stream);
                         },
                         this));
}

grpc::Status ScanServiceImpl::SearchImages(grpc::ServerContext* context,
                                           const v1::SearchImagesRequest* request,
                                           v1::SearchImagesResponse* response) {
  if (absl::Status status = auth_->Check(*context); !status.ok()) return ToGrpcStatus(status);
  absl::StatusOr<std::vector<std::string>> queries = QueriesFromProto(*request);
  if (!queries.ok()) return ToGrpcStatus(queries.status());
  TextToImageBatcher::Result results = image_batcher_->Search(
      *std::move(queries), SearchParamsFromProto(*request), SteadyDeadline(*context),
      [context] { return context->IsCancelled(); });
  if (!results.ok()) return ToGrpcStatus(results.status());
  for (const std::vector<ImageHit>& hits : *results) ImageHitsToProto(hits, response->add_results());
  return grpc::Status::OK;
}

grpc::Status ScanServiceImpl::SearchCaptions(grpc::ServerContext* context,
                                             const v1::SearchCaptionsRequest* request,
                                             v1::SearchCaptionsResponse* response) {
  if (absl::Status status = auth_->Check(*context); !status.ok()) return ToGrpcStatus(status);
  if (absl::Status status = CheckImageQueryCount(*request); !status.ok()) return ToGrpcStatus(status);
  // Image bytes: through the detector first (all of this request's images together).
  std::vector<absl::StatusOr<DetectedRegions>> detections;
  const std::vector<std::string_view> image_bytes = ImageBytesOf(*request);
  const bool detect = detector_pool_ != nullptr && !image_bytes.empty();
  if (detect) {
    detections = detector_pool_->Detect(image_bytes, SteadyDeadline(*context), [context] { return context->IsCancelled(); });
  }
  absl::StatusOr<std::vector<ImageQuery>> queries = ImageQueriesFromProto(*request, detect ? &detections : nullptr);
  if (!queries.ok()) return ToGrpcStatus(queries.status());
  ImageToTextBatcher::Result results = caption_batcher_->Search(
      *std::move(queries), SearchParamsFromProto(*request), SteadyDeadline(*context),
      [context] { return context->IsCancelled(); });
  if (!results.ok()) return ToGrpcStatus(results.status());
  for (const std::vector<CaptionHit>& hits : *results) CaptionHitsToProto(hits, response->add_results());
  return grpc::Status::OK;
}

grpc::Status ScanServiceImpl::UpsertImages(grpc::ServerContext* context,
                                           const v1::UpsertImagesRequest* request,
                                           v1::UpsertImagesResponse* response) {
  if (absl::Status status = auth_->Check(*context); !status.ok()) return ToGrpcStatus(status);
  const size_t items = static_cast<size_t>(request->images_size());
  if (absl::Status status = CheckWriteItemCount("UpsertImages", items); !status.ok()) return ToGrpcStatus(status);
  std::vector<const v1::Image*> images;
  for (const v1::Image& image : request->images()) images.push_back(&image);
  std::vector<v1::ItemStatus> results;
  UpsertImageBatch(context, images, &results);
  for (v1::ItemStatus& result : results) *response->add_results() = std::move(result);
  return grpc::Status::OK;
}

grpc::Status ScanServiceImpl::UpsertCaptions(grpc::ServerContext* context,
                                             const v1::UpsertCaptionsRequest* request,
                                             v1::UpsertCaptionsResponse* response) {
  if (absl::Status status = auth_->Check(*context); !status.ok()) return ToGrpcStatus(status);
  const size_t items = static_cast<size_t>(request->captions_size());
  if (absl::Status status = CheckWriteItemCount("UpsertCaptions", items); !status.ok()) return ToGrpcStatus(status);
  std::vector<const v1::Caption*> captions;
  for (const v1::Caption& caption : request->captions()) captions.push_back(&caption);
  std::vector<v1::ItemStatus> results;
  UpsertCaptionBatch(captions, &results);
  for (v1::ItemStatus& result : results) *response->add_results() = std::move(result);
  return grpc::Status::OK;
}

grpc::Status ScanServiceImpl::Delete(grpc::ServerContext* context, const v1::DeleteRequest* request,
                                     v1::DeleteResponse* response) {
  if (absl::Status status = auth_->Check(*context); !status.ok()) return ToGrpcStatus(status);
  const size_t items = static_cast<size_t>(request->image_ids_size() + request->caption_ids_size());
  if (absl::Status status = CheckWriteItemCount("Delete", items); !status.ok()) return ToGrpcStatus(status);
  if (request->image_ids_size() > 0) {
    const std::vector<std::string> ids(request->image_ids().begin(), request->image_ids().end());
    for (const ItemResult& result : engine_->DeleteImages(ids)) {
      ItemResultToProto(result, response->add_image_results());
    }
  }
  if (request->caption_ids_size() > 0) {
    const std::vector<std::string> ids(request->caption_ids().begin(), request->caption_ids().end());
    for (const ItemResult& result : engine_->DeleteCaptions(ids)) {
      ItemResultToProto(result, response->add_caption_results());
    }
  }
  return grpc::Status::OK;
}

grpc::Status ScanServiceImpl::UpdateItems(grpc::ServerContext* context, const v1::UpdateItemsRequest* request,
                                          v1::UpdateItemsResponse* response) {
  if (absl::Status status = auth_->Check(*context); !status.ok()) return ToGrpcStatus(status);
  const size_t items = static_cast<size_t>(request->images_size() + request->captions_size());
  if (absl::Status status = CheckWriteItemCount("UpdateItems", items); !status.ok()) return ToGrpcStatus(status);
  if (request->images_size() > 0) {
    std::vector<ItemUpdate> updates;
    for (const v1::ItemUpdate& update : request->images()) updates.push_back(ItemUpdateFromProto(update));
    for (const ItemResult& result : engine_->UpdateImages(updates)) {
      ItemResultToProto(result, response->add_image_results());
    }
  }
  if (request->captions_size() > 0) {
    std::vector<ItemUpdate> updates;
    for (const v1::ItemUpdate& update : request->captions()) updates.push_back(ItemUpdateFromProto(update));
    for (const ItemResult& result : engine_->UpdateCaptions(updates)) {
      ItemResultToProto(result, response->add_caption_results());
    }
  }
  return grpc::Status::OK;
}

grpc::Status ScanServiceImpl::IngestMessages(grpc::ServerContext* context,
                                             grpc::ServerReaderWriter<grpc::ByteBuffer, grpc::ByteBuffer>* stream) {
  if (absl::Status status = auth_->Check(*context); !status.ok()) return ToGrpcStatus(status);
  const size_t batch_size = static_cast<size_t>(options_.ingest_batch_size);
  // Written by the reader's thread, read after reader.Join().
  int64_t messages_read = 0;
  bool unparsable = false;
  StreamReadAhead<v1::IngestRequest> reader(
      [stream, &messages_read, &unparsable](v1::IngestRequest* request) {
        grpc::ByteBuffer message;
        if (!stream->Read(&message)) return false;
        ++messages_read;
        // Stops reading: the items before it are still upserted and acknowledged.
        unparsable = !grpc::SerializationTraits<v1::IngestRequest>::Deserialize(&message, request).ok();
        return !unparsable;
      },
      2 * batch_size);
  std::vector<v1::IngestRequest> batch;
  std::vector<v1::ItemStatus> results;
  bool writing = true;
  while (writing && reader.NextBatch(batch_size, &batch)) {
    // Runs of consecutive items of one kind go to the engine together; results keep stream order.
    results.clear();
    std::vector<bool> is_caption;
    size_t i = 0;
    while (i < batch.size()) {
      const v1::IngestRequest::ItemCase kind = batch[i].item_case();
      size_t end = i;
      while (end < batch.size() && batch[end].item_case() == kind) ++end;
      if (kind == v1::IngestRequest::kImage) {
        std::vector<const v1::Image*> images;
        for (size_t j = i; j < end; ++j) images.push_back(&batch[j].image());
        UpsertImageBatch(context, images, &results);
      } else if (kind == v1::IngestRequest::kCaption) {
        std::vector<const v1::Caption*> captions;
        for (size_t j = i; j < end; ++j) captions.push_back(&batch[j].caption());
        UpsertCaptionBatch(captions, &results);
      } else {
        for (size_t j = i; j < end; ++j) {
          results.emplace_back();
          ItemStatusToProto("", absl::InvalidArgumentError("an IngestRequest must set image or caption"),
                            &results.back());
        }
      }
      is_caption.insert(is_caption.end(), end - i, kind == v1::IngestRequest::kCaption);
      i = end;
    }
    for (size_t j = 0; j < results.size() && writing; ++j) {
      v1::IngestResponse response;
      *response.mutable_result() = std::move(results[j]);
      response.set_is_caption(is_caption[j]);
      grpc::ByteBuffer message;
      bool own_buffer = false;
      if (!grpc::SerializationTraits<v1::IngestResponse>::Serialize(response, &message, &own_buffer).ok()) {
        writing = false;  // only past 2 GB; ends the call below rather than leave a gap in the acks
        break;
      }
      // No buffer_hint: a blocking Write with the hint can wait for a flush that never comes.
      writing = stream->Write(message);
    }
  }
  if (!writing) {
    // The client is gone: stop the reader (the cancellation ends its Read) and drop what it holds.
    context->TryCancel();
    reader.Abandon();
  }
  reader.Join();
  if (context->IsCancelled()) return grpc::Status(grpc::StatusCode::CANCELLED, "the ingest stream was cancelled");
  if (unparsable) {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                        absl::StrCat("Ingest message ", messages_read,
                                     " cannot be parsed (not an IngestRequest, or a string field that is not "
                                     "UTF-8); the ",
                                     messages_read - 1, " before it were answered, and nothing after it was read"));
  }
  return grpc::Status::OK;
}

grpc::Status ScanServiceImpl::GetItems(grpc::ServerContext* context, const v1::GetItemsRequest* request,
                                       v1::GetItemsResponse* response) {
  if (absl::Status status = auth_->Check(*context); !status.ok()) return ToGrpcStatus(status);
  const size_t num_ids = static_cast<size_t>(request->image_ids_size() + request->caption_ids_size());
  if (num_ids > RetrievalLimits::kMaxGetIds) {
    return ToGrpcStatus(absl::InvalidArgumentError(
        absl::StrCat("at most ", RetrievalLimits::kMaxGetIds, " ids per GetItems, got ", num_ids)));
  }
  if (request->image_ids_size() > 0) {
    const std::vector<std::string> ids(request->image_ids().begin(), request->image_ids().end());
    absl::StatusOr<std::vector<StoredImageInfo>> images =
        engine_->GetImages(ids, request->include_region_features());
    if (!images.ok()) return ToGrpcStatus(images.status());
    for (const StoredImageInfo& image : *images) StoredImageToProto(image, response->add_images());
  }
  if (request->caption_ids_size() > 0) {
    const std::vector<std::string> ids(request->caption_ids().begin(), request->caption_ids().end());
    absl::StatusOr<std::vector<StoredCaptionInfo>> captions = engine_->GetCaptions(ids);
    if (!captions.ok()) return ToGrpcStatus(captions.status());
    for (const StoredCaptionInfo& caption : *captions) StoredCaptionToProto(caption, response->add_captions());
  }
  return grpc::Status::OK;
}

grpc::Status ScanServiceImpl::ListItems(grpc::ServerContext* context, const v1::ListItemsRequest* request,
                                        v1::ListItemsResponse* response) {
  if (absl::Status status = auth_->Check(*context); !status.ok()) return ToGrpcStatus(status);
  absl::StatusOr<ItemKind> kind = ItemKindFromProto(*request);
  if (!kind.ok()) return ToGrpcStatus(kind.status());
  absl::StatusOr<ListParams> params = ListParamsFromProto(*request);
  if (!params.ok()) return ToGrpcStatus(params.status());
  absl::StatusOr<ItemPage> page =
      *kind == ItemKind::kImage ? engine_->ListImages(*params) : engine_->ListCaptions(*params);
  if (!page.ok()) return ToGrpcStatus(page.status());
  ItemPageToProto(*page, response);
  return grpc::Status::OK;
}

grpc::Status ScanServiceImpl::ListChanges(grpc::ServerContext* context, const v1::ListChangesRequest* request,
                                          v1::ListChangesResponse* response) {
  if (absl::Status status = auth_->Check(*context); !status.ok()) return ToGrpcStatus(status);
  absl::StatusOr<int64_t> page_size = ChangesPageSizeFromProto(*request);
  if (!page_size.ok()) return ToGrpcStatus(page_size.status());
  absl::StatusOr<ItemChangePage> page = engine_->ListChanges(request->after_sequence(), *page_size);
  if (!page.ok()) return ToGrpcStatus(page.status());
  ItemChangePageToProto(*page, response);
  return grpc::Status::OK;
}

grpc::Status ScanServiceImpl::CreateSnapshot(grpc::ServerContext* context,
                                             const v1::CreateSnapshotRequest* request,
                                             v1::CreateSnapshotResponse* response) {
  if (absl::Status status = auth_->Check(*context); !status.ok()) return ToGrpcStatus(status);
  if (options_.snapshot_dir.empty()) {
    return ToGrpcStatus(absl::FailedPreconditionError(
        "this server takes no snapshots: start it with --snapshot-dir DIR"));
  }
  absl::StatusOr<std::string> name = SnapshotNameFromProto(*request, std::chrono::system_clock::now());
  if (!name.ok()) return ToGrpcStatus(name.status());
  absl::StatusOr<SnapshotInfo> snapshot = engine_->CreateSnapshot(SnapshotDataDir(options_.snapshot_dir, *name));
  if (!snapshot.ok()) return ToGrpcStatus(snapshot.status());
  metrics_->snapshot_last_success().Set(
      std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count());
  SnapshotToProto(*name, *snapshot, response);
  return grpc::Status::OK;
}

grpc::Status ScanServiceImpl::GetStats(grpc::ServerContext* context, const v1::GetStatsRequest* request,
                                       v1::GetStatsResponse* response) {
  if (absl::Status status = auth_->Check(*context); !status.ok()) return ToGrpcStatus(status);
  const DetectorInfo detector = detector_pool_ != nullptr ? detector_pool_->info() : DetectorInfo();
  StatsToProto(engine_->Stats(), options_.model_dirs, options_.version,
               detector_pool_ != nullptr ? &detector : nullptr, response);
  return grpc::Status::OK;
}

void ScanServiceImpl::UpsertImageBatch(grpc::ServerContext* context, const std::vector<const v1::Image*>& images,
                                       std::vector<v1::ItemStatus>* results) {
  const size_t first = results->size();
  std::vector<std::optional<ImageItem>> converted(images.size());
  std::vector<size_t> detect;                    // images whose bytes go to the detector
  std::vector<std::string_view> detect_bytes;
  for (size_t i = 0; i < images.size(); ++i) {
    const v1::Image& image = *images[i];
    results->emplace_back();
    results->back().set_id(image.id());
    if (detector_pool_ != nullptr && image.content_case() == v1::Image::kImageBytes) {
      if (absl::Status status = CheckImageForDetection(image); !status.ok()) {
        ItemStatusToProto(image.id(), status, &results->back());
        continue;
      }
      detect.push_back(i);
      detect_bytes.emplace_back(image.image_bytes());
      continue;
    }
    absl::StatusOr<ImageItem> item = ImageItemFromProto(image);
    if (!item.ok()) {
      ItemStatusToProto(image.id(), item.status(), &results->back());
      continue;
    }
    converted[i] = *std::move(item);
  }
  if (!detect.empty()) {
    std::vector<absl::StatusOr<DetectedRegions>> regions = detector_pool_->Detect(
        detect_bytes, SteadyDeadline(*context), [context] { return context->IsCancelled(); });
    for (size_t j = 0; j < detect.size(); ++j) {
      const size_t i = detect[j];
      absl::StatusOr<ImageItem> item =
          j < regions.size() ? ImageItemFromDetection(*images[i], std::move(regions[j]))
                             : absl::InternalError("the detector pool answered too few images");
      if (!item.ok()) {
        ItemStatusToProto(images[i]->id(), item.status(), &(*results)[first + i]);
        continue;
      }
      converted[i] = *std::move(item);
    }
  }
  std::vector<ImageItem> items;
  std::vector<size_t> slots;  // results index of each item sent to the engine
  for (size_t i = 0; i < converted.size(); ++i) {
    if (!converted[i].has_value()) continue;
    slots.push_back(first + i);
    items.push_back(*std::move(converted[i]));
  }
  if (!items.empty()) {
    const SteadyClock::time_point start = SteadyClock::now();
    const std::vector<ItemResult> engine_results = engine_->UpsertImages(std::move(items));
    metrics_->engine_upsert_seconds(IngestKind::kImage).Observe(SecondsSince(start));
    AppendEngineResults(engine_results, slots, results);
  }
  CountIngested(IngestKind::kImage, *results, first);
}

void ScanServiceImpl::UpsertCaptionBatch(const std::vector<const v1::Caption*>& captions,
                                         std::vector<v1::ItemStatus>* results) {
  const size_t first = results->size();
  std::vector<CaptionItem> items;
  std::vector<size_t> slots;
  for (const v1::Caption* caption : captions) {
    results->emplace_back();
    results->back().set_id(caption->id());
    slots.push_back(results->size() - 1);
    items.push_back(CaptionItemFromProto(*caption));
  }
  if (!items.empty()) {
    const SteadyClock::time_point start = SteadyClock::now();
    const std::vector<ItemResult> engine_results = engine_->UpsertCaptions(std::move(items));
    metrics_->engine_upsert_seconds(IngestKind::kCaption).Observe(SecondsSince(start));
    AppendEngineResults(engine_results, slots, results);
  }
  CountIngested(IngestKind::kCaption, *results, first);
}

void ScanServiceImpl::CountIngested(IngestKind kind, const std::vector<v1::ItemStatus>& results, size_t first) {
  for (size_t i = first; i < results.size(); ++i) {
    metrics_->ingest_items(kind, static_cast<absl::StatusCode>(results[i].code())).Increment();
  }
}

}  // namespace scanserve
