// CUDA emulation (tests only): the runtime API on one emulated H200-like device. Allocations are
// host heap blocks of their exact size (AddressSanitizer then sees device overruns), their first
// 16 MB filled with 0xff bytes (a NaN pattern) because cudaMalloc does not clear. Every copy and
// memset checks that the pointers its direction names as device memory lie inside one live
// allocation, and that host pointers do not. The device has SCANSERVE_CUDA_EMULATION_MEMORY_BYTES
// or SCANSERVE_CUDA_EMULATION_MEMORY_MB of memory (default 8 GiB);
// SCANSERVE_CUDA_EMULATION_DEVICES=0 emulates a machine without a GPU.
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <memory>
#include <string>
#include <vector>

#include "cuda_runtime_api.h"
#include "scanserve_emu/faults.h"
#include "scanserve_emu/launch.h"
#include "streams.h"

namespace scanserve_emu {
namespace {

constexpr int kSms = 132;
constexpr int kSharedPerBlock = 48 * 1024;
constexpr int kSharedOptin = 227 * 1024;
constexpr int kSharedPerSm = 228 * 1024;
constexpr int kSharedReservedPerBlock = 1024;  // by the system, per block, on sm_80+
constexpr int kMaxThreadsPerBlock = 1024;
constexpr int kMaxThreadsPerSm = 2048;

int EnvInt(const char* name, int fallback) {
  const char* v = std::getenv(name);
  return v != nullptr && *v != '\0' ? std::atoi(v) : fallback;
}

int DeviceCount() { return EnvInt("SCANSERVE_CUDA_EMULATION_DEVICES", 1) > 0 ? 1 : 0; }
// SCANSERVE_CUDA_EMULATION_MEMORY_BYTES, when set, wins: tests size a device to the byte.
size_t TotalMemory() {
  const char* bytes = std::getenv("SCANSERVE_CUDA_EMULATION_MEMORY_BYTES");
  if (bytes != nullptr && *bytes != '\0') return static_cast<size_t>(std::strtoull(bytes, nullptr, 10));
  return static_cast<size_t>(EnvInt("SCANSERVE_CUDA_EMULATION_MEMORY_MB", 8192)) << 20;
}

struct State {
  std::mutex mu;
  std::map<uintptr_t, size_t> allocations;  // base -> bytes
  size_t allocated = 0;
  std::map<uintptr_t, size_t> pinned;  // cudaMallocHost: base -> bytes
  std::map<const void*, int> max_dynamic_shared;  // kernel -> bytes
};
State& GetState() {
  static State* state = new State;
  return *state;
}

thread_local cudaError_t g_last_error = cudaSuccess;
thread_local int g_device = 0;

cudaError_t Record(cudaError_t error) {
  if (error != cudaSuccess) g_last_error = error;
  return error;
}

[[noreturn]] void Fail(const std::string& what) {
  std::fprintf(stderr, "CUDA emulation: %s\n", what.c_str());
  std::abort();
}

// Whether [ptr, ptr + bytes) lies inside one of the ranges (base -> bytes).
bool InRanges(const std::map<uintptr_t, size_t>& ranges, const void* ptr, size_t bytes) {
  const uintptr_t p = reinterpret_cast<uintptr_t>(ptr);
  auto it = ranges.upper_bound(p);
  if (it == ranges.begin()) return false;
  --it;
  return p >= it->first && p + bytes <= it->first + it->second;
}
bool InDevice(const State& s, const void* ptr, size_t bytes) {
  return InRanges(s.allocations, ptr, bytes);
}

// Direction checks: a pointer the kind calls device memory must be inside one allocation; one it
// calls host memory must not be device memory. A wrong direction is a bug the hardware would
// report as cudaErrorInvalidValue at best, so it stops the test with a message.
void CheckSide(State& s, const void* ptr, size_t bytes, bool device, const char* call,
               const char* which) {
  if (bytes == 0) return;
  if (device && !InDevice(s, ptr, bytes)) {
    Fail(std::string(call) + ": the " + which + " [" + std::to_string(reinterpret_cast<uintptr_t>(ptr)) +
         ", +" + std::to_string(bytes) + ") is not inside one device allocation");
  }
  if (!device && InDevice(s, ptr, 1)) {
    Fail(std::string(call) + ": the " + which + " is device memory, but the copy's kind says host");
  }
}

// A copy, checked and its fault drawn when issued, then queued on `stream`. As the runtime
// documents for pageable host memory: a source is staged when the call is made (the caller may
// reuse it at once), and a copy into it completes before the call returns. Pinned host memory is
// read and written when the stream reaches the copy, so reusing it too early shows.
cudaError_t Copy(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind, cudaStream_t stream,
                 const char* call) {
  State& s = GetState();
  bool dst_device = false, src_device = false, src_pinned = false, dst_pinned = false;
  {
    std::lock_guard<std::mutex> lock(s.mu);
    switch (kind) {
      case cudaMemcpyHostToHost:
        break;
      case cudaMemcpyHostToDevice:
        dst_device = true;
        break;
      case cudaMemcpyDeviceToHost:
        src_device = true;
        break;
      case cudaMemcpyDeviceToDevice:
        dst_device = src_device = true;
        break;
      case cudaMemcpyDefault:
        dst_device = InDevice(s, dst, 1);
        src_device = InDevice(s, src, 1);
        break;
      default:
        return Record(cudaErrorInvalidMemcpyDirection);
    }
    CheckSide(s, dst, bytes, dst_device, call, "destination");
    CheckSide(s, src, bytes, src_device, call, "source");
    src_pinned = !src_device && InRanges(s.pinned, src, bytes);
    dst_pinned = !dst_device && InRanges(s.pinned, dst, bytes);
  }
  if (dst_device || src_device) {
    const FaultPoint point = !src_device   ? FaultPoint::kCopyToDevice
                             : !dst_device ? FaultPoint::kCopyToHost
                                           : FaultPoint::kCopyOnDevice;
    if (ShouldFail(point)) return Record(cudaErrorLaunchFailure);
  }
  if (bytes == 0) return cudaSuccess;
  std::shared_ptr<std::vector<unsigned char>> staged;
  if (!src_device && !src_pinned) {
    staged = std::make_shared<std::vector<unsigned char>>(
        static_cast<const unsigned char*>(src), static_cast<const unsigned char*>(src) + bytes);
    src = staged->data();
  }
  auto copy = [dst, src, bytes, staged] { std::memmove(dst, src, bytes); };
  if (!dst_device && !dst_pinned) {
    EnqueueAndWait(stream, std::move(copy));
  } else {
    Enqueue(stream, std::move(copy));
  }
  return cudaSuccess;
}

}  // namespace

bool IsDeviceRange(const void* ptr, size_t bytes) {
  State& s = GetState();
  std::lock_guard<std::mutex> lock(s.mu);
  return InDevice(s, ptr, bytes);
}

cudaError_t SetMaxDynamicShared(const void* kernel, int bytes) {
  if (bytes < 0 || bytes > kSharedOptin) return Record(cudaErrorInvalidValue);
  State& s = GetState();
  std::lock_guard<std::mutex> lock(s.mu);
  s.max_dynamic_shared[kernel] = bytes;
  return cudaSuccess;
}

cudaError_t OccupancyBlocksPerSm(int* blocks, const void* /*kernel*/, int block_size,
                                 size_t dynamic_shared) {
  if (block_size <= 0 || block_size > kMaxThreadsPerBlock) return Record(cudaErrorInvalidValue);
  int by_threads = kMaxThreadsPerSm / block_size;
  const size_t per_block = dynamic_shared + kSharedReservedPerBlock;
  int by_shared = static_cast<int>(kSharedPerSm / per_block);
  *blocks = std::min(32, std::min(by_threads, by_shared));
  return cudaSuccess;
}

cudaError_t ValidateLaunch(const LaunchConfig& c) {
  const unsigned long long threads =
      static_cast<unsigned long long>(c.block.x) * c.block.y * c.block.z;
  if (threads == 0 || threads > kMaxThreadsPerBlock || c.block.z > 64) {
    return cudaErrorInvalidConfiguration;
  }
  if (c.grid.x == 0 || c.grid.y == 0 || c.grid.z == 0 || c.grid.x > 2147483647u ||
      c.grid.y > 65535 || c.grid.z > 65535) {
    return cudaErrorInvalidConfiguration;
  }
  if (!StreamExists(c.stream)) return cudaErrorInvalidValue;
  int limit = kSharedPerBlock;
  {
    State& s = GetState();
    std::lock_guard<std::mutex> lock(s.mu);
    auto it = s.max_dynamic_shared.find(c.kernel);
    if (it != s.max_dynamic_shared.end()) limit = it->second;
  }
  if (c.shared_bytes > static_cast<size_t>(limit)) return cudaErrorInvalidValue;
  return cudaSuccess;
}

void SetLaunchError(cudaError_t error) { Record(error); }

}  // namespace scanserve_emu

