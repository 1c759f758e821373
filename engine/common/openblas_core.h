// Which OpenBLAS kernels the process runs, and a restart with better ones where OpenBLAS (a
// DYNAMIC_ARCH build) did not recognise the CPU and fell back to its pre-AVX2 kernels: Debian 12's
// OpenBLAS 0.3.21 runs SSE3 "Prescott" kernels on CPUs newer than it, 2-3.5x slower for LibTorch's
// GEMMs (scoring, the BiGRU encoders, the detector). OpenBLAS reads OPENBLAS_CORETYPE only in its
// library constructor, before main(), so the only in-process fix is to execute the program again
// with the variable set. Torch-free: OpenBLAS is looked up in the process, where LibTorch loaded it.
#pragma once

#include <string>

#include "absl/strings/string_view.h"
#include "engine/common/cpu_features.h"

namespace scanserve {

// The core whose kernels OpenBLAS chose (openblas_get_corename, e.g. "Prescott", "SkylakeX"); ""
// when the process has no OpenBLAS.
std::string LoadedOpenBlasCore();

// The core to force instead of `loaded` (OpenBLAS's choice, as LoadedOpenBlasCore names it), or ""
// to keep it. Only OpenBLAS's pre-AVX2 fallbacks are replaced, and only by kernels that `cpu` can
// run: "SkylakeX" with AVX-512, else "Haswell" with AVX2+FMA. A modern core that OpenBLAS chose
// (Haswell, Zen, SkylakeX, Cooperlake, SapphireRapids) is kept, and so is "" (no OpenBLAS).
std::string BetterOpenBlasCore(absl::string_view loaded, const CpuVectorFeatures& cpu);

// Call first thing in main(), before any thread or file is created: when BetterOpenBlasCore names a
// core, executes the program again (/proc/self/exe, the same argv) with OPENBLAS_CORETYPE set to it,
// saying so in one line on stderr. Does nothing when OPENBLAS_CORETYPE is already set (the user's
// choice, even empty), after such a restart, or without OpenBLAS. Should the exec fail it says why
// and returns: the program runs on, with the slower kernels.
void ReexecWithBetterOpenBlasCore(char** argv);

// One line for start-up logs, e.g. "OpenBLAS SkylakeX kernels (forced: OpenBLAS chose Prescott for
// this CPU)"; "" without OpenBLAS.
std::string OpenBlasCoreNote();

}  // namespace scanserve
