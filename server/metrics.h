// ServerMetrics: owns the Prometheus registry of the server and has one accessor per metric family,
// each documented with its meaning and unit. Histograms are in seconds or counts; no label carries an
// id (cardinality stays bounded: methods, codes, item kinds, directions, devices).
//
// gRPC metrics use the grpc-ecosystem (go-grpc-prometheus) names and labels, so existing dashboards
// work; they are filled by the server interceptor in metrics_interceptor.h. Domain metrics carry the
// `scanserve_` prefix and are filled by the batcher, the service and the engine-stats refresh.
// The text exposition (GET /metrics) is metrics_http.h's job.
#pragma once

#include <map>
#include <memory>
#include <mutex>
#include <string>

#include <prometheus/counter.h>
#include <prometheus/family.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>

#include "absl/status/status.h"
#include "engine/retrieval/retrieval_engine.h"

namespace scanserve {

enum class SearchDirection { kTextToImage, kImageToText };
enum class IngestKind { kImage, kCaption };

class ServerMetrics {
 public:
  // `version` goes into scanserve_build_info.
  explicit ServerMetrics(const std::string& version);
  ServerMetrics(const ServerMetrics&) = delete;
  ServerMetrics& operator=(const ServerMetrics&) = delete;

  // The registry every family lives in; Collect() it to expose.
  const std::shared_ptr<prometheus::Registry>& registry() const { return registry_; }

  // ---- grpc-ecosystem families (labels grpc_service, grpc_method, grpc_type) ----

  // grpc_server_started_total: RPCs started on the server.
  prometheus::Family<prometheus::Counter>& grpc_started() { return *grpc_started_; }
  // grpc_server_handled_total: RPCs completed on the server, with their status (label grpc_code,
  // spelled as grpc-go does: "OK", "InvalidArgument", ...).
  prometheus::Family<prometheus::Counter>& grpc_handled() { return *grpc_handled_; }
  // grpc_server_handling_seconds: time from the call's start until its status is sent, seconds.
  prometheus::Family<prometheus::Histogram>& grpc_handling_seconds() { return *grpc_handling_seconds_; }
  // The buckets of grpc_server_handling_seconds (Prometheus' default latency buckets, as in
  // go-grpc-prometheus).
  static const prometheus::Histogram::BucketBoundaries& LatencyBuckets();

  // ---- dynamic batchers (label direction: text_to_image = SearchImages, image_to_text =
  // SearchCaptions) ----

  // scanserve_batch_size{direction}: queries per merged engine call.
  prometheus::Histogram& batch_size(SearchDirection direction);
  // scanserve_batch_requests{direction}: requests merged into one engine call.
  prometheus::Histogram& batch_requests(SearchDirection direction);
  // scanserve_queue_depth{direction}: requests waiting in the batcher's queue.
  prometheus::Gauge& queue_depth(SearchDirection direction);
  // scanserve_queue_wait_seconds{direction}: time a request waited in the queue before its batch
  // ran, seconds.
  prometheus::Histogram& queue_wait_seconds(SearchDirection direction);
  // scanserve_batcher_rejected_total{direction, reason}: requests answered without scoring; reason
  // is queue_full (RESOURCE_EXHAUSTED), deadline (DEADLINE_EXCEEDED), cancelled, or shutdown.
  prometheus::Counter& batcher_rejected(SearchDirection direction, const std::string& reason);

  // ---- engine calls ----

  // scanserve_engine_search_seconds{direction}: one engine search call (text_to_image: caption
  // encoding + SCAN scoring + top-k over the stored images; image_to_text likewise over captions),
  // seconds: their sum per call; the split is in engine_phase_seconds below.
  prometheus::Histogram& engine_search_seconds(SearchDirection direction);
  // scanserve_engine_upsert_seconds{kind}: one engine upsert call (validation, encoding, durable
  // write, publication to the scorers), seconds.
  prometheus::Histogram& engine_upsert_seconds(IngestKind kind);
  // scanserve_ingest_items_total{kind, code}: items upserted through UpsertImages, UpsertCaptions and
  // Ingest, by per-item result code ("OK", "InvalidArgument", "ResourceExhausted", ...).
  prometheus::Counter& ingest_items(IngestKind kind, absl::StatusCode code);

