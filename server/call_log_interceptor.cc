#include "server/call_log_interceptor.h"

#include <chrono>
#include <map>
#include <optional>
#include <string>

#include <grpcpp/server_context.h>

#include "absl/strings/string_view.h"
#include "server/call_log.h"
#include "server/log.h"
#include "server/request_id.h"

namespace scanserve {
namespace {

// The first value of a header the client sent; empty when it sent none.
absl::string_view ClientHeader(const std::multimap<grpc::string_ref, grpc::string_ref>& metadata,
                               const char* name) {
  const auto it = metadata.find(name);
  return it == metadata.end() ? absl::string_view() : absl::string_view(it->second.data(), it->second.size());
}

class CallLogInterceptor final : public grpc::experimental::Interceptor {
 public:
  CallLogInterceptor(CallLog* log, grpc::experimental::ServerRpcInfo* info)
      : log_(log), info_(info), start_(std::chrono::steady_clock::now()) {}

  void Intercept(grpc::experimental::InterceptorBatchMethods* methods) override {
    using grpc::experimental::InterceptionHookPoints;
    // Initial metadata goes out before the status, or with it (a unary call that failed).
    if (methods->QueryInterceptionHookPoint(InterceptionHookPoints::PRE_SEND_INITIAL_METADATA)) {
      methods->GetSendInitialMetadata()->emplace(kRequestIdHeader, RequestId());
    }
    if (methods->QueryInterceptionHookPoint(InterceptionHookPoints::PRE_SEND_STATUS)) {
      const grpc::Status status = methods->GetSendStatus();
      const std::string peer = info_->server_context() != nullptr ? info_->server_context()->peer() : "";
      const std::string message = status.error_message();  // returned by value: FinishedCall only views it
      FinishedCall call;
      call.method = info_->method() != nullptr ? info_->method() : "?";
      call.peer = peer;
      call.request_id = RequestId();
      call.code = static_cast<absl::StatusCode>(status.error_code());
      call.message = message;
      call.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
      call.streaming = info_->type() != grpc::experimental::ServerRpcInfo::Type::UNARY;
      const std::optional<CallLogLine> line = log_->Record(call);
      if (line.has_value()) Log(line->level, line->text, line->fields);
    }
    methods->Proceed();
  }

 private:
  // Decided once, from the client's headers, at the first hook that needs it: the server context
  // holds them from the start of the call.
  const std::string& RequestId() {
    if (request_id_.empty()) {
      const grpc::ServerContextBase* context = info_->server_context();
      request_id_ = context == nullptr ? NewRequestId()
                                       : RequestIdFor(ClientHeader(context->client_metadata(), kRequestIdHeader),
                                                      ClientHeader(context->client_metadata(), kTraceparentHeader));
    }
    return request_id_;
  }

  CallLog* log_;
  grpc::experimental::ServerRpcInfo* info_;  // outlives the interceptor (gRPC owns both)
  std::chrono::steady_clock::time_point start_;
  std::string request_id_;
};

}  // namespace

grpc::experimental::Interceptor* CallLogInterceptorFactory::CreateServerInterceptor(
    grpc::experimental::ServerRpcInfo* info) {
  return new CallLogInterceptor(log_, info);
}

}  // namespace scanserve