using scanserve_emu::GetState;
using scanserve_emu::Record;

cudaError_t cudaGetDeviceCount(int* count) {
  *count = scanserve_emu::DeviceCount();
  return *count > 0 ? cudaSuccess : Record(cudaErrorNoDevice);
}
cudaError_t cudaGetDevice(int* device) {
  *device = scanserve_emu::g_device;
  return cudaSuccess;
}
cudaError_t cudaSetDevice(int device) {
  if (device < 0 || device >= scanserve_emu::DeviceCount()) return Record(cudaErrorInvalidDevice);
  scanserve_emu::g_device = device;
  return cudaSuccess;
}
cudaError_t cudaGetDeviceProperties(cudaDeviceProp* prop, int device) {
  if (device < 0 || device >= scanserve_emu::DeviceCount()) return Record(cudaErrorInvalidDevice);
  std::memset(prop, 0, sizeof(*prop));
  std::snprintf(prop->name, sizeof(prop->name), "scanserve CUDA emulator (H200-like, on the CPU)");
  prop->totalGlobalMem = scanserve_emu::TotalMemory();
  prop->sharedMemPerBlock = scanserve_emu::kSharedPerBlock;
  prop->sharedMemPerBlockOptin = scanserve_emu::kSharedOptin;
  prop->warpSize = 32;
  prop->maxThreadsPerBlock = scanserve_emu::kMaxThreadsPerBlock;
  prop->major = 9;
  prop->minor = 0;
  prop->multiProcessorCount = scanserve_emu::kSms;
  return cudaSuccess;
}
cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int device) {
  if (device < 0 || device >= scanserve_emu::DeviceCount()) return Record(cudaErrorInvalidDevice);
  switch (attr) {
    case cudaDevAttrMaxThreadsPerBlock:
      *value = scanserve_emu::kMaxThreadsPerBlock;
      return cudaSuccess;
    case cudaDevAttrMaxSharedMemoryPerBlock:
      *value = scanserve_emu::kSharedPerBlock;
      return cudaSuccess;
    case cudaDevAttrMultiProcessorCount:
      *value = scanserve_emu::kSms;
      return cudaSuccess;
    case cudaDevAttrMaxSharedMemoryPerBlockOptin:
      *value = scanserve_emu::kSharedOptin;
      return cudaSuccess;
    case cudaDevAttrMaxSharedMemoryPerMultiprocessor:
      *value = scanserve_emu::kSharedPerSm;
      return cudaSuccess;
    case cudaDevAttrReservedSharedMemoryPerBlock:
      *value = scanserve_emu::kSharedReservedPerBlock;
      return cudaSuccess;
  }
  return Record(cudaErrorInvalidValue);
}
cudaError_t cudaDeviceSynchronize() {
  scanserve_emu::SynchronizeDevice();
  return scanserve_emu::ShouldFail(scanserve_emu::FaultPoint::kSynchronize) ? Record(cudaErrorLaunchFailure)
                                                                            : cudaSuccess;
}
cudaError_t cudaMemGetInfo(size_t* free_bytes, size_t* total_bytes) {
  auto& s = GetState();
  std::lock_guard<std::mutex> lock(s.mu);
  *total_bytes = scanserve_emu::TotalMemory();
  *free_bytes = *total_bytes > s.allocated ? *total_bytes - s.allocated : 0;
  return cudaSuccess;
}

