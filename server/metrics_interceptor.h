// A gRPC server interceptor that fills the grpc-ecosystem metrics of ServerMetrics for every call
// (ScanService, health, reflection): grpc_server_started_total when a call starts,
// grpc_server_handled_total{grpc_code} and grpc_server_handling_seconds when its status is sent.
#pragma once

#include <grpcpp/support/server_interceptor.h>

namespace scanserve {

class ServerMetrics;

class MetricsInterceptorFactory final : public grpc::experimental::ServerInterceptorFactoryInterface {
 public:
  explicit MetricsInterceptorFactory(ServerMetrics* metrics) : metrics_(metrics) {}
  grpc::experimental::Interceptor* CreateServerInterceptor(grpc::experimental::ServerRpcInfo* info) override;

 private:
  ServerMetrics* metrics_;  // not owned; outlives the server
};

}  // namespace scanserve
