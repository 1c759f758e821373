#include "engine/common/cpu_features.h"

namespace scanserve {

CpuVectorFeatures DetectCpuVectorFeatures() {
  CpuVectorFeatures features;
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
  // libgcc's checks include the OS's support (XCR0), not just the CPUID bits.
  __builtin_cpu_init();
  features.avx2_fma = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  features.avx512f = __builtin_cpu_supports("avx512f");
  features.avx512 = features.avx2_fma && features.avx512f &&
                    __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq") &&
                    __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512cd");
  features.bf16 = __builtin_cpu_supports("avx512bf16") || __builtin_cpu_supports("amx-bf16");
#endif
  return features;
}

}  // namespace scanserve