cudaError_t cudaMalloc(void** ptr, size_t bytes) {
  *ptr = nullptr;
  if (bytes == 0) return cudaSuccess;
  if (scanserve_emu::ShouldFail(scanserve_emu::FaultPoint::kMalloc)) return Record(cudaErrorMemoryAllocation);
  auto& s = GetState();
  {
    std::lock_guard<std::mutex> lock(s.mu);
    if (s.allocated + bytes > scanserve_emu::TotalMemory()) {
      return Record(cudaErrorMemoryAllocation);
    }
  }
  void* p = nullptr;
  if (posix_memalign(&p, 256, bytes) != 0) return Record(cudaErrorMemoryAllocation);
  // The NaN pattern over the first 16 MB: beyond that, filling costs more page faults than the
  // tests' whole arithmetic (scratch buffers are sized for an H200), for little more coverage.
  std::memset(p, 0xff, std::min<size_t>(bytes, size_t{16} << 20));
  std::lock_guard<std::mutex> lock(s.mu);
  s.allocations[reinterpret_cast<uintptr_t>(p)] = bytes;
  s.allocated += bytes;
  *ptr = p;
  return cudaSuccess;
}
cudaError_t cudaFree(void* ptr) {
  if (ptr == nullptr) return cudaSuccess;
  scanserve_emu::SynchronizeDevice();  // as the runtime's cudaFree does
  auto& s = GetState();
  {
    std::lock_guard<std::mutex> lock(s.mu);
    auto it = s.allocations.find(reinterpret_cast<uintptr_t>(ptr));
    if (it == s.allocations.end()) return Record(cudaErrorInvalidDevicePointer);
    s.allocated -= it->second;
    s.allocations.erase(it);
  }
  std::free(ptr);
  return cudaSuccess;
}
cudaError_t cudaMallocHost(void** ptr, size_t bytes) {
  *ptr = std::malloc(bytes == 0 ? 1 : bytes);
  if (*ptr == nullptr) return Record(cudaErrorMemoryAllocation);
  auto& s = GetState();
  std::lock_guard<std::mutex> lock(s.mu);
  s.pinned[reinterpret_cast<uintptr_t>(*ptr)] = bytes;
  return cudaSuccess;
}
cudaError_t cudaFreeHost(void* ptr) {
  if (ptr == nullptr) return cudaSuccess;
  scanserve_emu::SynchronizeDevice();  // as the runtime's cudaFreeHost does
  auto& s = GetState();
  {
    std::lock_guard<std::mutex> lock(s.mu);
    if (s.pinned.erase(reinterpret_cast<uintptr_t>(ptr)) == 0) return Record(cudaErrorInvalidValue);
  }
  std::free(ptr);
  return cudaSuccess;
}
cudaError_t cudaMemcpy(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind) {
  return scanserve_emu::Copy(dst, src, bytes, kind, nullptr, "cudaMemcpy");
}
cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind,
                            cudaStream_t stream) {
  if (!scanserve_emu::StreamExists(stream)) return Record(cudaErrorInvalidValue);
  return scanserve_emu::Copy(dst, src, bytes, kind, stream, "cudaMemcpyAsync");
}
cudaError_t cudaMemset(void* dst, int value, size_t bytes) {
  return cudaMemsetAsync(dst, value, bytes, nullptr);
}
cudaError_t cudaMemsetAsync(void* dst, int value, size_t bytes, cudaStream_t stream) {
  if (!scanserve_emu::StreamExists(stream)) return Record(cudaErrorInvalidValue);
  auto& s = GetState();
  {
    std::lock_guard<std::mutex> lock(s.mu);
    scanserve_emu::CheckSide(s, dst, bytes, true, "cudaMemsetAsync", "destination");
  }
  if (scanserve_emu::ShouldFail(scanserve_emu::FaultPoint::kMemset)) return Record(cudaErrorLaunchFailure);
  if (bytes > 0) scanserve_emu::Enqueue(stream, [dst, value, bytes] { std::memset(dst, value, bytes); });
  return cudaSuccess;
}