  // ---- region detector (image bytes in UpsertImages, Ingest, SearchCaptions) ----

  // scanserve_detector_seconds: one detector run (Detect, or DetectBatch over up to
  // --detector-batch images of one call: decoding, the network, region selection), seconds.
  prometheus::Histogram& detector_seconds() { return *detector_seconds_; }
  // scanserve_detector_batch_size: images per detector run.
  prometheus::Histogram& detector_batch_size() { return *detector_batch_size_; }
  // scanserve_detector_queue_depth: images admitted to the detector queue and not yet started.
  prometheus::Gauge& detector_queue_depth() { return *detector_queue_depth_; }
  // scanserve_detector_queue_wait_seconds: time an image waited in the queue before its run, seconds.
  prometheus::Histogram& detector_queue_wait_seconds() { return *detector_queue_wait_seconds_; }
  // scanserve_detector_images_total{result}: images sent to the detector pool, by result code ("OK",
  // "InvalidArgument" for undecodable/oversized images, "ResourceExhausted" for a full queue,
  // "DeadlineExceeded", "Cancelled", "Unavailable" at shutdown, ...).
  prometheus::Counter& detector_images(absl::StatusCode code);

  // scanserve_snapshot_last_success_timestamp_seconds: when the last CreateSnapshot succeeded (Unix
  // time; 0: none since start). Alert on time() minus it for a missed backup.
  prometheus::Gauge& snapshot_last_success() { return *snapshot_last_success_; }

  // ---- credentials (credential_reloader.h; label credential: tls_identity, tls_client_ca,
  // auth_tokens) ----

  // scanserve_credential_reloads_total{credential}: changed credential files now served.
  prometheus::Counter& credential_reloads(const std::string& credential);
  // scanserve_credential_reload_errors_total{credential}: changes that could not be served (a
  // key that does not match its certificate, an unparsable or missing file, no token); the
  // previous credentials stayed.
  prometheus::Counter& credential_reload_errors(const std::string& credential);
  // scanserve_credential_files_served{credential}: 1 when the files as they are now are what is
  // served, 0 while they hold a change that could not be (alert on it: the next restart fails).
  prometheus::Gauge& credential_files_served(const std::string& credential);
  // scanserve_tls_certificate_expiry_timestamp_seconds: when the served certificate expires, Unix
  // time (absent without TLS). Alert on it minus time() running low.
  prometheus::Gauge& tls_certificate_expiry();

  // ---- store state (refreshed from RetrievalEngine::Stats() at each scrape) ----

