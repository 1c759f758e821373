#include "server/run_server.h"

#include <cerrno>
#include <chrono>
#include <csignal>
#include <condition_variable>
#include <functional>
#include <mutex>
#include <cstdlib>
#include <thread>
#include <fcntl.h>
#include <unistd.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "engine/common/openblas_core.h"
#include "engine/detector/region_detector.h"
#include "engine/scoring/cpu_scorer.h"
#include "engine/scoring/streaming_gemm.h"
#include "server/crash_report.h"
#include "server/log.h"
#include "server/server.h"

namespace scanserve {
namespace {

const char* SignalName(int signal) {
  return signal == SIGINT ? "SIGINT" : signal == SIGHUP ? "SIGHUP" : "SIGTERM";
}

// The self-pipe: the handler only write()s the signal number (async-signal-safe); the watcher thread
// reads it. Handlers rather than a blocked mask + sigwait, because libraries start threads before
// main() (with the signals unblocked), and the kernel may deliver a process signal to any of them.
int g_signal_pipe[2] = {-1, -1};

extern "C" void OnTerminationSignal(int signal) {
  const int saved_errno = errno;
  const unsigned char byte = static_cast<unsigned char>(signal);
  (void)!write(g_signal_pipe[1], &byte, 1);
  errno = saved_errno;
}

// Receives SIGTERM/SIGINT/SIGHUP through the pipe on its own thread. Before the server serves,
// SIGTERM or SIGINT exits at once: loading can take minutes and there is nothing to drain (the
// store is crash-safe). Once serving, the first one wakes Wait(); a second one exits at once.
// SIGHUP reads the credential files again (as `systemctl reload` or a certificate tool's hook
// would send it); before serving it is ignored.
class SignalWatcher {
 public:
  SignalWatcher() {
    std::thread([this] { Loop(); }).detach();  // blocked in read() for the life of the process
  }

  // `on_hangup` runs on the watcher's thread for each SIGHUP from now on.
  void set_serving(std::function<void()> on_hangup) {
    std::lock_guard<std::mutex> lock(mu_);
    serving_ = true;
    on_hangup_ = std::move(on_hangup);
  }

  // No more SIGHUP hooks: waits for one running, so that what it uses can go.
  void clear_hangup() {
    std::lock_guard<std::mutex> hold(hangup_mu_);
    std::lock_guard<std::mutex> lock(mu_);
    on_hangup_ = nullptr;
  }

  // Blocks until a signal arrives while serving; returns it.
  int Wait() {
    std::unique_lock<std::mutex> lock(mu_);
    received_.wait(lock, [this] { return signal_ != 0; });
    return signal_;
  }

 private:
  void Loop() {
    for (;;) {
      unsigned char byte = 0;
      const ssize_t n = read(g_signal_pipe[0], &byte, 1);
      if (n < 0 && errno == EINTR) continue;
      if (n != 1) return;  // the pipe is gone: nothing more to watch
      const int signal = byte;
      if (signal == SIGHUP) {
        std::lock_guard<std::mutex> hold(hangup_mu_);
        std::function<void()> on_hangup;
        {
          std::lock_guard<std::mutex> lock(mu_);
          on_hangup = on_hangup_;
        }
        if (on_hangup) on_hangup();
        continue;
      }
      std::lock_guard<std::mutex> lock(mu_);
      if (!serving_) {
        Log(LogLevel::kWarning, absl::StrCat("received ", SignalName(signal), " during start-up: exiting"));
        _exit(128 + signal);
      }
      if (signal_ != 0) {
        Log(LogLevel::kWarning, "second signal: exiting without finishing the shutdown");
        _exit(1);
      }
      signal_ = signal;
      received_.notify_all();
    }
  }

