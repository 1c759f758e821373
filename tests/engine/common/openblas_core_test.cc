// BetterOpenBlasCore's decisions, and DetectCpuVectorFeatures against the kernel's CPU flags. The
// restart itself runs in tests/python/test_openblas_core.py (this binary has no OpenBLAS).
#include "engine/common/openblas_core.h"

#include <gtest/gtest.h>

#include <fstream>
#include <set>
#include <sstream>
#include <string>

namespace scanserve {
namespace {

CpuVectorFeatures Cpu(bool avx2_fma, bool avx512) {
  CpuVectorFeatures cpu;
  cpu.avx2_fma = avx2_fma;
  cpu.avx512 = avx512;
  return cpu;
}

TEST(BetterOpenBlasCoreTest, ReplacesPreAvx2FallbacksWithWhatTheCpuRuns) {
  const CpuVectorFeatures avx512 = Cpu(true, true);
  const CpuVectorFeatures avx2 = Cpu(true, false);
  const CpuVectorFeatures neither = Cpu(false, false);
  EXPECT_EQ(BetterOpenBlasCore("Prescott", avx512), "SkylakeX");
  EXPECT_EQ(BetterOpenBlasCore("Prescott", avx2), "Haswell");
  EXPECT_EQ(BetterOpenBlasCore("Prescott", neither), "");
  EXPECT_EQ(BetterOpenBlasCore("Sandybridge", avx2), "Haswell");
  EXPECT_EQ(BetterOpenBlasCore("Core2", avx512), "SkylakeX");
  EXPECT_EQ(BetterOpenBlasCore("Nehalem", avx2), "Haswell");
  EXPECT_EQ(BetterOpenBlasCore("Barcelona", avx2), "Haswell");
}

TEST(BetterOpenBlasCoreTest, KeepsModernCoresAndNoOpenBlas) {
  for (const CpuVectorFeatures& cpu : {Cpu(true, true), Cpu(true, false), Cpu(false, false)}) {
    for (const char* core : {"Haswell", "Zen", "SkylakeX", "Cooperlake", "SapphireRapids", "haswell",
                             "ZEN", "skylakex", "COOPERLAKE", "sapphirerapids", ""}) {
      EXPECT_EQ(BetterOpenBlasCore(core, cpu), "") << core;
    }
  }
}

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
}

}  // namespace
}  // namespace scanserve