  // scanserve_images_stored / scanserve_captions_stored: items searchable now.
  prometheus::Gauge& images_stored() { return *images_stored_; }
  prometheus::Gauge& captions_stored() { return *captions_stored_; }
  // scanserve_feature_bytes{device}: bytes the scorers hold for stored items on that device.
  prometheus::Gauge& feature_bytes(const std::string& device);
  // scanserve_feature_bytes_limit / scanserve_feature_bytes_committed: the scorer memory limit
  // ingest is checked against, and the stored items' estimate counted against it (alert on their
  // ratio: at the limit, ingest is RESOURCE_EXHAUSTED).
  prometheus::Gauge& feature_bytes_limit() { return *feature_bytes_limit_; }
  prometheus::Gauge& feature_bytes_committed() { return *feature_bytes_committed_; }
  // scanserve_device_memory_free_bytes / scanserve_device_memory_total_bytes{device}: the GPU's
  // memory (CUDA backend only; alert on free bytes running low: the text encoders, the detector
  // and cuBLAS need device memory besides the store).
  prometheus::Gauge& device_memory_free(const std::string& device);
  prometheus::Gauge& device_memory_total(const std::string& device);
  // scanserve_store_disk_bytes: bytes the durable store occupies on disk.
  prometheus::Gauge& store_disk_bytes() { return *store_disk_bytes_; }
  // scanserve_store_wal_bytes: bytes of the live write-ahead log of the durable store.
  prometheus::Gauge& store_wal_bytes() { return *store_wal_bytes_; }
  // scanserve_store_synced_writes_total: durable (fsync'd) write batches since the server started.
  prometheus::Counter& store_synced_writes() { return *store_synced_writes_; }
  // scanserve_store_sync_seconds_total: time spent in those durable writes, seconds.
  prometheus::Counter& store_sync_seconds() { return *store_sync_seconds_; }
  // scanserve_store_failed_writes_total: store write batches that failed (a full disk, an I/O
  // error): the items of each were refused, nothing was acknowledged.
  prometheus::Counter& store_failed_writes() { return *store_failed_writes_; }
  // scanserve_store_disk_free_bytes: free space on the store's file system (absent when unknown).
  prometheus::Gauge& store_disk_free_bytes();
  // scanserve_store_writes_stopped: 1 while an I/O error has stopped the store's writes (until
  // the store is reopened, which the server tries every second, with a backoff), else 0.
  prometheus::Gauge& store_writes_stopped() { return *store_writes_stopped_; }
  // scanserve_store_reopens_total: reopens of the store after such errors.
  prometheus::Counter& store_reopens() { return *store_reopens_; }
  // scanserve_store_change_log_last_sequence / scanserve_store_change_log_trimmed_through: the
  // newest change in the store's change log, and the one through which it no longer keeps changes
  // (a copy following from before that is refused). deriv() of the first is the rate of writes.
  prometheus::Gauge& store_change_log_last_sequence() { return *store_change_log_last_sequence_; }
  prometheus::Gauge& store_change_log_trimmed_through() { return *store_change_log_trimmed_through_; }
  // scanserve_engine_encode_seconds_total{direction} / scanserve_engine_score_seconds_total
  // {direction}: the two phases of the engine's searches, summed (encode: queries to embeddings;
  // score: SCAN scoring of every stored item + top-k), seconds. rate(score) / rate(encode) says
  // whether the scorer or the encoder bounds a direction.
  prometheus::Counter& engine_phase_seconds(SearchDirection direction, bool score);
  // scanserve_engine_ranked_queries_total{direction, path}: queries the engine ranked, by how:
  // scorer_top_k (one model, no filter), top_lists (a filter or an ensemble decided from the GPU
  // scorers' top lists), full_scores (every stored item's score moved and selected on the host:
  // CPU filters and ensembles, and GPU queries the lists left undecided). On a GPU a growing
  // full_scores share is the sign of rare filters or disagreeing models.
  prometheus::Counter& engine_ranked_queries(SearchDirection direction, const std::string& path);
  // scanserve_scorer_passes_total{kernel}: scoring passes of the CUDA backend by the kernel that
  // ran them, fused or gemm (with --cuda-kernels fused, a growing gemm count means queries or
  // items the fused pass cannot take). Absent on the CPU backend.
  prometheus::Counter& scorer_passes(const std::string& kernel);
  // scanserve_scorer_kernel_chosen{direction, query_rows, kernel}: with --cuda-kernels auto, 1
  // for the kernel the CUDA backend runs for passes of that many stacked query rows ("9-16"), 0
  // for the other (both 0 while it still times them); scanserve_scorer_kernel_pass_seconds: the
  // median pass time of each kernel it chose by. Absent otherwise.
  prometheus::Gauge& scorer_kernel_chosen(SearchDirection direction, const std::string& query_rows,
                                          const std::string& kernel);
  prometheus::Gauge& scorer_kernel_pass_seconds(SearchDirection direction,
                                                const std::string& query_rows,
                                                const std::string& kernel);
  // Sets the gauges above from a Stats() snapshot, and advances the cumulative counters (store,
  // search phases, ranked queries) by how much the engine's values grew since the previous call (they never go
  // down). Thread-safe.
  void UpdateFromStats(const EngineStats& stats);

