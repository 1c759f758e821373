// CUDA emulation (tests only): what a kernel body sees. Qualifiers vanish, built-in variables
// read the emulated thread's coordinates, and every barrier or warp exchange is a scheduling
// point of the block's fibers (block_scheduler.cc), which checks what the hardware leaves
// undefined: divergent __syncthreads, warp operations whose mask names an exited or absent lane,
// lanes of one mask at different operations.
#pragma once

#include <math.h>

#include <cmath>
#include <cstdint>
#include <cstring>

#include "cuda_runtime_api.h"

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__
#define __launch_bounds__(...)
#define __align__(n) alignas(n)
// One copy per block: the emulator runs a block's threads as fibers of one host thread, one
// block at a time.
#define __shared__ static thread_local

using std::isinf;
using std::isnan;

namespace scanserve_emu {

const uint3& ThreadIdx();
const uint3& BlockIdx();
const dim3& BlockDim();
const dim3& GridDim();
// The launch's dynamic shared memory (`extern __shared__ T name[]` after rewriting).
void* DynamicShared();

void SyncThreads(int line);
void SyncWarp(unsigned mask, int line);
uint64_t ShuffleXor(unsigned mask, uint64_t bits, int lane_mask, int width, int line);
// A warp-collective operation: every lane in `mask` calls it with its own `lane_data`; once all
// have arrived, `resolve(lane_data_by_lane, mask)` runs once, then they all continue.
void WarpCollective(unsigned mask, int line, void (*resolve)(void* const* lanes, unsigned mask),
                    void* lane_data);
// cuda_pipeline.h: the calling thread's asynchronous copies into dynamic shared memory, their
// commit groups and the wait for all but the newest `prior` groups.
void AsyncCopy(void* dst_shared, const void* src_global, size_t size, size_t zfill);
void AsyncCommit();
void AsyncWaitPrior(size_t prior);

}  // namespace scanserve_emu

#define threadIdx (::scanserve_emu::ThreadIdx())
#define blockIdx (::scanserve_emu::BlockIdx())
#define blockDim (::scanserve_emu::BlockDim())
#define gridDim (::scanserve_emu::GridDim())
constexpr int warpSize = 32;

inline void __syncthreads(int line = __builtin_LINE()) { scanserve_emu::SyncThreads(line); }
inline void __syncwarp(unsigned mask = 0xffffffffu, int line = __builtin_LINE()) {
  scanserve_emu::SyncWarp(mask, line);
}
template <typename T>
T __shfl_xor_sync(unsigned mask, T value, int lane_mask, int width = 32,
                  int line = __builtin_LINE()) {
  static_assert(sizeof(T) <= sizeof(uint64_t), "shuffles move at most 64 bits");
  uint64_t bits = 0;
  std::memcpy(&bits, &value, sizeof(T));
  bits = scanserve_emu::ShuffleXor(mask, bits, lane_mask, width, line);
  std::memcpy(&value, &bits, sizeof(T));
  return value;
}

inline unsigned __float_as_uint(float f) {
  unsigned u;
  std::memcpy(&u, &f, sizeof(u));
  return u;
}
inline float __uint_as_float(unsigned u) {
  float f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
}
inline int __float_as_int(float f) { return static_cast<int>(__float_as_uint(f)); }
inline float __int_as_float(int i) { return __uint_as_float(static_cast<unsigned>(i)); }
// Round-to-nearest single steps, never contracted into an FMA with what feeds them or what they
// feed (as nvcc guarantees): their operands and result pass through an empty asm the compiler
// cannot see into. The emulated kernels are otherwise compiled like nvcc's default (-fmad=true),
// with contraction on where the host has FMA, so a kernel that needs bit-exact arithmetic and
// relies on plain expressions staying unfused fails here too.
#if defined(__x86_64__)
#define SCANSERVE_EMU_OPAQUE(x) asm("" : "+x"(x))
#else
#define SCANSERVE_EMU_OPAQUE(x) asm("" : "+r"(x))
#endif
#define SCANSERVE_EMU_RN(name, op)        \
  inline float name(float a, float b) {   \
    SCANSERVE_EMU_OPAQUE(a);              \
    SCANSERVE_EMU_OPAQUE(b);              \
    float r = a op b;                     \
    SCANSERVE_EMU_OPAQUE(r);              \
    return r;                             \
  }
SCANSERVE_EMU_RN(__fadd_rn, +)
SCANSERVE_EMU_RN(__fsub_rn, -)
SCANSERVE_EMU_RN(__fmul_rn, *)
SCANSERVE_EMU_RN(__fdiv_rn, /)
#undef SCANSERVE_EMU_RN
// The device's global min/max overloads.
#define SCANSERVE_EMU_MIN_MAX(T)                   \
  inline T min(T a, T b) { return b < a ? b : a; } \
  inline T max(T a, T b) { return a < b ? b : a; }
SCANSERVE_EMU_MIN_MAX(int)
SCANSERVE_EMU_MIN_MAX(unsigned int)
SCANSERVE_EMU_MIN_MAX(long)
SCANSERVE_EMU_MIN_MAX(unsigned long)
SCANSERVE_EMU_MIN_MAX(long long)
SCANSERVE_EMU_MIN_MAX(unsigned long long)
#undef SCANSERVE_EMU_MIN_MAX
inline float min(float a, float b) { return fminf(a, b); }
inline float max(float a, float b) { return fmaxf(a, b); }
inline double min(double a, double b) { return fmin(a, b); }
inline double max(double a, double b) { return fmax(a, b); }
template <typename T>
T __ldg(const T* p) {
  return *p;
}
