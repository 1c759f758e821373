#include "engine/common/openblas_core.h"

#include <dlfcn.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"

namespace scanserve {
namespace {

constexpr char kCoreTypeVariable[] = "OPENBLAS_CORETYPE";
// Set in the restarted process to the core OpenBLAS had chosen: stops a second restart, and tells
// OpenBlasCoreNote what was replaced.
constexpr char kRestartMarkerVariable[] = "SCANSERVE_OPENBLAS_REEXEC";

// The OpenBLAS function `name` (char* name(void)) called, or nullptr without OpenBLAS.
const char* CallOpenBlasStringFunction(const char* name) {
  using StringFn = char* (*)();
  auto fn = reinterpret_cast<StringFn>(dlsym(RTLD_DEFAULT, name));
  return fn == nullptr ? nullptr : fn();
}

// Only a DYNAMIC_ARCH build carries several kernel sets and reads OPENBLAS_CORETYPE.
bool OpenBlasSwitchesCores() {
  const char* config = CallOpenBlasStringFunction("openblas_get_config");
  return config != nullptr && absl::StrContains(config, "DYNAMIC_ARCH");
}

bool IsModernCore(absl::string_view core) {
  for (absl::string_view modern : {"Haswell", "Zen", "SkylakeX", "Cooperlake", "SapphireRapids"}) {
    if (absl::EqualsIgnoreCase(core, modern)) return true;
  }
  return false;
}

std::string ProgramName(char** argv) {
  if (argv == nullptr || argv[0] == nullptr) return "scanserve";
  const absl::string_view path = argv[0];
  const size_t slash = path.rfind('/');
  return std::string(slash == absl::string_view::npos ? path : path.substr(slash + 1));
}

}  // namespace

std::string LoadedOpenBlasCore() {
  const char* name = CallOpenBlasStringFunction("openblas_get_corename");
  return name == nullptr ? std::string() : std::string(name);
}

std::string BetterOpenBlasCore(absl::string_view loaded, const CpuVectorFeatures& cpu) {
  if (loaded.empty() || IsModernCore(loaded)) return "";
  if (cpu.avx512) return "SkylakeX";
  if (cpu.avx2_fma) return "Haswell";
  return "";
}

void ReexecWithBetterOpenBlasCore(char** argv) {
  if (argv == nullptr || std::getenv(kCoreTypeVariable) != nullptr ||
      std::getenv(kRestartMarkerVariable) != nullptr || !OpenBlasSwitchesCores()) {
    return;
  }
  const std::string loaded = LoadedOpenBlasCore();
  const CpuVectorFeatures cpu = DetectCpuVectorFeatures();
  const std::string better = BetterOpenBlasCore(loaded, cpu);
  if (better.empty()) return;
  const std::string program = ProgramName(argv);
  if (setenv(kCoreTypeVariable, better.c_str(), 1) == 0 &&
      setenv(kRestartMarkerVariable, loaded.c_str(), 1) == 0) {
    std::fprintf(stderr,
                 "%s: OpenBLAS chose its %s kernels for a CPU with %s; restarting with "
                 "OPENBLAS_CORETYPE=%s (set OPENBLAS_CORETYPE to choose yourself)\n",
                 program.c_str(), loaded.c_str(), cpu.avx512 ? "AVX-512" : "AVX2", better.c_str());
    std::fflush(stderr);
    execv("/proc/self/exe", argv);
  }
  const int error = errno;
  unsetenv(kCoreTypeVariable);
  unsetenv(kRestartMarkerVariable);
  std::fprintf(stderr, "%s: cannot restart (%s): running on with OpenBLAS's %s kernels\n",
               program.c_str(), std::strerror(error), loaded.c_str());
}

std::string OpenBlasCoreNote() {
  const std::string loaded = LoadedOpenBlasCore();
  if (loaded.empty()) return "";
  std::string note = absl::StrCat("OpenBLAS ", loaded, " kernels");
  const char* forced = std::getenv(kCoreTypeVariable);
  const char* replaced = std::getenv(kRestartMarkerVariable);
  if (forced != nullptr && replaced != nullptr && absl::EqualsIgnoreCase(loaded, forced)) {
    absl::StrAppend(&note, " (forced: OpenBLAS chose ", replaced, " for this CPU)");
  } else if (forced != nullptr) {
    absl::StrAppend(&note, " (", kCoreTypeVariable, "=", forced, ")");
  } else if (OpenBlasSwitchesCores()) {
    const std::string better = BetterOpenBlasCore(loaded, DetectCpuVectorFeatures());
    if (!better.empty()) {
      absl::StrAppend(&note, " (slower than this CPU allows: ", kCoreTypeVariable, "=", better,
                      " would be faster)");
    }
  }
  return note;
}

}  // namespace scanserve
