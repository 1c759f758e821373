// A gRPC server interceptor that gives every call (ScanService, health, reflection) its request id
// (request_id.h), returns the id to the client in the response's initial metadata, and gives the
// finished call to a CallLog (call_log.h), writing the line it returns, if any.
#pragma once

#include <grpcpp/support/server_interceptor.h>

namespace scanserve {

class CallLog;

class CallLogInterceptorFactory final : public grpc::experimental::ServerInterceptorFactoryInterface {
 public:
  explicit CallLogInterceptorFactory(CallLog* log) : log_(log) {}
  grpc::experimental::Interceptor* CreateServerInterceptor(grpc::experimental::ServerRpcInfo* info) override;

 private:
  CallLog* log_;  // not owned; outlives the server
};

}  // namespace scanserve
