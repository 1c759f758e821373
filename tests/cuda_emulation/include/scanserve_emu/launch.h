// CUDA emulation (tests only): `kernel<<<grid, block, shared, stream>>>(args...)`, rewritten by
// rewrite_launches.cmake into `::scanserve_emu::Launch("kernel", kernel, grid, block, shared,
// stream)(args...)`. The launch is checked as the runtime would check it (block size, grid
// limits, dynamic shared memory against the kernel's attribute); a bad one sets the error
// cudaGetLastError returns and runs nothing. Otherwise every block runs before the call returns.
#pragma once

#include <cstddef>
#include <functional>
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

// Runs `thread_body` as every thread of every block of the grid.
void RunGrid(const LaunchConfig& config, const std::function<void()>& thread_body);

template <typename... Params>
class Launcher {
 public:
  Launcher(const LaunchConfig& config, void (*kernel)(Params...))
      : config_(config), kernel_(kernel) {}

  template <typename... Args>
  void operator()(Args&&... args) const {
    static_assert(sizeof...(Args) == sizeof...(Params), "kernel argument count");
    // Kernel parameters are copied at launch, as the runtime copies them to constant memory.
    const std::tuple<std::decay_t<Params>...> params(std::forward<Args>(args)...);
    RunGrid(config_, [&] { std::apply(kernel_, params); });
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
