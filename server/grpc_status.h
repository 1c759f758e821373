// The one conversion from the engine's absl::Status to the wire's grpc::Status. absl's canonical codes
// are gRPC's codes (same numbers), so the code passes through unchanged; handlers return through this
// and nothing else builds a grpc::Status from an engine error.
#pragma once

#include <cstdint>

#include <grpcpp/support/status.h>

#include "absl/status/status.h"

namespace scanserve {

grpc::Status ToGrpcStatus(const absl::Status& status);

// The google.rpc.Code number of `status`, for the per-item ItemStatus.code field.
int32_t ToRpcCode(const absl::Status& status);

// "OK", "InvalidArgument", ...: the spelling of grpc-go's codes.Code.String(), which the
// grpc-ecosystem metrics (grpc_server_handled_total{grpc_code}) and their dashboards use.
const char* GrpcCodeName(grpc::StatusCode code);
const char* GrpcCodeName(absl::StatusCode code);

}  // namespace scanserve