cudaError_t cudaStreamCreate(cudaStream_t* stream) {
  return cudaStreamCreateWithFlags(stream, cudaStreamDefault);
}
cudaError_t cudaStreamCreateWithFlags(cudaStream_t* stream, unsigned int flags) {
  *stream = scanserve_emu::CreateStream(flags);
  return cudaSuccess;
}
cudaError_t cudaStreamDestroy(cudaStream_t stream) {
  if (stream == nullptr || !scanserve_emu::StreamExists(stream)) return Record(cudaErrorInvalidValue);
  scanserve_emu::DestroyStream(stream);
  return cudaSuccess;
}
cudaError_t cudaStreamSynchronize(cudaStream_t stream) {
  if (!scanserve_emu::StreamExists(stream)) return Record(cudaErrorInvalidValue);
  scanserve_emu::SynchronizeStream(stream);
  return scanserve_emu::ShouldFail(scanserve_emu::FaultPoint::kSynchronize) ? Record(cudaErrorLaunchFailure)
                                                                            : cudaSuccess;
}
cudaError_t cudaStreamWaitEvent(cudaStream_t stream, cudaEvent_t event, unsigned int flags) {
  if (flags != 0 || !scanserve_emu::StreamExists(stream) || !scanserve_emu::EventExists(event)) {
    return Record(cudaErrorInvalidValue);
  }
  scanserve_emu::WaitEvent(stream, event);
  return cudaSuccess;
}
cudaError_t cudaEventCreate(cudaEvent_t* event) {
  return cudaEventCreateWithFlags(event, cudaEventDefault);
}
cudaError_t cudaEventCreateWithFlags(cudaEvent_t* event, unsigned int flags) {
  *event = scanserve_emu::CreateEvent(flags);
  return cudaSuccess;
}
cudaError_t cudaEventDestroy(cudaEvent_t event) {
  if (!scanserve_emu::EventExists(event)) return Record(cudaErrorInvalidValue);
  scanserve_emu::DestroyEvent(event);
  return cudaSuccess;
}
cudaError_t cudaEventRecord(cudaEvent_t event, cudaStream_t stream) {
  if (!scanserve_emu::EventExists(event) || !scanserve_emu::StreamExists(stream)) {
    return Record(cudaErrorInvalidValue);
  }
  scanserve_emu::RecordEvent(event, stream);
  return cudaSuccess;
}
cudaError_t cudaEventSynchronize(cudaEvent_t event) {
  if (!scanserve_emu::EventExists(event)) return Record(cudaErrorInvalidValue);
  scanserve_emu::SynchronizeEvent(event);
  return scanserve_emu::ShouldFail(scanserve_emu::FaultPoint::kSynchronize) ? Record(cudaErrorLaunchFailure)
                                                                            : cudaSuccess;
}

