#include "server/metrics_http.h"

#include <chrono>
#include <sstream>
#include <utility>

// CMake defines CPPHTTPLIB_OPENSSL_SUPPORT as Debian's compiled library has it (it changes Request).
#include <httplib.h>
#include <prometheus/registry.h>
#include <prometheus/text_serializer.h>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace scanserve {

absl::Status SplitHostPort(const std::string& address, std::string* host, int* port) {
  const size_t colon = address.rfind(':');
  if (colon == std::string::npos || colon == 0) {
    return absl::InvalidArgumentError(absl::StrCat("expected HOST:PORT, got '", address, "'"));
  }
  std::string h = address.substr(0, colon);
  if (h.size() >= 2 && h.front() == '[' && h.back() == ']') h = h.substr(1, h.size() - 2);
  int p = 0;
  if (!absl::SimpleAtoi(address.substr(colon + 1), &p) || p < 0 || p > 65535) {
    return absl::InvalidArgumentError(absl::StrCat("bad port in '", address, "'"));
  }
  *host = std::move(h);
  *port = p;
  return absl::OkStatus();
}

MetricsHttpServer::MetricsHttpServer(std::shared_ptr<prometheus::Registry> registry, Hooks hooks)
    : registry_(std::move(registry)), hooks_(std::move(hooks)), http_(std::make_unique<httplib::Server>()) {}

MetricsHttpServer::~MetricsHttpServer() { Stop(); }

absl::Status MetricsHttpServer::Start(const std::string& address) {
  std::string host;
  int port = 0;
  if (absl::Status status = SplitHostPort(address, &host, &port); !status.ok()) return status;

  // Scrapes are rare and cheap: two threads, not httplib's default of one per core.
  http_->new_task_queue = [] { return new httplib::ThreadPool(2); };
  http_->Get("/metrics", [this](const httplib::Request&, httplib::Response& response) {
    if (hooks_.before_scrape) hooks_.before_scrape();
    std::ostringstream text;
    prometheus::TextSerializer().Serialize(text, registry_->Collect());
    response.set_content(text.str(), "text/plain; version=0.0.4; charset=utf-8");
  });
  http_->Get("/healthz", [this](const httplib::Request&, httplib::Response& response) {
    const bool serving = !hooks_.is_serving || hooks_.is_serving();
    response.status = serving ? 200 : 503;
    response.set_content(serving ? "SERVING\n" : "NOT_SERVING\n", "text/plain");
  });

  if (port == 0) {
    port = http_->bind_to_any_port(host);
    if (port < 0) return absl::UnavailableError(absl::StrCat("metrics: cannot bind ", address));
  } else if (!http_->bind_to_port(host, port)) {
    return absl::UnavailableError(absl::StrCat("metrics: cannot bind ", address, " (in use?)"));
  }
  port_ = port;
  thread_ = std::thread([this] {
    http_->listen_after_bind();
    loop_exited_ = true;
  });
  // httplib's stop() only acts on a running loop: wait until it runs, so Stop() cannot miss it.
  while (!http_->is_running() && !loop_exited_) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  return absl::OkStatus();
}

void MetricsHttpServer::Stop() {
  if (!thread_.joinable()) return;
  http_->stop();
  thread_.join();
}

}  // namespace scanserve
