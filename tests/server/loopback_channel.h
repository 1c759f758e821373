// The channel the in-process server tests call their server through.
#pragma once

#include <memory>

#include <grpcpp/grpcpp.h>

#include "absl/strings/str_cat.h"

namespace scanserve {
namespace testing_channel {

// An insecure channel to 127.0.0.1:port with no client-side message size limits, so that the
// server's own limits are what a test of large uploads or answers meets.
inline std::shared_ptr<grpc::Channel> LoopbackChannel(int port) {
  grpc::ChannelArguments arguments;
  arguments.SetMaxSendMessageSize(-1);
  arguments.SetMaxReceiveMessageSize(-1);
  return grpc::CreateCustomChannel(absl::StrCat("127.0.0.1:", port), grpc::InsecureChannelCredentials(),
                                   arguments);
}

}  // namespace testing_channel
}  // namespace scanserve
