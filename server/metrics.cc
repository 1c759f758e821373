#include "server/metrics.h"

#include "absl/strings/str_cat.h"
#include "server/grpc_status.h"

namespace scanserve {
namespace {

// Moves `counter` forward by how much the cumulative engine value `now` grew since *seen; a
// smaller value moves nothing (counters never go back).
template <typename T>
void AdvanceCounter(prometheus::Counter& counter, T now, T* seen) {
  if (now <= *seen) return;
  counter.Increment(static_cast<double>(now - *seen));
  *seen = now;
}

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
                     .Help("Queries per merged engine search call, by direction.")
                     .Register(r);
  batch_requests_ = &prometheus::BuildHistogram()
                         .Name("scanserve_batch_requests")
                         .Help("Search requests merged into one engine call, by direction.")
                         .Register(r);
  queue_depth_ = &prometheus::BuildGauge()
                      .Name("scanserve_queue_depth")
                      .Help("Search requests waiting in the dynamic batcher's queue, by direction.")
                      .Register(r);
  queue_wait_seconds_ = &prometheus::BuildHistogram()
                             .Name("scanserve_queue_wait_seconds")
                             .Help("Time a search request waited in the batcher's queue, seconds, by "
                                   "direction.")
                             .Register(r);
  batcher_rejected_ = &prometheus::BuildCounter()
                           .Name("scanserve_batcher_rejected_total")
                           .Help("Search requests answered without scoring, by direction and reason "
                                 "(queue_full, deadline, cancelled, shutdown).")
                           .Register(r);

  engine_search_seconds_ =
      &prometheus::BuildHistogram()
           .Name("scanserve_engine_search_seconds")
           .Help("One engine search call (query encoding + SCAN scoring + top-k; split in "
                 "scanserve_engine_{encode,score}_seconds_total), seconds, by direction.")
           .Register(r);
  engine_encode_seconds_ = &prometheus::BuildCounter()
                               .Name("scanserve_engine_encode_seconds_total")
                               .Help("Search time spent turning queries into embeddings, seconds, "
                                     "by direction.")
                               .Register(r);
  engine_ranked_queries_ = &prometheus::BuildCounter()
                               .Name("scanserve_engine_ranked_queries_total")
                               .Help("Queries the engine ranked, by direction and path: "
                                     "scorer_top_k, top_lists (GPU filters and ensembles) or "
                                     "full_scores.")
                               .Register(r);
  scorer_passes_ = &prometheus::BuildCounter()
                       .Name("scanserve_scorer_passes_total")
                       .Help("Scoring passes of the CUDA backend, by kernel: fused or gemm.")
                       .Register(r);
  scorer_info_ = &prometheus::BuildGauge()
                      .Name("scanserve_scorer_info")
                      .Help("Always 1; the labels say how stored features are scored: the backend "
                            "(cpu, cuda:N), the storage precision and the queries' precision "
                            "(fp32, or on CUDA bf16x2 / bf16: --cuda-query-precision).")
                      .Register(r);
  scorer_kernel_chosen_ =
      &prometheus::BuildGauge()
           .Name("scanserve_scorer_kernel_chosen")
           .Help("--cuda-kernels auto: 1 for the kernel the CUDA backend runs for passes of "
                 "query_rows stacked query rows, 0 for the other, by direction.")
           .Register(r);
  scorer_kernel_pass_seconds_ =
      &prometheus::BuildGauge()
           .Name("scanserve_scorer_kernel_pass_seconds")
           .Help("--cuda-kernels auto: median pass time of each kernel, as timed to choose "
                 "between them, by direction and query rows.")
           .Register(r);
  engine_score_seconds_ = &prometheus::BuildCounter()
                              .Name("scanserve_engine_score_seconds_total")
                              .Help("Search time spent scoring the stored items (SCAN) and "
                                    "selecting the top k, seconds, by direction.")
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