cudaError_t cudaGetLastError() {
  const cudaError_t e = scanserve_emu::g_last_error;
  scanserve_emu::g_last_error = cudaSuccess;
  return e;
}
cudaError_t cudaPeekAtLastError() { return scanserve_emu::g_last_error; }

const char* cudaGetErrorName(cudaError_t error) {
  switch (error) {
    case cudaSuccess: return "cudaSuccess";
    case cudaErrorInvalidValue: return "cudaErrorInvalidValue";
    case cudaErrorMemoryAllocation: return "cudaErrorMemoryAllocation";
    case cudaErrorInvalidConfiguration: return "cudaErrorInvalidConfiguration";
    case cudaErrorInvalidDevice: return "cudaErrorInvalidDevice";
    case cudaErrorNoDevice: return "cudaErrorNoDevice";
    case cudaErrorInvalidDevicePointer: return "cudaErrorInvalidDevicePointer";
    case cudaErrorInvalidMemcpyDirection: return "cudaErrorInvalidMemcpyDirection";
    case cudaErrorLaunchOutOfResources: return "cudaErrorLaunchOutOfResources";
    case cudaErrorLaunchFailure: return "cudaErrorLaunchFailure";
  }
  return "cudaErrorUnknown";
}
const char* cudaGetErrorString(cudaError_t error) {
  switch (error) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorMemoryAllocation: return "out of memory";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    case cudaErrorInvalidDevice: return "invalid device ordinal";
    case cudaErrorNoDevice: return "no CUDA-capable device is detected";
    case cudaErrorInvalidDevicePointer: return "invalid device pointer";
    case cudaErrorInvalidMemcpyDirection: return "invalid copy direction for memcpy";
    case cudaErrorLaunchOutOfResources: return "too many resources requested for launch";
    case cudaErrorLaunchFailure: return "unspecified launch failure";
  }
  return "unknown error";
}
