#include "server/metrics_interceptor.h"

#include <chrono>
#include <string>

#include "server/grpc_status.h"
#include "server/metrics.h"

namespace scanserve {
namespace {

// go-grpc-prometheus' grpc_type values.
const char* TypeLabel(grpc::experimental::ServerRpcInfo::Type type) {
  switch (type) {
    case grpc::experimental::ServerRpcInfo::Type::UNARY: return "unary";
    case grpc::experimental::ServerRpcInfo::Type::CLIENT_STREAMING: return "client_stream";
    case grpc::experimental::ServerRpcInfo::Type::SERVER_STREAMING: return "server_stream";
    case grpc::experimental::ServerRpcInfo::Type::BIDI_STREAMING: return "bidi_stream";
  }
  return "unknown";
}

class MetricsInterceptor final : public grpc::experimental::Interceptor {
 public:
  MetricsInterceptor(ServerMetrics* metrics, prometheus::Labels labels)
      : metrics_(metrics), labels_(std::move(labels)), start_(std::chrono::steady_clock::now()) {
    metrics_->grpc_started().Add(labels_).Increment();
  }

  void Intercept(grpc::experimental::InterceptorBatchMethods* methods) override {
    if (methods->QueryInterceptionHookPoint(grpc::experimental::InterceptionHookPoints::PRE_SEND_STATUS)) {
      const grpc::Status status = methods->GetSendStatus();
      prometheus::Labels with_code = labels_;
      with_code["grpc_code"] = GrpcCodeName(status.error_code());
      metrics_->grpc_handled().Add(with_code).Increment();
      const double seconds =
          std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
      metrics_->grpc_handling_seconds().Add(labels_, ServerMetrics::LatencyBuckets()).Observe(seconds);
    }
    methods->Proceed();
  }

 private:
  ServerMetrics* metrics_;
  prometheus::Labels labels_;  // grpc_service, grpc_method, grpc_type
  std::chrono::steady_clock::time_point start_;
};

}  // namespace

grpc::experimental::Interceptor* MetricsInterceptorFactory::CreateServerInterceptor(
    grpc::experimental::ServerRpcInfo* info) {
  // "/package.Service/Method"; only registered methods reach here, so labels stay bounded.
  const std::string path = info->method() != nullptr ? info->method() : "";
  const size_t slash = path.rfind('/');
  if (path.size() < 3 || path[0] != '/' || slash == 0 || slash == std::string::npos) return nullptr;
  prometheus::Labels labels{{"grpc_service", path.substr(1, slash - 1)},
                            {"grpc_method", path.substr(slash + 1)},
                            {"grpc_type", TypeLabel(info->type())}};
  return new MetricsInterceptor(metrics_, std::move(labels));
}

}  // namespace scanserve