  snapshot_last_success_ = &prometheus::BuildGauge()
                                .Name("scanserve_snapshot_last_success_timestamp_seconds")
                                .Help("Unix time of the last successful CreateSnapshot (0: none since start).")
                                .Register(r)
                                .Add({});
  credential_reloads_ = &prometheus::BuildCounter()
                            .Name("scanserve_credential_reloads_total")
                            .Help("Changed credential files (TLS identity, client CAs, bearer tokens) now served.")
                            .Register(r);
  credential_reload_errors_ = &prometheus::BuildCounter()
                                  .Name("scanserve_credential_reload_errors_total")
                                  .Help("Credential file changes that could not be served; the previous "
                                        "credentials stayed.")
                                  .Register(r);
  credential_files_served_ = &prometheus::BuildGauge()
                                 .Name("scanserve_credential_files_served")
                                 .Help("1 when the credential files as they are now are served, 0 while they "
                                       "hold a change that could not be.")
                                 .Register(r);
  tls_certificate_expiry_ = &prometheus::BuildGauge()
                                .Name("scanserve_tls_certificate_expiry_timestamp_seconds")
                                .Help("When the served TLS certificate expires, Unix time.")
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
  device_memory_free_ = &prometheus::BuildGauge()
                             .Name("scanserve_device_memory_free_bytes")
                             .Help("Free memory of the scorers' GPU, bytes (CUDA backend only).")
                             .Register(r);
  device_memory_total_ = &prometheus::BuildGauge()
                              .Name("scanserve_device_memory_total_bytes")
                              .Help("Total memory of the scorers' GPU, bytes (CUDA backend only).")
                              .Register(r);
  feature_bytes_limit_ = &prometheus::BuildGauge()
                              .Name("scanserve_feature_bytes_limit")
                              .Help("Scorer memory limit ingest is checked against (max_feature_bytes, "
                                    "or what the GPU can hold), bytes.")
                              .Register(r)
                              .Add({});
  feature_bytes_committed_ = &prometheus::BuildGauge()
                                  .Name("scanserve_feature_bytes_committed")
                                  .Help("Estimated scorer bytes of the stored items, counted against "
                                        "scanserve_feature_bytes_limit.")
                                  .Register(r)
                                  .Add({});
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
  store_failed_writes_ = &prometheus::BuildCounter()
                              .Name("scanserve_store_failed_writes_total")
                              .Help("Store write batches that failed since start (a full disk, an I/O "
                                    "error); their items were refused.")
                              .Register(r)
                              .Add({});
  store_disk_free_bytes_ = &prometheus::BuildGauge()
                                .Name("scanserve_store_disk_free_bytes")
                                .Help("Free space on the durable store's file system, bytes.")
                                .Register(r);
  store_writes_stopped_ = &prometheus::BuildGauge()
                               .Name("scanserve_store_writes_stopped")
                               .Help("1 while an I/O error has stopped the store's writes (they are "
                                     "refused until the store is reopened, which the server tries "
                                     "every second, with a backoff), else 0.")
                               .Register(r)
                               .Add({});
  store_reopens_ = &prometheus::BuildCounter()
                        .Name("scanserve_store_reopens_total")
                        .Help("Reopens of the store after an I/O error had stopped its writes.")
                        .Register(r)
                        .Add({});
  store_change_log_last_sequence_ = &prometheus::BuildGauge()
                                         .Name("scanserve_store_change_log_last_sequence")
                                         .Help("Sequence number of the newest change (upsert, update, "
                                               "delete) in the store's change log; 0 = none.")
                                         .Register(r)
                                         .Add({});
  store_change_log_trimmed_through_ = &prometheus::BuildGauge()
                                           .Name("scanserve_store_change_log_trimmed_through")
                                           .Help("The change log no longer keeps changes up to this "
                                                 "sequence number (older than its retention).")
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
    engine_phase_seconds(d, false);
    engine_phase_seconds(d, true);
    for (const char* path : {"scorer_top_k", "top_lists", "full_scores"}) {
      engine_ranked_queries(d, path);
    }
    batch_size(d);
    batch_requests(d);
    queue_depth(d);
    queue_wait_seconds(d);
    for (const char* reason : {"queue_full", "deadline", "cancelled", "shutdown"}) {
      batcher_rejected(d, reason);
    }
  }
  for (IngestKind k : {IngestKind::kImage, IngestKind::kCaption}) {
    engine_upsert_seconds(k);
    ingest_items(k, absl::StatusCode::kOk);
  }
  for (absl::StatusCode code : {absl::StatusCode::kOk, absl::StatusCode::kInvalidArgument,
                                absl::StatusCode::kResourceExhausted}) {
    detector_images(code);
  }
}

