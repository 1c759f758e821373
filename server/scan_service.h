// ScanServiceImpl: the scanserve.v1.ScanService handlers. Each one checks the caller's credentials,
// converts the request (convert.h), makes one engine call (text->image searches through the dynamic
// batcher; image bytes first through the detector pool), converts the answer back, and returns
// through ToGrpcStatus. Nothing else happens here: no detection, model, scoring or storage work.
#pragma once

#include <string>
#include <vector>

#include <grpcpp/grpcpp.h>

#include "engine/retrieval/retrieval_engine.h"
#include "scanserve/v1/scanserve.grpc.pb.h"
#include "server/auth.h"
#include "server/batching/dynamic_batcher.h"
#include "server/detection/detector_pool.h"
#include "server/metrics.h"

namespace scanserve {

struct ScanServiceOptions {
  // Most consecutive Ingest items of one kind sent to the engine in one upsert.
  int ingest_batch_size = 64;
  // Reported by GetStats.
  std::vector<std::string> model_dirs;
  std::string version;
  // CreateSnapshot's parent directory; empty: FAILED_PRECONDITION.
  std::string snapshot_dir;
};

class ScanServiceImpl final : public v1::ScanService::Service {
 public:
  // Nothing is owned; everything outlives the service (Server owns them all). `detector_pool` may be
  // null: no detector, and image bytes are FAILED_PRECONDITION.
  ScanServiceImpl(RetrievalEngine* engine, TextToImageBatcher* image_batcher,
                  ImageToTextBatcher* caption_batcher, DetectorPool* detector_pool,
                  const Authenticator* auth, ServerMetrics* metrics, ScanServiceOptions options);

  grpc::Status SearchImages(grpc::ServerContext* context, const v1::SearchImagesRequest* request,
                            v1::SearchImagesResponse* response) override;
  grpc::Status SearchCaptions(grpc::ServerContext* context, const v1::SearchCaptionsRequest* request,
                              v1::SearchCaptionsResponse* response) override;
  grpc::Status UpsertImages(grpc::ServerContext* context, const v1::UpsertImagesRequest* request,
                            v1::UpsertImagesResponse* response) override;
  grpc::Status UpsertCaptions(grpc::ServerContext* context, const v1::UpsertCaptionsRequest* request,
                              v1::UpsertCaptionsResponse* response) override;
  grpc::Status Delete(grpc::ServerContext* context, const v1::DeleteRequest* request,
                      v1::DeleteResponse* response) override;
  grpc::Status UpdateItems(grpc::ServerContext* context, const v1::UpdateItemsRequest* request,
                           v1::UpdateItemsResponse* response) override;
  grpc::Status GetItems(grpc::ServerContext* context, const v1::GetItemsRequest* request,
                        v1::GetItemsResponse* response) override;
  grpc::Status ListItems(grpc::ServerContext* context, const v1::ListItemsRequest* request,
                         v1::ListItemsResponse* response) override;
  grpc::Status CreateSnapshot(grpc::ServerContext* context, const v1::CreateSnapshotRequest* request,
                              v1::CreateSnapshotResponse* response) override;
  grpc::Status ListChanges(grpc::ServerContext* context, const v1::ListChangesRequest* request,
                           v1::ListChangesResponse* response) override;
  grpc::Status GetStats(grpc::ServerContext* context, const v1::GetStatsRequest* request,
                        v1::GetStatsResponse* response) override;

 private:
  // Ingest, over the stream's raw messages (the constructor registers it): each IngestRequest is
  // parsed here, so that one that does not parse ends the stream with INVALID_ARGUMENT. gRPC's typed
  // Read() returns false for it, exactly as at the client's end of the stream, and the call would
  // end OK with the rest of the stream unread and unacknowledged.
  grpc::Status IngestMessages(grpc::ServerContext* context,
                              grpc::ServerReaderWriter<grpc::ByteBuffer, grpc::ByteBuffer>* stream);

  // Converts the images (image bytes through the detector pool, together, under the call's deadline;
  // a failed conversion or detection is that item's result), upserts the rest in one engine call,
  // and appends one status per image, in order, to `results`.
  void UpsertImageBatch(grpc::ServerContext* context, const std::vector<const v1::Image*>& images,
                        std::vector<v1::ItemStatus>* results);
  void UpsertCaptionBatch(const std::vector<const v1::Caption*>& captions,
                          std::vector<v1::ItemStatus>* results);
  void CountIngested(IngestKind kind, const std::vector<v1::ItemStatus>& results, size_t first);

  RetrievalEngine* const engine_;
  TextToImageBatcher* const image_batcher_;    // SearchImages
  ImageToTextBatcher* const caption_batcher_;  // SearchCaptions
  DetectorPool* const detector_pool_;  // null: no detector
  const Authenticator* const auth_;
  ServerMetrics* const metrics_;
  const ScanServiceOptions options_;
};

}  // namespace scanserve
