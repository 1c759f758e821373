#include "server/call_tracker.h"

#include <cstring>

namespace scanserve {
namespace {

constexpr char kScanServicePrefix[] = "/scanserve.v1.ScanService/";

// Lives as long as the call: counted from creation to destruction, whatever the outcome.
class TrackingInterceptor final : public grpc::experimental::Interceptor {
 public:
  explicit TrackingInterceptor(CallTracker* tracker) : tracker_(tracker) { tracker_->Started(); }
  ~TrackingInterceptor() override { tracker_->Finished(); }
  void Intercept(grpc::experimental::InterceptorBatchMethods* methods) override { methods->Proceed(); }

 private:
  CallTracker* tracker_;
};

}  // namespace

grpc::experimental::Interceptor* CallTracker::CreateServerInterceptor(grpc::experimental::ServerRpcInfo* info) {
  const char* method = info->method();
  if (method == nullptr || std::strncmp(method, kScanServicePrefix, sizeof(kScanServicePrefix) - 1) != 0) {
    return nullptr;  // health, reflection: not drained
  }
  return new TrackingInterceptor(this);
}

int64_t CallTracker::in_flight() const {
  std::lock_guard<std::mutex> lock(mu_);
  return in_flight_;
}

bool CallTracker::WaitUntilIdle(std::chrono::system_clock::time_point deadline) const {
  std::unique_lock<std::mutex> lock(mu_);
  return idle_.wait_until(lock, deadline, [this] { return in_flight_ == 0; });
}

void CallTracker::Started() {
  std::lock_guard<std::mutex> lock(mu_);
  ++in_flight_;
}

void CallTracker::Finished() {
  std::lock_guard<std::mutex> lock(mu_);
  if (--in_flight_ == 0) idle_.notify_all();
}

}  // namespace scanserve
