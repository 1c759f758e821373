// CallTracker: counts ScanService calls in flight (a server interceptor), so that a graceful stop can
// tell "calls still running" from "clients merely connected". grpc::Server::Shutdown(deadline) waits
// for every connection to close as well, and an idle client that keeps its channel open (grpcio does)
// would hold a stop for the whole grace period; once no ScanService call is left, Server::Stop closes
// the remaining connections (and long-lived grpc.health.v1 Watch streams) at once.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <mutex>

#include <grpcpp/support/server_interceptor.h>

namespace scanserve {

class CallTracker final : public grpc::experimental::ServerInterceptorFactoryInterface {
 public:
  grpc::experimental::Interceptor* CreateServerInterceptor(grpc::experimental::ServerRpcInfo* info) override;

  // ScanService calls started and not yet finished.
  int64_t in_flight() const;
  // Blocks until in_flight() is 0 or the deadline passes; true when idle.
  bool WaitUntilIdle(std::chrono::system_clock::time_point deadline) const;

  // Called by the per-call interceptor.
  void Started();
  void Finished();

 private:
  mutable std::mutex mu_;  // guards in_flight_
  mutable std::condition_variable idle_;
  int64_t in_flight_ = 0;
};

}  // namespace scanserve