  std::mutex hangup_mu_;  // held while a SIGHUP hook runs
  std::mutex mu_;  // guards serving_, on_hangup_, signal_
  std::condition_variable received_;
  bool serving_ = false;
  std::function<void()> on_hangup_;
  int signal_ = 0;  // the first signal received while serving
};

std::chrono::system_clock::time_point DeadlineAfter(double seconds) {
  return std::chrono::system_clock::now() +
         std::chrono::duration_cast<std::chrono::system_clock::duration>(std::chrono::duration<double>(seconds));
}

void LogEngine(const RetrievalEngine& engine, const ServerConfig& config) {
  const EngineStats stats = engine.Stats();
  for (size_t i = 0; i < config.engine.model_dirs.size(); ++i) {
    Log(LogLevel::kInfo, absl::StrCat("model ", i, ": ", config.engine.model_dirs[i],
                                      i < stats.model_summaries.size() ? absl::StrCat(" (", stats.model_summaries[i], ")")
                                                                        : std::string()));
  }
  Log(LogLevel::kInfo, absl::StrCat("engine: backend ", stats.backend, ", encoders on ", stats.encoder_device,
                                    ", storage ", stats.storage, ", queries ", stats.query_precision, ", ",
                                    stats.images, " images and ", stats.captions, " captions loaded from ",
                                    config.engine.data_dir, " (", stats.feature_bytes, " feature bytes, ",
                                    stats.store_disk_bytes, " bytes on disk)"));
  if (config.engine.keep_region_features) {
    Log(LogLevel::kInfo, "engine: new images keep their input region features in the store "
                         "(--region-features keep)");
  }
  const std::string blas = OpenBlasCoreNote();
  if (!blas.empty()) Log(LogLevel::kInfo, absl::StrCat("engine: ", blas));
  if (stats.backend == "cpu") {
    const StreamingGemmIsa isa = BestStreamingGemmIsa();
    Log(LogLevel::kInfo,
        isa == StreamingGemmIsa::kNone
            ? std::string("engine: CPU region-word products on the BLAS (no AVX2 + FMA for the "
                          "streaming kernels)")
            : absl::StrCat("engine: CPU region-word products: streaming ", StreamingGemmIsaName(isa),
                           " kernels for query groups of up to ",
                           CpuScorerOptions().streaming_max_query_rows, " rows, the BLAS beyond"));
  }
}

void LogDetector(const RegionDetector& detector, const ServerConfig& config) {
  const DetectorInfo info = detector.Info();
  const DetectorPoolOptions& pool = config.server.detection;
  Log(LogLevel::kInfo, absl::StrCat("detector: ", config.detector.detector_dir, " (", info.summary, "), device ",
                                    info.device, ", ", info.min_boxes, "..", info.max_boxes, " boxes per image; ",
                                    pool.num_workers, " worker(s), queue ", pool.max_queue_images,
                                    " images, batches of up to ", pool.max_batch_images, ", images up to ",
                                    pool.max_image_bytes, " bytes"));
  if (!info.warning.empty()) Log(LogLevel::kWarning, absl::StrCat("detector: ", info.warning));
}

}  // namespace

void InstallTerminationHandlers() {
  if (pipe2(g_signal_pipe, O_CLOEXEC) != 0) {
    Log(LogLevel::kWarning, "cannot create the signal pipe: SIGTERM/SIGINT will not shut down gracefully");
    return;
  }
  struct sigaction action {};
  action.sa_handler = OnTerminationSignal;
  sigemptyset(&action.sa_mask);
  action.sa_flags = SA_RESTART;  // other threads' system calls carry on
  sigaction(SIGTERM, &action, nullptr);
  sigaction(SIGINT, &action, nullptr);
  sigaction(SIGHUP, &action, nullptr);  // its default would end the process
}

int RunServer(const ServerConfig& config) {
  SetLogFormat(config.log_format);
  SetCrashReportFormat(config.log_format);
  RouteLibraryLogs();
  // Leaked on purpose: its thread outlives RunServer (it sits in sigwait until the process ends).
  SignalWatcher& signals = *new SignalWatcher();
  Log(LogLevel::kInfo, absl::StrCat("starting scanserve ", config.server.version,
                                    config.config_file.empty() ? std::string() : absl::StrCat(" (config file ", config.config_file, ")"),
                                    " with:\n", DescribeConfig(config)));
  absl::StatusOr<std::unique_ptr<RetrievalEngine>> engine = RetrievalEngine::Create(config.engine);
  if (!engine.ok()) {
    Log(LogLevel::kError, absl::StrCat("cannot load the engine: ", engine.status().ToString()));
    return 1;
  }
  if (*engine == nullptr) {
    Log(LogLevel::kError, "cannot load the engine: RetrievalEngine::Create returned no engine");
    return 1;
  }
  LogEngine(**engine, config);

  std::unique_ptr<RegionDetector> detector;
  if (config.detector.detector_dir.empty()) {
    Log(LogLevel::kInfo, "detector: none (--detector-dir not set): image bytes are FAILED_PRECONDITION");
  } else {
    absl::StatusOr<std::unique_ptr<RegionDetector>> loaded = LoadBottomUpDetector(config.detector);
    if (!loaded.ok()) {
      Log(LogLevel::kError, absl::StrCat("cannot load the detector from ", config.detector.detector_dir, ": ",
                                         loaded.status().ToString()));
      return 1;
    }
    if (*loaded == nullptr) {
      Log(LogLevel::kError, "cannot load the detector: LoadBottomUpDetector returned no detector");
      return 1;
    }
    detector = *std::move(loaded);
    LogDetector(*detector, config);
    const auto warm_start = std::chrono::steady_clock::now();
    if (absl::Status warm = detector->WarmUp(); !warm.ok()) {
      Log(LogLevel::kError, absl::StrCat("detector warm-up failed: ", warm.ToString()));
      return 1;
    }
    const double warm_seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - warm_start).count();
    Log(LogLevel::kInfo, absl::StrCat("detector warmed up in ", absl::SixDigits(warm_seconds), " s"));
  }

