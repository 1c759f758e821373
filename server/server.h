// Server: assembles and runs scanserve. It owns the engine, the region detector (if any) and
// everything in front of them: the ScanService handlers, the dynamic batcher, the detector pool,
// grpc.health.v1 and reflection, the metrics registry, interceptor and HTTP endpoint. Lifecycle, as in Triton's server: Create() validates and builds
// (nothing listens yet), Start() listens and warms up, Stop(deadline) drains and closes.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <grpcpp/grpcpp.h>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "engine/detector/region_detector.h"
#include "engine/retrieval/retrieval_engine.h"
#include "server/batching/dynamic_batcher.h"
#include "server/call_log.h"
#include "server/detection/detector_pool.h"

namespace scanserve {

class Authenticator;
class CallTracker;
class CredentialReloader;
class MetricsHttpServer;
class ScanServiceImpl;
class ServerMetrics;

// TLS for the gRPC port: both files PEM, or neither (plaintext).
struct TlsOptions {
  std::string cert_file;  // certificate chain
  std::string key_file;   // private key
  // PEM CA certificates: when set, every client must present a certificate they signed (mutual
  // TLS; a client without one fails the handshake). Needs cert_file.
  std::string client_ca_file;
};

struct ServerOptions {
  std::string listen_address = "127.0.0.1:50051";   // gRPC, HOST:PORT (port 0 = any free port)
  std::string metrics_address = "127.0.0.1:9464";   // HTTP /metrics and /healthz; empty = none
  // Largest request or response message, bytes; beyond it gRPC answers RESOURCE_EXHAUSTED.
  // Images (features or encoded bytes) easily exceed gRPC's 4 MiB default: the default carries an
  // UpsertImages of two encoded images of the largest size (detection.max_image_bytes, 32 MiB) or
  // hundreds of typical photos; Ingest sends one image per message.
  int64_t max_message_bytes = 64LL << 20;
  // Memory gRPC may hold for connections and the requests it is receiving (its ResourceQuota);
  // 0 = no bound. Past it gRPC cancels the streams buffering the most (RESOURCE_EXHAUSTED) rather
  // than grow, so a burst of large uploads cannot take the process's memory; requests already
  // handed to a handler are no longer counted. At least 2 * max_message_bytes: one message is
  // held twice while it is decoded.
  int64_t grpc_memory_quota_bytes = 2LL << 30;
  int ingest_batch_size = 64;  // most consecutive Ingest items per engine upsert
  // Connections older than this (seconds; 0 = never) are told to go away (GOAWAY): their clients
  // reconnect, and behind an L4 load balancer (a Kubernetes Service) spread over the replicas
  // again instead of staying on the ones that were up first. Calls in flight then get
  // max_connection_age_grace_s more to finish.
  int max_connection_age_s = 0;
  int max_connection_age_grace_s = 30;
  // Keepalive (seconds; 0 = gRPC's defaults). keepalive_s: the server pings connections idle this
  // long, to drop dead peers and keep NAT and load-balancer state alive (gRPC: 2 h).
  // min_client_ping_interval_s: clients may ping this often, also without calls in flight (gRPC
  // allows one ping per 5 min, none on an idle connection, and closes the connection with
  // "too_many_pings" otherwise), so that clients can keep their own connections alive.
  int keepalive_s = 0;
  int min_client_ping_interval_s = 0;
  // Whether clients may send compressed (gzip, deflate) requests. gRPC 1.51 inflates a compressed
  // message in full before it checks max_message_bytes: a 200 KB gzip request of zeros costs the
  // server 200 MB, a few MB of it gigabytes. Refused (UNIMPLEMENTED, "Compression algorithm 'gzip'
  // is disabled") unless accepted here, for trusted clients.
  bool accept_compressed_requests = false;
  TlsOptions tls;
  std::string auth_token;  // non-empty: ScanService calls need "authorization: Bearer <token>"
  // Non-empty: the accepted tokens are this file's lines (auth.h: ParseTokenFile); not with
  // auth_token.
  std::string auth_token_file;
  // How often the TLS files and the token file are read again (seconds; 0 = only at start, and
  // on SIGHUP through ReloadCredentials): what changed and passes the checks is served from then
  // on, without a restart (credential_reloader.h).
  int credential_reload_s = 60;
  DynamicBatcherOptions batching;
  DetectorPoolOptions detection;  // used when Create() is given a detector
  std::vector<std::string> model_dirs;  // reported by GetStats (the engine was built from them)
  std::string version = "0.0.0";
  // How often the engine's Health() is checked once serving; a failure turns health NOT_SERVING
  // for good (a broken GPU scorer does not heal: restart to reload the store).
  int health_poll_ms = 1000;
  // Which finished calls get a log line on stderr (server failures, overload, slow calls).
  CallLogOptions call_log;
  // CreateSnapshot writes snapshots into new directories here (created by Create if absent);
  // empty: snapshots are refused.
  std::string snapshot_dir;
};

// INVALID_ARGUMENT naming the first field out of range.
absl::Status ValidateServerOptions(const ServerOptions& options);

// Whether grpc_memory_quota_bytes is 0 (no bound) or holds one largest message twice over (it is
// held twice while decoded). The command line checks it too, to refuse before loading the models.
bool GrpcMemoryQuotaIsValid(const ServerOptions& options);

class Server {
 public:
  // Validates the options, reads and checks the TLS and token files, and builds the service,
  // batcher, detector pool and metrics around `engine` (non-null, already loaded) and `detector`
  // (already loaded; null = none: image bytes are then FAILED_PRECONDITION). Nothing listens until
  // Start().
  static absl::StatusOr<std::unique_ptr<Server>> Create(ServerOptions options,
                                                        std::unique_ptr<RetrievalEngine> engine,
                                                        std::unique_ptr<RegionDetector> detector = nullptr);
  ~Server();  // Stop() with an immediate deadline if still running
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  // Listens (health NOT_SERVING), starts the metrics endpoint, warms the engine up with one search,
  // then reports SERVING (the engine and the detector, if any, were loaded before Create) for "" and "scanserve.v1.ScanService". UNAVAILABLE when a port cannot be
  // bound; the warm-up's error when it fails. Call once.
  absl::Status Start();

