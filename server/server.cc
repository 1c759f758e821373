#include "server/server.h"

#include <algorithm>
#include <climits>
#include <filesystem>
#include <thread>
#include <utility>

#include <grpc/compression.h>
#include <grpc/grpc.h>
#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/health_check_service_interface.h>
#include <grpcpp/resource_quota.h>
#include <grpcpp/security/server_credentials.h>

#include "absl/strings/str_cat.h"
#include "server/auth.h"
#include "server/call_tracker.h"
#include "server/log.h"
#include "server/metrics.h"
#include "server/metrics_http.h"
#include "server/call_log_interceptor.h"
#include "server/credential_reloader.h"
#include "server/metrics_interceptor.h"
#include "server/scan_service.h"
#include "server/unparsable_request_interceptor.h"

namespace scanserve {
namespace {

constexpr char kServiceName[] = "scanserve.v1.ScanService";

}  // namespace

bool GrpcMemoryQuotaIsValid(const ServerOptions& options) {
  return options.grpc_memory_quota_bytes == 0 ||
         (options.grpc_memory_quota_bytes > 0 && options.grpc_memory_quota_bytes / 2 >= options.max_message_bytes);
}

absl::Status ValidateServerOptions(const ServerOptions& options) {
  if (options.listen_address.empty()) return absl::InvalidArgumentError("listen address is empty");
  if (options.max_message_bytes < 1024 || options.max_message_bytes > INT_MAX) {
    return absl::InvalidArgumentError(absl::StrCat("max_message_bytes must be in 1024..", INT_MAX, ", got ",
                                                   options.max_message_bytes));
  }
  if (!GrpcMemoryQuotaIsValid(options)) {
    return absl::InvalidArgumentError(
        absl::StrCat("grpc_memory_quota_bytes must be 0 (no bound) or at least twice max_message_bytes (",
                     2 * options.max_message_bytes, "), got ", options.grpc_memory_quota_bytes));
  }
  if (options.health_poll_ms < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("health_poll_ms must be >= 1, got ", options.health_poll_ms));
  }
  if (options.keepalive_s < 0 || options.min_client_ping_interval_s < 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "keepalive_s and min_client_ping_interval_s must be >= 0, got ", options.keepalive_s,
        " and ", options.min_client_ping_interval_s));
  }
  if (options.max_connection_age_s < 0 || options.max_connection_age_grace_s < 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "max_connection_age_s and max_connection_age_grace_s must be >= 0, got ",
        options.max_connection_age_s, " and ", options.max_connection_age_grace_s));
  }
  if (options.ingest_batch_size < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("ingest_batch_size must be >= 1, got ", options.ingest_batch_size));
  }
  if (!options.auth_token.empty() && !options.auth_token_file.empty()) {
    return absl::InvalidArgumentError("a bearer token and a token file exclude each other: set one");
  }
  if (options.credential_reload_s < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("credential_reload_s must be >= 0, got ", options.credential_reload_s));
  }
  if (options.tls.cert_file.empty() != options.tls.key_file.empty()) {
    return absl::InvalidArgumentError("TLS needs both a certificate and a key file");
  }
  if (!options.tls.client_ca_file.empty() && options.tls.cert_file.empty()) {
    return absl::InvalidArgumentError(
        "client certificates (mutual TLS) need the server's own certificate and key");
  }
  if (absl::Status status = ValidateDetectorPoolOptions(options.detection); !status.ok()) return status;
  if (absl::Status status = ValidateCallLogOptions(options.call_log); !status.ok()) return status;
  return ValidateDynamicBatcherOptions(options.batching);
}

