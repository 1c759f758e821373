// CUDA emulation (tests only): `kernel<<<grid, block, shared, stream>>>(args...)`, rewritten by
// rewrite_launches.cmake into `::scanserve_emu::Launch("kernel", kernel, grid, block, shared,
// stream)(args...)`. The launch is checked as the runtime would check it (block size, grid
// limits, dynamic shared memory against the kernel's attribute); a bad one sets the error
// cudaGetLastError returns and runs nothing. Otherwise the grid is queued on its stream, with the
// kernel's arguments copied, and runs when the host next synchronises on something needing it.
#pragma once

#include <cstddef>
#include <functional>
#include <memory>
#include <tuple>
#include <type_traits>
#include <utility>

#include "cuda_runtime_api.h"

namespace scanserve_emu {

struct LaunchConfig {
  const char* name;
  const void* kernel;
  dim3 grid;
  dim3 block;
  size_t shared_bytes;
  cudaStream_t stream;
};

// Validates the launch, then queues the grid on config.stream: `thread_body` runs as every thread
// of every block.
void EnqueueGrid(const LaunchConfig& config, std::function<void()> thread_body);

template <typename... Params>
class Launcher {
 public:
  Launcher(const LaunchConfig& config, void (*kernel)(Params...))
      : config_(config), kernel_(kernel) {}

  template <typename... Args>
  void operator()(Args&&... args) const {
    static_assert(sizeof...(Args) == sizeof...(Params), "kernel argument count");
    // Kernel parameters are copied at launch, as the runtime copies them to constant memory.
    auto params =
        std::make_shared<const std::tuple<std::decay_t<Params>...>>(std::forward<Args>(args)...);
    void (*kernel)(Params...) = kernel_;
    EnqueueGrid(config_, [kernel, params] { std::apply(kernel, *params); });
  }

 private:
  LaunchConfig config_;
  void (*kernel_)(Params...);
};

template <typename... Params>
Launcher<Params...> Launch(const char* name, void (*kernel)(Params...), dim3 grid, dim3 block,
                           size_t shared_bytes = 0, cudaStream_t stream = nullptr) {
  return Launcher<Params...>(
      LaunchConfig{name, reinterpret_cast<const void*>(kernel), grid, block, shared_bytes, stream},
      kernel);
}

}  // namespace scanserve_emu