prometheus::Counter& ServerMetrics::detector_images(absl::StatusCode code) {
  return detector_images_->Add({{"result", GrpcCodeName(code)}});
}

prometheus::Counter& ServerMetrics::batcher_rejected(SearchDirection direction,
                                                    const std::string& reason) {
  return batcher_rejected_->Add({{"direction", DirectionLabel(direction)}, {"reason", reason}});
}

prometheus::Counter& ServerMetrics::engine_phase_seconds(SearchDirection direction, bool score) {
  return (score ? engine_score_seconds_ : engine_encode_seconds_)
      ->Add({{"direction", DirectionLabel(direction)}});
}

prometheus::Counter& ServerMetrics::engine_ranked_queries(SearchDirection direction,
                                                         const std::string& path) {
  return engine_ranked_queries_->Add({{"direction", DirectionLabel(direction)}, {"path", path}});
}

prometheus::Counter& ServerMetrics::scorer_passes(const std::string& kernel) {
  return scorer_passes_->Add({{"kernel", kernel}});
}

prometheus::Histogram& ServerMetrics::batch_size(SearchDirection direction) {
  return batch_size_->Add({{"direction", DirectionLabel(direction)}}, CountBuckets());
}

prometheus::Histogram& ServerMetrics::batch_requests(SearchDirection direction) {
  return batch_requests_->Add({{"direction", DirectionLabel(direction)}}, CountBuckets());
}

prometheus::Gauge& ServerMetrics::queue_depth(SearchDirection direction) {
  return queue_depth_->Add({{"direction", DirectionLabel(direction)}});
}

