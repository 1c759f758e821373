// Waiting in tests for what another thread makes true (a request queued, a file reloaded), polling
// rather than sleeping a fixed time, so that a fast machine does not wait and a slow one still passes.
#pragma once

#include <chrono>
#include <thread>

namespace scanserve {
namespace testing_wait {

// Whether `condition` holds within `timeout`, checked every `poll`.
template <typename Condition>
bool Eventually(Condition condition, std::chrono::milliseconds timeout = std::chrono::seconds(5),
                std::chrono::milliseconds poll = std::chrono::milliseconds(2)) {
  const auto until = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < until) {
    if (condition()) return true;
    std::this_thread::sleep_for(poll);
  }
  return condition();
}

}  // namespace testing_wait
}  // namespace scanserve
