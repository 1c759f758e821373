#include "server/call_log_interceptor.h"

#include <chrono>
#include <optional>
#include <string>

#include <grpcpp/server_context.h>

#include "server/call_log.h"
#include "server/log.h"

namespace scanserve {
namespace {

class CallLogInterceptor final : public grpc::experimental::Interceptor {
 public:
  CallLogInterceptor(CallLog* log, grpc::experimental::ServerRpcInfo* info)
      : log_(log), info_(info), start_(std::chrono::steady_clock::now()) {}

  void Intercept(grpc::experimental::InterceptorBatchMethods* methods) override {
    if (methods->QueryInterceptionHookPoint(grpc::experimental::InterceptionHookPoints::PRE_SEND_STATUS)) {
      const grpc::Status status = methods->GetSendStatus();
      const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
      const std::string peer = info_->server_context() != nullptr ? info_->server_context()->peer() : "";
      const bool streaming = info_->type() != grpc::experimental::ServerRpcInfo::Type::UNARY;
      const std::optional<CallLogLine> line =
          log_->Record(info_->method() != nullptr ? info_->method() : "?", peer,
                       static_cast<absl::StatusCode>(status.error_code()), status.error_message(), seconds,
                       streaming);
      if (line.has_value()) Log(line->level, line->text, line->fields);
    }
    methods->Proceed();
  }

 private:
  CallLog* log_;
  grpc::experimental::ServerRpcInfo* info_;  // outlives the interceptor (gRPC owns both)
  std::chrono::steady_clock::time_point start_;
};

}  // namespace

grpc::experimental::Interceptor* CallLogInterceptorFactory::CreateServerInterceptor(
    grpc::experimental::ServerRpcInfo* info) {
  return new CallLogInterceptor(log_, info);
}

}  // namespace scanserve