absl::StatusOr<std::unique_ptr<Server>> Server::Create(ServerOptions options,
                                                       std::unique_ptr<RetrievalEngine> engine,
                                                       std::unique_ptr<RegionDetector> detector) {
  if (engine == nullptr) return absl::InvalidArgumentError("Server::Create needs an engine");
  if (absl::Status status = ValidateServerOptions(options); !status.ok()) return status;
  std::unique_ptr<Server> server(new Server(std::move(options), std::move(engine), std::move(detector)));
  CredentialFiles credential_files;
  credential_files.tls_cert_file = server->options_.tls.cert_file;
  credential_files.tls_key_file = server->options_.tls.key_file;
  credential_files.tls_client_ca_file = server->options_.tls.client_ca_file;
  credential_files.auth_token_file = server->options_.auth_token_file;
  absl::StatusOr<std::unique_ptr<CredentialReloader>> credentials =
      CredentialReloader::Create(std::move(credential_files), server->metrics_.get());
  if (!credentials.ok()) return credentials.status();
  server->credentials_ = *std::move(credentials);
  server->auth_ = std::make_unique<Authenticator>(
      server->options_.auth_token_file.empty() ? std::vector<std::string>{server->options_.auth_token}
                                               : server->credentials_->initial_tokens());
  if (!server->options_.snapshot_dir.empty()) {
    // Like the data directory: created at start, so that the first snapshot does not fail on it.
    std::error_code error;
    std::filesystem::create_directories(server->options_.snapshot_dir, error);
    if (error || !std::filesystem::is_directory(server->options_.snapshot_dir)) {
      return absl::FailedPreconditionError(absl::StrCat("cannot create the snapshot directory ",
                                                        server->options_.snapshot_dir, ": ", error.message()));
    }
  }
  absl::StatusOr<std::unique_ptr<TextToImageBatcher>> image_batcher = TextToImageBatcher::Create(
      server->options_.batching, server->image_searcher_.get(), server->metrics_.get());
  if (!image_batcher.ok()) return image_batcher.status();
  server->image_batcher_ = *std::move(image_batcher);
  absl::StatusOr<std::unique_ptr<ImageToTextBatcher>> caption_batcher = ImageToTextBatcher::Create(
      server->options_.batching, server->caption_searcher_.get(), server->metrics_.get());
  if (!caption_batcher.ok()) return caption_batcher.status();
  server->caption_batcher_ = *std::move(caption_batcher);
  if (server->detector_ != nullptr) {
    absl::StatusOr<std::unique_ptr<DetectorPool>> pool =
        DetectorPool::Create(server->options_.detection, server->detector_.get(), server->metrics_.get());
    if (!pool.ok()) return pool.status();
    server->detector_pool_ = *std::move(pool);
  }
  ScanServiceOptions service_options;
  service_options.ingest_batch_size = server->options_.ingest_batch_size;
  service_options.model_dirs = server->options_.model_dirs;
  service_options.version = server->options_.version;
  service_options.snapshot_dir = server->options_.snapshot_dir;
  server->service_ = std::make_unique<ScanServiceImpl>(server->engine_.get(), server->image_batcher_.get(),
                                                       server->caption_batcher_.get(),
                                                       server->detector_pool_.get(), server->auth_.get(),
                                                       server->metrics_.get(), std::move(service_options));
  return server;
}

Server::Server(ServerOptions options, std::unique_ptr<RetrievalEngine> engine,
               std::unique_ptr<RegionDetector> detector)
    : options_(std::move(options)),
      engine_(std::move(engine)),
      detector_(std::move(detector)),
      metrics_(std::make_unique<ServerMetrics>(options_.version)),
      call_log_(std::make_unique<CallLog>(options_.call_log)),
      image_searcher_(std::make_unique<EngineImageSearcher>(engine_.get())),
      caption_searcher_(std::make_unique<EngineCaptionSearcher>(engine_.get())) {}

Server::~Server() { Stop(std::chrono::system_clock::now()); }

int Server::metrics_port() const { return metrics_http_ != nullptr ? metrics_http_->port() : 0; }