  // The first step of a shutdown behind a load balancer: health NOT_SERVING (grpc.health.v1 and
  // /healthz) while every call is still served, so that balancers and a Kubernetes Service's
  // endpoints stop sending new calls before Stop() refuses them. Idempotent; Stop() follows.
  void Drain();

  // Graceful shutdown: health NOT_SERVING, drain the batcher (queued searches are answered), drain
  // the detector pool until the deadline (images still queued then are UNAVAILABLE),
  // grpc::Server::Shutdown(deadline) (no new calls; in-flight calls finish, those still running at
  // the deadline are cancelled; once no ScanService call is left, idle connections and health
  // watches are closed without waiting for the deadline), stop the metrics endpoint, close the
  // engine. Idempotent.
  void Stop(std::chrono::system_clock::time_point deadline);

  // Reads the TLS and token files again now, as the reload thread does every credential_reload_s
  // (run_server.cc calls it on SIGHUP): returns how many credentials were replaced.
  int ReloadCredentials();

  // Bound ports after Start() (useful with port 0); 0 when not listening.
  int port() const { return port_; }
  int metrics_port() const;
  bool serving() const { return serving_; }

  ServerMetrics& metrics() { return *metrics_; }

 private:
  Server(ServerOptions options, std::unique_ptr<RetrievalEngine> engine, std::unique_ptr<RegionDetector> detector);
  absl::Status WarmUp();
  // Every options_.health_poll_ms until Stop(): lets the engine reopen a store whose writes an I/O
  // error stopped, and polls engine_->Health().
  void WatchEngineHealth();

  const ServerOptions options_;
  // Destroyed in reverse order: the gRPC server goes before what its handlers use.
  std::unique_ptr<RetrievalEngine> engine_;
  std::unique_ptr<RegionDetector> detector_;  // null: no detector
  std::unique_ptr<ServerMetrics> metrics_;
  std::unique_ptr<CallLog> call_log_;
  std::unique_ptr<CredentialReloader> credentials_;  // TLS key material and token files
  std::unique_ptr<Authenticator> auth_;
  std::unique_ptr<EngineImageSearcher> image_searcher_;
  std::unique_ptr<EngineCaptionSearcher> caption_searcher_;
  std::unique_ptr<TextToImageBatcher> image_batcher_;    // SearchImages
  std::unique_ptr<ImageToTextBatcher> caption_batcher_;  // SearchCaptions
  std::unique_ptr<DetectorPool> detector_pool_;  // null: no detector
  std::unique_ptr<ScanServiceImpl> service_;
  std::unique_ptr<MetricsHttpServer> metrics_http_;
  CallTracker* call_tracker_ = nullptr;  // owned by grpc_server_ (an interceptor factory)
  std::unique_ptr<grpc::Server> grpc_server_;

  int port_ = 0;
  std::atomic<bool> serving_{false};
  std::atomic<bool> stopped_{false};
  std::thread health_watch_;
  std::mutex health_mu_;  // with health_cv_: wakes the watch on Stop()
  std::condition_variable health_cv_;
};

}  // namespace scanserve