  absl::StatusOr<std::unique_ptr<Server>> server =
      Server::Create(config.server, *std::move(engine), std::move(detector));
  if (!server.ok()) {
    Log(LogLevel::kError, absl::StrCat("cannot create the server: ", server.status().ToString()));
    return 1;
  }
  if (absl::Status status = (*server)->Start(); !status.ok()) {
    Log(LogLevel::kError, absl::StrCat("cannot start the server: ", status.ToString()));
    (*server)->Stop(std::chrono::system_clock::now());
    return 1;
  }
  const ServerOptions& options = config.server;
  const bool token_auth = !options.auth_token.empty() || !options.auth_token_file.empty();
  const bool reloaded =
      options.credential_reload_s > 0 && (!options.tls.cert_file.empty() || !options.auth_token_file.empty());
  Log(LogLevel::kInfo,
      absl::StrCat("serving scanserve.v1.ScanService on ", options.listen_address, " (port ", (*server)->port(),
                   options.tls.cert_file.empty() ? ", plaintext" : ", TLS", token_auth ? ", bearer-token auth" : "",
                   reloaded ? absl::StrCat(", credential files read every ", options.credential_reload_s, " s") : "",
                   ")",
                   config.server.metrics_address.empty()
                       ? std::string("; metrics off")
                       : absl::StrCat("; metrics on http://", config.server.metrics_address, "/metrics (port ",
                                      (*server)->metrics_port(), ")")));

  Server* serving = server->get();
  signals.set_serving([serving] {
    const int replaced = serving->ReloadCredentials();
    Log(LogLevel::kInfo, absl::StrCat("received SIGHUP: credential files read again, ", replaced, " replaced"));
  });
  const int signal = signals.Wait();
  signals.clear_hangup();
  if (config.shutdown_delay_s > 0) {
    Log(LogLevel::kInfo, absl::StrCat("received ", SignalName(signal), "; health NOT_SERVING, calls still served for ",
                                      config.shutdown_delay_s, " s, then shutting down (grace ",
                                      config.shutdown_grace_s, " s)"));
    (*server)->Drain();
    std::this_thread::sleep_for(std::chrono::duration<double>(config.shutdown_delay_s));
  } else {
    Log(LogLevel::kInfo, absl::StrCat("received ", SignalName(signal), "; shutting down (grace ",
                                      config.shutdown_grace_s, " s)"));
  }
  (*server)->Stop(DeadlineAfter(config.shutdown_grace_s));
  Log(LogLevel::kInfo, "stopped");
  return 0;
}

}  // namespace scanserve