absl::Status Server::Start() {
  if (grpc_server_ != nullptr || stopped_) return absl::FailedPreconditionError("Server::Start called twice");

  // Both are process-wide switches read by the builder.
  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();

  grpc::ServerBuilder builder;
  std::shared_ptr<grpc::ServerCredentials> credentials = grpc::InsecureServerCredentials();
  if (credentials_->tls() != nullptr) credentials = credentials_->tls()->ServerCredentials();
  builder.AddListeningPort(options_.listen_address, credentials, &port_);
  // gRPC sets SO_REUSEPORT by default: a second server on the same port would silently share it.
  builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
  if (options_.max_connection_age_s > 0) {
    builder.AddChannelArgument(GRPC_ARG_MAX_CONNECTION_AGE_MS, options_.max_connection_age_s * 1000);
    builder.AddChannelArgument(GRPC_ARG_MAX_CONNECTION_AGE_GRACE_MS,
                               options_.max_connection_age_grace_s * 1000);
  }
  // gRPC's keepalive pings go only to connections with calls in flight unless permitted without,
  // at most two between data frames unless unlimited, and one per 5 minutes without data: idle
  // connections are the point here. The same permission lets clients ping idle connections.
  if (options_.keepalive_s > 0 || options_.min_client_ping_interval_s > 0) {
    builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
  }
  if (options_.keepalive_s > 0) {
    builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIME_MS, options_.keepalive_s * 1000);
    builder.AddChannelArgument(GRPC_ARG_HTTP2_MAX_PINGS_WITHOUT_DATA, 0);
    builder.AddChannelArgument(GRPC_ARG_HTTP2_MIN_SENT_PING_INTERVAL_WITHOUT_DATA_MS,
                               options_.keepalive_s * 1000);
  }
  if (options_.min_client_ping_interval_s > 0) {
    builder.AddChannelArgument(GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS,
                               options_.min_client_ping_interval_s * 1000);
  }
  if (!options_.accept_compressed_requests) {
    builder.AddChannelArgument(GRPC_COMPRESSION_CHANNEL_ENABLED_ALGORITHMS_BITSET, 1 << GRPC_COMPRESS_NONE);
  }
  builder.SetMaxReceiveMessageSize(static_cast<int>(options_.max_message_bytes));
  builder.SetMaxSendMessageSize(static_cast<int>(options_.max_message_bytes));
  // Every queued search or detection holds a sync-server thread while it waits, so the pool must
  // cover the batcher's and the detector's queues plus the other calls; beyond it gRPC answers
  // RESOURCE_EXHAUSTED.
  grpc::ResourceQuota quota("scanserve");
  quota.SetMaxThreads(options_.batching.max_queue_size +
                      (detector_pool_ != nullptr ? options_.detection.max_queue_images : 0) + 64);
  if (options_.grpc_memory_quota_bytes > 0) quota.Resize(static_cast<size_t>(options_.grpc_memory_quota_bytes));
  builder.SetResourceQuota(quota);
  std::vector<std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>> interceptors;
  interceptors.push_back(std::make_unique<UnparsableRequestInterceptorFactory>());  // first: the others see its code
  interceptors.push_back(std::make_unique<MetricsInterceptorFactory>(metrics_.get()));
  interceptors.push_back(std::make_unique<CallLogInterceptorFactory>(call_log_.get()));
  auto call_tracker = std::make_unique<CallTracker>();
  call_tracker_ = call_tracker.get();
  interceptors.push_back(std::move(call_tracker));
  builder.experimental().SetInterceptorCreators(std::move(interceptors));
  builder.RegisterService(service_.get());

  grpc_server_ = builder.BuildAndStart();
  if (grpc_server_ == nullptr || port_ == 0) {
    grpc_server_.reset();
    return absl::UnavailableError(absl::StrCat("cannot listen on ", options_.listen_address,
                                               " (address in use, or not a local address?)"));
  }
  credentials_->Start(options_.credential_reload_s, auth_.get());
  // The default health service starts out SERVING for "": not yet.
  grpc::HealthCheckServiceInterface* health = grpc_server_->GetHealthCheckService();
  health->SetServingStatus("", false);
  health->SetServingStatus(kServiceName, false);

  if (!options_.metrics_address.empty()) {
    MetricsHttpServer::Hooks hooks;
    hooks.before_scrape = [this] { metrics_->UpdateFromStats(engine_->Stats()); };
    hooks.is_serving = [this] { return serving_.load(); };
    metrics_http_ = std::make_unique<MetricsHttpServer>(metrics_->registry(), std::move(hooks));
    if (absl::Status status = metrics_http_->Start(options_.metrics_address); !status.ok()) return status;
  }

  if (absl::Status status = WarmUp(); !status.ok()) return status;
  metrics_->UpdateFromStats(engine_->Stats());
  health->SetServingStatus("", true);
  health->SetServingStatus(kServiceName, true);
  serving_ = true;
  health_watch_ = std::thread([this] { WatchEngineHealth(); });
  return absl::OkStatus();
}

