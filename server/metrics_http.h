// MetricsHttpServer: serves the Prometheus text format at GET /metrics and liveness/readiness at
// GET /healthz over plain HTTP, on its own threads (cpp-httplib).
//
// Why not prometheus-cpp's Exposer: its civetweb asks for 100 KiB thread stacks, and with libtorch
// and OpenBLAS loaded glibc's static TLS does not fit in them, so its threads fail to start
// (../shared/gpu/README.md). cpp-httplib uses ordinary std::thread stacks; the text comes from
// prometheus-cpp's TextSerializer over the registry's Collect().
#pragma once

#include <atomic>
#include <functional>
#include <memory>
#include <string>
#include <thread>

#include "absl/status/status.h"

namespace httplib {
class Server;
}
namespace prometheus {
class Registry;
}

namespace scanserve {

class MetricsHttpServer {
 public:
  struct Hooks {
    // Called before each /metrics answer (e.g. to refresh gauges from the engine); may be empty.
    std::function<void()> before_scrape;
    // /healthz answers 200 "SERVING" when this returns true, else 503 "NOT_SERVING"; may be empty
    // (always 200).
    std::function<bool()> is_serving;
  };

  MetricsHttpServer(std::shared_ptr<prometheus::Registry> registry, Hooks hooks);
  ~MetricsHttpServer();  // Stop()
  MetricsHttpServer(const MetricsHttpServer&) = delete;
  MetricsHttpServer& operator=(const MetricsHttpServer&) = delete;

  // Binds `address` ("HOST:PORT", "[v6]:PORT"; port 0 = any free port) and serves on a thread.
  // UNAVAILABLE when the address cannot be bound, INVALID_ARGUMENT when it does not parse.
  absl::Status Start(const std::string& address);
  // The bound port after Start(); 0 before.
  int port() const { return port_; }
  // Stops serving and joins the thread. Idempotent.
  void Stop();

 private:
  std::shared_ptr<prometheus::Registry> registry_;
  Hooks hooks_;
  std::unique_ptr<httplib::Server> http_;
  std::thread thread_;  // runs http_'s accept loop
  std::atomic<bool> loop_exited_{false};
  int port_ = 0;
};

// "host:port" / "[v6]:port" -> host (brackets removed) and port. INVALID_ARGUMENT when malformed.
absl::Status SplitHostPort(const std::string& address, std::string* host, int* port);

}  // namespace scanserve
