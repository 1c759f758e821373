// CUDA emulation (tests only): the injected faults of scanserve_emu/faults.h.
#include "scanserve_emu/faults.h"

#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <mutex>
#include <string>

namespace scanserve_emu {
namespace {

struct Faults {
  std::mutex mu;
  bool armed = false;
  FaultPoint point = FaultPoint::kMalloc;
  int remaining = 0;
  int fired = 0;
};
Faults& GetFaults() {
  static Faults* faults = new Faults;
  return *faults;
}

// The fault file's point, consumed when it matches.
bool FileFault(FaultPoint point) {
  static const char* path = std::getenv("SCANSERVE_CUDA_EMULATION_FAULT_FILE");
  if (path == nullptr || *path == '\0' || access(path, F_OK) != 0) return false;
  std::ifstream in(path);
  std::string name;
  in >> name;
  if (name != FaultPointName(point)) return false;
  if (unlink(path) != 0) return false;  // another thread took it
  std::fprintf(stderr, "CUDA emulation: injected fault at %s\n", FaultPointName(point));
  return true;
}

}  // namespace

const char* FaultPointName(FaultPoint point) {
  switch (point) {
    case FaultPoint::kMalloc: return "malloc";
    case FaultPoint::kCopyToDevice: return "memcpy-h2d";
    case FaultPoint::kCopyToHost: return "memcpy-d2h";
    case FaultPoint::kCopyOnDevice: return "memcpy-d2d";
    case FaultPoint::kMemset: return "memset";
    case FaultPoint::kLaunch: return "launch";
    case FaultPoint::kGemm: return "gemm";
    case FaultPoint::kSynchronize: return "sync";
  }
  return "?";
}

void InjectFault(FaultPoint point, int nth) {
  Faults& f = GetFaults();
  std::lock_guard<std::mutex> lock(f.mu);
  f.armed = nth > 0;
  f.point = point;
  f.remaining = nth;
}

void ClearFaults() {
  Faults& f = GetFaults();
  std::lock_guard<std::mutex> lock(f.mu);
  f.armed = false;
}

int FaultsFired() {
  Faults& f = GetFaults();
  std::lock_guard<std::mutex> lock(f.mu);
  return f.fired;
}

bool ShouldFail(FaultPoint point) {
  Faults& f = GetFaults();
  {
    std::lock_guard<std::mutex> lock(f.mu);
    if (f.armed && f.point == point && --f.remaining == 0) {
      f.armed = false;
      ++f.fired;
      return true;
    }
  }
  if (FileFault(point)) {
    std::lock_guard<std::mutex> lock(f.mu);
    ++f.fired;
    return true;
  }
  return false;
}

}  // namespace scanserve_emu