int Server::ReloadCredentials() { return credentials_->ReloadChanged(auth_.get()); }

void Server::Drain() {
  serving_ = false;
  grpc::HealthCheckServiceInterface* health = grpc_server_ != nullptr ? grpc_server_->GetHealthCheckService() : nullptr;
  if (health == nullptr) return;
  health->SetServingStatus("", false);
  health->SetServingStatus(kServiceName, false);
}

void Server::WatchEngineHealth() {
  std::unique_lock<std::mutex> lock(health_mu_);
  while (!health_cv_.wait_for(lock, std::chrono::milliseconds(options_.health_poll_ms),
                              [this] { return stopped_.load(); })) {
    lock.unlock();  // a reopen may take a while; Stop must not wait for it to signal
    // The store's log lines say how a reopen went; the next poll tries again.
    engine_->RecoverStoreWrites().IgnoreError();
    const absl::Status health = engine_->Health();
    lock.lock();
    if (health.ok()) continue;
    // Load balancers and orchestrators move traffic away; the server keeps answering what it can.
    Drain();
    Log(LogLevel::kError, absl::StrCat("the engine can no longer serve, health is NOT_SERVING: ",
                                       health.ToString()));
    return;
  }
}

absl::Status Server::WarmUp() {
  // One real search through every stage (tokenizer, text encoder, scorer), so the first client
  // does not pay for lazy initialisation; the store may be empty.
  SearchParams params;
  params.top_k = 1;
  absl::StatusOr<std::vector<std::vector<ImageHit>>> result =
      engine_->SearchImages({"a man riding a bike"}, params);
  if (!result.ok()) {
    return absl::Status(result.status().code(),
                        absl::StrCat("warm-up search failed: ", result.status().message()));
  }
  return absl::OkStatus();
}

void Server::Stop(std::chrono::system_clock::time_point deadline) {
  if (stopped_.exchange(true)) return;
  serving_ = false;
  {
    std::lock_guard<std::mutex> lock(health_mu_);  // the watch sees stopped_ when it next waits
  }
  health_cv_.notify_all();
  if (health_watch_.joinable()) health_watch_.join();
  if (credentials_ != nullptr) credentials_->Stop();
  if (grpc_server_ != nullptr) grpc_server_->GetHealthCheckService()->Shutdown();
  if (image_batcher_ != nullptr) image_batcher_->Stop();
  if (caption_batcher_ != nullptr) caption_batcher_->Stop();
  if (detector_pool_ != nullptr) {
    // Queued images run until the deadline (on the pool's steady clock); the rest are UNAVAILABLE.
    if (deadline == std::chrono::system_clock::time_point::max()) {
      detector_pool_->Stop(DetectorPool::Clock::time_point::max());
    } else {
      const auto remaining = std::max(deadline - std::chrono::system_clock::now(),
                                      std::chrono::system_clock::duration::zero());
      detector_pool_->Stop(DetectorPool::Clock::now() +
                           std::chrono::duration_cast<DetectorPool::Clock::duration>(remaining));
    }
  }
  if (grpc_server_ != nullptr) {
    std::thread shutdown([this, deadline] { grpc_server_->Shutdown(deadline); });
    // Shutdown() stops accepting calls at once but also waits for every connection to close. Give
    // it a moment to start, wait for the ScanService calls, then close what is left (idle client
    // channels, health watches) rather than wait for the deadline.
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    if (call_tracker_ != nullptr && call_tracker_->WaitUntilIdle(deadline)) {
      grpc_server_cancel_all_calls(grpc_server_->c_server());
    }
    shutdown.join();
    grpc_server_->Wait();
  }
  if (metrics_http_ != nullptr) metrics_http_->Stop();
  if (engine_ != nullptr) {
    if (absl::Status status = engine_->Close(); !status.ok()) {
      Log(LogLevel::kError, absl::StrCat("closing the engine: ", status.ToString()));
    }
  }
}

}  // namespace scanserve
