// A gRPC server interceptor that answers a unary request gRPC could not parse (bytes that are not
// a protobuf message of the method's type, or a string field that is not UTF-8, which proto3
// forbids) with INVALID_ARGUMENT instead of gRPC's bare INTERNAL. INTERNAL says the server is at
// fault: it is logged as an error and pages whoever watches ScanserveServerErrors, so a broken or
// hostile client could page the on-call. Installed first, so that the metrics and the call log
// see the corrected code.
//
// Streams (Ingest) are left alone: there gRPC reports a message it cannot parse as the end of
// the stream, which an interceptor cannot tell from the client's own; every Ingest item is
// acknowledged by its own response, so a client sees which were not.
#pragma once

#include <grpcpp/support/server_interceptor.h>

namespace scanserve {

class UnparsableRequestInterceptorFactory final : public grpc::experimental::ServerInterceptorFactoryInterface {
 public:
  grpc::experimental::Interceptor* CreateServerInterceptor(grpc::experimental::ServerRpcInfo* info) override;
};

}  // namespace scanserve
