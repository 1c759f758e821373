// DetectCpuVectorFeatures against the flags the kernel reports for this CPU.
#include "engine/common/cpu_features.h"

#include <gtest/gtest.h>

#include <fstream>
#include <set>
#include <sstream>
#include <string>

namespace scanserve {
namespace {

// The flags Linux reports for the first CPU in /proc/cpuinfo; empty where there is none.
std::set<std::string> KernelCpuFlags() {
  std::ifstream in("/proc/cpuinfo");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("flags", 0) != 0) continue;
    std::istringstream words(line.substr(line.find(':') + 1));
    std::set<std::string> flags;
    for (std::string flag; words >> flag;) flags.insert(flag);
    return flags;
  }
  return {};
}

TEST(DetectCpuVectorFeaturesTest, AgreesWithTheKernel) {
#if !defined(__x86_64__)
  GTEST_SKIP() << "x86-64 only";
#endif
  const std::set<std::string> flags = KernelCpuFlags();
  if (flags.empty()) GTEST_SKIP() << "no flags in /proc/cpuinfo";
  auto has = [&](const char* flag) { return flags.count(flag) > 0; };
  const CpuVectorFeatures cpu = DetectCpuVectorFeatures();
  EXPECT_EQ(cpu.avx2_fma, has("avx2") && has("fma"));
  EXPECT_EQ(cpu.avx512f, has("avx512f"));
  EXPECT_EQ(cpu.avx512, cpu.avx2_fma && has("avx512f") && has("avx512bw") && has("avx512dq") &&
                            has("avx512vl") && has("avx512cd"));
  EXPECT_EQ(cpu.bf16, has("avx512_bf16") || has("amx_bf16"));
}

}  // namespace
}  // namespace scanserve
