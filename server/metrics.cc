#include "server/metrics.h"

#include "server/grpc_status.h"

namespace scanserve {
namespace {

// Queries or requests per batch: powers of two up to the largest batch anyone configures.
const prometheus::Histogram::BucketBoundaries& CountBuckets() {
  static const auto* buckets =
      new prometheus::Histogram::BucketBoundaries{1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024};
  return *buckets;
}

// Queue waits are microseconds to milliseconds; engine calls milliseconds to seconds.
const prometheus::Histogram::BucketBoundaries& ShortLatencyBuckets() {
  static const auto* buckets = new prometheus::Histogram::BucketBoundaries{
      0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1};
  return *buckets;
}

const prometheus::Histogram::BucketBoundaries& EngineLatencyBuckets() {
  static const auto* buckets = new prometheus::Histogram::BucketBoundaries{
      0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30};
  return *buckets;
}

// A bottom-up detection: about a second on a GPU to several seconds per image on a CPU.
const prometheus::Histogram::BucketBoundaries& DetectorLatencyBuckets() {
  static const auto* buckets = new prometheus::Histogram::BucketBoundaries{
      0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120};
  return *buckets;
}

// Queue waits behind detections: milliseconds to minutes.
const prometheus::Histogram::BucketBoundaries& DetectorWaitBuckets() {
  static const auto* buckets = new prometheus::Histogram::BucketBoundaries{
      0.0001, 0.001, 0.01, 0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120};
  return *buckets;
}

const char* DirectionLabel(SearchDirection direction) {
  return direction == SearchDirection::kTextToImage ? "text_to_image" : "image_to_text";
}

const char* KindLabel(IngestKind kind) { return kind == IngestKind::kImage ? "image" : "caption"; }

}  // namespace

const prometheus::Histogram::BucketBoundaries& ServerMetrics::LatencyBuckets() {
  static const auto* buckets =
      new prometheus::Histogram::BucketBoundaries{0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10};
  return *buckets;
}

ServerMetrics::ServerMetrics(const std::string& version)
    : registry_(std::make_shared<prometheus::Registry>()) {
  prometheus::Registry& r = *registry_;
  grpc_started_ = &prometheus::BuildCounter()
                       .Name("grpc_server_started_total")
                       .Help("Total number of RPCs started on the server.")
                       .Register(r);
  grpc_handled_ = &prometheus::BuildCounter()
                       .Name("grpc_server_handled_total")
                       .Help("Total number of RPCs completed on the server, regardless of success or failure.")
                       .Register(r);
  grpc_handling_seconds_ = &prometheus::BuildHistogram()
                                .Name("grpc_server_handling_seconds")
                                .Help("Histogram of response latency (seconds) of gRPC that had been "
                                      "application-level handled by the server.")
                                .Register(r);

  batch_size_ = &prometheus::BuildHistogram()
                     .Name("scanserve_batch_size")
                     .Help("Caption queries per merged text-to-image engine call.")
                     .Register(r)
                     .Add({}, CountBuckets());
  batch_requests_ = &prometheus::BuildHistogram()
                         .Name("scanserve_batch_requests")
                         .Help("SearchImages requests merged into one engine call.")
                         .Register(r)
                         .Add({}, CountBuckets());
  queue_depth_ = &prometheus::BuildGauge()
                      .Name("scanserve_queue_depth")
                      .Help("SearchImages requests waiting in the dynamic batcher's queue.")
                      .Register(r)
                      .Add({});
  queue_wait_seconds_ = &prometheus::BuildHistogram()
                             .Name("scanserve_queue_wait_seconds")
                             .Help("Time a SearchImages request waited in the batcher's queue, seconds.")
                             .Register(r)
                             .Add({}, ShortLatencyBuckets());
  batcher_rejected_ = &prometheus::BuildCounter()
                           .Name("scanserve_batcher_rejected_total")
                           .Help("SearchImages requests answered without scoring, by reason "
                                 "(queue_full, deadline, cancelled, shutdown).")
                           .Register(r);

  engine_search_seconds_ =
      &prometheus::BuildHistogram()
           .Name("scanserve_engine_search_seconds")
           .Help("One engine search call (query encoding + SCAN scoring + top-k; the engine does not "
                 "split them), seconds, by direction.")
           .Register(r);
  engine_upsert_seconds_ = &prometheus::BuildHistogram()
                                .Name("scanserve_engine_upsert_seconds")
                                .Help("One engine upsert call (encoding + durable write), seconds, by kind.")
                                .Register(r);
  ingest_items_ = &prometheus::BuildCounter()
                       .Name("scanserve_ingest_items_total")
                       .Help("Items upserted (UpsertImages, UpsertCaptions, Ingest) by kind and result code.")
                       .Register(r);

  detector_seconds_ = &prometheus::BuildHistogram()
                           .Name("scanserve_detector_seconds")
                           .Help("One region detector run (one image, or a batch of one call's images), seconds.")
                           .Register(r)
                           .Add({}, DetectorLatencyBuckets());
  detector_batch_size_ = &prometheus::BuildHistogram()
                              .Name("scanserve_detector_batch_size")
                              .Help("Images per region detector run.")
                              .Register(r)
                              .Add({}, CountBuckets());
  detector_queue_depth_ = &prometheus::BuildGauge()
                               .Name("scanserve_detector_queue_depth")
                               .Help("Images waiting in the detector queue (admitted, not started).")
                               .Register(r)
                               .Add({});
  detector_queue_wait_seconds_ = &prometheus::BuildHistogram()
                                      .Name("scanserve_detector_queue_wait_seconds")
                                      .Help("Time an image waited in the detector queue before its run, seconds.")
                                      .Register(r)
                                      .Add({}, DetectorWaitBuckets());
  detector_images_ = &prometheus::BuildCounter()
                          .Name("scanserve_detector_images_total")
                          .Help("Images sent to the region detector, by result code.")
                          .Register(r);

  images_stored_ = &prometheus::BuildGauge()
                        .Name("scanserve_images_stored")
                        .Help("Images stored and searchable.")
                        .Register(r)
                        .Add({});
  captions_stored_ = &prometheus::BuildGauge()
                          .Name("scanserve_captions_stored")
                          .Help("Captions stored and searchable.")
                          .Register(r)
                          .Add({});
  feature_bytes_ = &prometheus::BuildGauge()
                        .Name("scanserve_feature_bytes")
                        .Help("Bytes the scorers hold for stored items, by device.")
                        .Register(r);
  store_disk_bytes_ = &prometheus::BuildGauge()
                           .Name("scanserve_store_disk_bytes")
                           .Help("Bytes the durable feature store occupies on disk.")
                           .Register(r)
                           .Add({});
  store_wal_bytes_ = &prometheus::BuildGauge()
                          .Name("scanserve_store_wal_bytes")
                          .Help("Bytes of the durable store's live write-ahead log.")
                          .Register(r)
                          .Add({});
  store_synced_writes_ = &prometheus::BuildCounter()
                              .Name("scanserve_store_synced_writes_total")
                              .Help("Durable (fsync'd) write batches of the store since start.")
                              .Register(r)
                              .Add({});
  store_sync_seconds_ = &prometheus::BuildCounter()
                             .Name("scanserve_store_sync_seconds_total")
                             .Help("Time spent in durable (fsync'd) store writes since start, seconds.")
                             .Register(r)
                             .Add({});
  prometheus::BuildGauge()
      .Name("scanserve_build_info")
      .Help("Always 1; the label carries the scanserve version.")
      .Register(r)
      .Add({{"version", version}})
      .Set(1);

  // Create the fixed label combinations now, so that they are exposed (as 0) before first use.
  for (SearchDirection d : {SearchDirection::kTextToImage, SearchDirection::kImageToText}) {
    engine_search_seconds(d);
  }
  for (IngestKind k : {IngestKind::kImage, IngestKind::kCaption}) {
    engine_upsert_seconds(k);
    ingest_items(k, absl::StatusCode::kOk);
  }
  for (const char* reason : {"queue_full", "deadline", "cancelled", "shutdown"}) batcher_rejected(reason);
  for (absl::StatusCode code : {absl::StatusCode::kOk, absl::StatusCode::kInvalidArgument,
                                absl::StatusCode::kResourceExhausted}) {
    detector_images(code);
  }
}

prometheus::Counter& ServerMetrics::detector_images(absl::StatusCode code) {
  return detector_images_->Add({{"result", GrpcCodeName(code)}});
}

prometheus::Counter& ServerMetrics::batcher_rejected(const std::string& reason) {
  return batcher_rejected_->Add({{"reason", reason}});
}

prometheus::Histogram& ServerMetrics::engine_search_seconds(SearchDirection direction) {
  return engine_search_seconds_->Add({{"direction", DirectionLabel(direction)}}, EngineLatencyBuckets());
}

prometheus::Histogram& ServerMetrics::engine_upsert_seconds(IngestKind kind) {
  return engine_upsert_seconds_->Add({{"kind", KindLabel(kind)}}, EngineLatencyBuckets());
}

prometheus::Counter& ServerMetrics::ingest_items(IngestKind kind, absl::StatusCode code) {
  return ingest_items_->Add({{"kind", KindLabel(kind)}, {"code", GrpcCodeName(code)}});
}

prometheus::Gauge& ServerMetrics::feature_bytes(const std::string& device) {
  return feature_bytes_->Add({{"device", device}});
}

void ServerMetrics::UpdateFromStats(const EngineStats& stats) {
  images_stored_->Set(static_cast<double>(stats.images));
  captions_stored_->Set(static_cast<double>(stats.captions));
  feature_bytes(stats.backend.empty() ? "unknown" : stats.backend)
      .Set(static_cast<double>(stats.feature_bytes));
  store_disk_bytes_->Set(static_cast<double>(stats.store_disk_bytes));
  store_wal_bytes_->Set(static_cast<double>(stats.store_wal_bytes));
  // The engine's values are cumulative; counters only move forward, by the growth since last time.
  std::lock_guard<std::mutex> lock(stats_mu_);
  if (stats.store_synced_writes > seen_synced_writes_) {
    store_synced_writes_->Increment(static_cast<double>(stats.store_synced_writes - seen_synced_writes_));
    seen_synced_writes_ = stats.store_synced_writes;
  }
  if (stats.store_sync_seconds > seen_sync_seconds_) {
    store_sync_seconds_->Increment(stats.store_sync_seconds - seen_sync_seconds_);
    seen_sync_seconds_ = stats.store_sync_seconds;
  }
}

}  // namespace scanserve