 private:
  std::shared_ptr<prometheus::Registry> registry_;

  prometheus::Family<prometheus::Counter>* grpc_started_;
  prometheus::Family<prometheus::Counter>* grpc_handled_;
  prometheus::Family<prometheus::Histogram>* grpc_handling_seconds_;

  prometheus::Family<prometheus::Histogram>* batch_size_;
  prometheus::Family<prometheus::Histogram>* batch_requests_;
  prometheus::Family<prometheus::Gauge>* queue_depth_;
  prometheus::Family<prometheus::Histogram>* queue_wait_seconds_;
  prometheus::Family<prometheus::Counter>* batcher_rejected_;

  prometheus::Family<prometheus::Histogram>* engine_search_seconds_;
  prometheus::Family<prometheus::Counter>* engine_encode_seconds_;
  prometheus::Family<prometheus::Counter>* engine_score_seconds_;
  prometheus::Family<prometheus::Counter>* engine_ranked_queries_;
  prometheus::Family<prometheus::Counter>* scorer_passes_;
  prometheus::Family<prometheus::Gauge>* scorer_kernel_chosen_;
  prometheus::Family<prometheus::Gauge>* scorer_kernel_pass_seconds_;
  prometheus::Family<prometheus::Gauge>* scorer_info_;
  prometheus::Family<prometheus::Histogram>* engine_upsert_seconds_;
  prometheus::Family<prometheus::Counter>* ingest_items_;

  prometheus::Histogram* detector_seconds_;
  prometheus::Histogram* detector_batch_size_;
  prometheus::Gauge* detector_queue_depth_;
  prometheus::Histogram* detector_queue_wait_seconds_;
  prometheus::Family<prometheus::Counter>* detector_images_;

  prometheus::Gauge* snapshot_last_success_;
  prometheus::Family<prometheus::Counter>* credential_reloads_;
  prometheus::Family<prometheus::Counter>* credential_reload_errors_;
  prometheus::Family<prometheus::Gauge>* credential_files_served_;
  prometheus::Family<prometheus::Gauge>* tls_certificate_expiry_;
  prometheus::Gauge* images_stored_;
  prometheus::Gauge* captions_stored_;
  prometheus::Family<prometheus::Gauge>* feature_bytes_;
  prometheus::Family<prometheus::Gauge>* device_memory_free_;
  prometheus::Family<prometheus::Gauge>* device_memory_total_;
  prometheus::Gauge* feature_bytes_limit_;
  prometheus::Gauge* feature_bytes_committed_;
  prometheus::Gauge* store_disk_bytes_;
  prometheus::Gauge* store_wal_bytes_;
  prometheus::Counter* store_synced_writes_;
  prometheus::Counter* store_failed_writes_;
  prometheus::Family<prometheus::Gauge>* store_disk_free_bytes_;
  prometheus::Gauge* store_writes_stopped_;
  prometheus::Counter* store_reopens_;
  prometheus::Gauge* store_change_log_last_sequence_;
  prometheus::Gauge* store_change_log_trimmed_through_;
  prometheus::Counter* store_sync_seconds_;

  // Cumulative engine values already added to the store counters.
  std::mutex stats_mu_;
  int64_t seen_synced_writes_ = 0;
  int64_t seen_failed_writes_ = 0;
  int64_t seen_reopens_ = 0;
  double seen_sync_seconds_ = 0;
  SearchPhaseSeconds seen_phases_[2];  // [text_to_image, image_to_text]
  RankingCounts seen_ranked_[2];
  std::map<std::string, int64_t> seen_scorer_passes_;
};

}  // namespace scanserve