prometheus::Histogram& ServerMetrics::queue_wait_seconds(SearchDirection direction) {
  return queue_wait_seconds_->Add({{"direction", DirectionLabel(direction)}}, ShortLatencyBuckets());
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

prometheus::Gauge& ServerMetrics::scorer_kernel_chosen(SearchDirection direction,
                                                      const std::string& query_rows,
                                                      const std::string& kernel) {
  return scorer_kernel_chosen_->Add(
      {{"direction", DirectionLabel(direction)}, {"query_rows", query_rows}, {"kernel", kernel}});
}

prometheus::Gauge& ServerMetrics::scorer_kernel_pass_seconds(SearchDirection direction,
                                                            const std::string& query_rows,
                                                            const std::string& kernel) {
  return scorer_kernel_pass_seconds_->Add(
      {{"direction", DirectionLabel(direction)}, {"query_rows", query_rows}, {"kernel", kernel}});
}

prometheus::Gauge& ServerMetrics::device_memory_free(const std::string& device) {
  return device_memory_free_->Add({{"device", device}});
}

prometheus::Gauge& ServerMetrics::device_memory_total(const std::string& device) {
  return device_memory_total_->Add({{"device", device}});
}

prometheus::Counter& ServerMetrics::credential_reloads(const std::string& credential) {
  return credential_reloads_->Add({{"credential", credential}});
}

prometheus::Counter& ServerMetrics::credential_reload_errors(const std::string& credential) {
  return credential_reload_errors_->Add({{"credential", credential}});
}

prometheus::Gauge& ServerMetrics::credential_files_served(const std::string& credential) {
  return credential_files_served_->Add({{"credential", credential}});
}

prometheus::Gauge& ServerMetrics::tls_certificate_expiry() { return tls_certificate_expiry_->Add({}); }

prometheus::Gauge& ServerMetrics::store_disk_free_bytes() { return store_disk_free_bytes_->Add({}); }

void ServerMetrics::UpdateFromStats(const EngineStats& stats) {
  images_stored_->Set(static_cast<double>(stats.images));
  captions_stored_->Set(static_cast<double>(stats.captions));
  const std::string device = stats.backend.empty() ? "unknown" : stats.backend;
  feature_bytes(device).Set(static_cast<double>(stats.feature_bytes));
  if (!stats.storage.empty()) {  // fixed at start: one series
    scorer_info_
        ->Add({{"backend", device}, {"storage", stats.storage}, {"query_precision", stats.query_precision}})
        .Set(1);
  }
  if (stats.device_memory_total_bytes >= 0) {
    device_memory_free(device).Set(static_cast<double>(stats.device_memory_free_bytes));
    device_memory_total(device).Set(static_cast<double>(stats.device_memory_total_bytes));
  }
  for (SearchDirection d : {SearchDirection::kTextToImage, SearchDirection::kImageToText}) {
    const std::vector<Scorer::KernelChoice>& choices =
        d == SearchDirection::kTextToImage ? stats.text_to_image_kernels
                                           : stats.image_to_text_kernels;
    for (const Scorer::KernelChoice& c : choices) {
      const std::string rows = c.min_query_rows == c.max_query_rows
                                   ? absl::StrCat(c.max_query_rows)
                                   : absl::StrCat(c.min_query_rows, "-", c.max_query_rows);
      for (const char* kernel : {"gemm", "fused"}) {
        scorer_kernel_chosen(d, rows, kernel).Set(c.kernel == kernel ? 1 : 0);
      }
      for (const auto& [kernel, seconds] : c.median_seconds) {
        scorer_kernel_pass_seconds(d, rows, kernel).Set(seconds);
      }
    }
  }
  feature_bytes_limit_->Set(static_cast<double>(stats.feature_bytes_limit));
  feature_bytes_committed_->Set(static_cast<double>(stats.feature_bytes_committed));
  store_disk_bytes_->Set(static_cast<double>(stats.store_disk_bytes));
  store_wal_bytes_->Set(static_cast<double>(stats.store_wal_bytes));
  if (stats.store_disk_free_bytes >= 0) {
    store_disk_free_bytes().Set(static_cast<double>(stats.store_disk_free_bytes));
  }
  store_writes_stopped_->Set(stats.store_writes_stopped ? 1 : 0);
  store_change_log_last_sequence_->Set(static_cast<double>(stats.last_change_sequence));
  store_change_log_trimmed_through_->Set(static_cast<double>(stats.changes_trimmed_through));
  // The engine's values are cumulative; counters only move forward, by the growth since last time.
  std::lock_guard<std::mutex> lock(stats_mu_);
  AdvanceCounter(*store_reopens_, stats.store_reopens, &seen_reopens_);
  AdvanceCounter(*store_synced_writes_, stats.store_synced_writes, &seen_synced_writes_);
  AdvanceCounter(*store_sync_seconds_, stats.store_sync_seconds, &seen_sync_seconds_);
  AdvanceCounter(*store_failed_writes_, stats.store_failed_writes, &seen_failed_writes_);
  for (SearchDirection d : {SearchDirection::kTextToImage, SearchDirection::kImageToText}) {
    const int i = d == SearchDirection::kTextToImage ? 0 : 1;
    const SearchPhaseSeconds& phases = i == 0 ? stats.text_to_image : stats.image_to_text;
    AdvanceCounter(engine_phase_seconds(d, false), phases.encode, &seen_phases_[i].encode);
    AdvanceCounter(engine_phase_seconds(d, true), phases.score, &seen_phases_[i].score);
    const RankingCounts& ranked = i == 0 ? stats.text_to_image_ranking : stats.image_to_text_ranking;
    AdvanceCounter(engine_ranked_queries(d, "scorer_top_k"), ranked.scorer_top_k, &seen_ranked_[i].scorer_top_k);
    AdvanceCounter(engine_ranked_queries(d, "top_lists"), ranked.top_lists, &seen_ranked_[i].top_lists);
    AdvanceCounter(engine_ranked_queries(d, "full_scores"), ranked.full_scores, &seen_ranked_[i].full_scores);
  }
  for (const auto& [kernel, passes] : stats.scorer_passes) {
    AdvanceCounter(scorer_passes(kernel), passes, &seen_scorer_passes_[kernel]);
  }
}

}  // namespace scanserve
