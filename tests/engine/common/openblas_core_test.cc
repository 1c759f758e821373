// BetterOpenBlasCore's decisions. The restart itself runs in tests/python/test_openblas_core.py
// (this binary has no OpenBLAS).
#include "engine/common/openblas_core.h"

#include <gtest/gtest.h>


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

}  // namespace
}  // namespace scanserve
