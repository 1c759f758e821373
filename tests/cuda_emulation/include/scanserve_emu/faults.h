// CUDA emulation (tests only): injected device failures, so that the error paths of the CUDA
// code (rollback, a broken scorer, the server's health) run in tests. A fault fails one call at
// one point and is then spent:
//   - from a test: InjectFault(point, nth) fails the nth call at `point` from now on;
//   - from outside (a server under test): when SCANSERVE_CUDA_EMULATION_FAULT_FILE names a file
//     that exists and holds a point's name, the next call at that point fails and the file goes.
// Failures: malloc -> cudaErrorMemoryAllocation; copies, memsets and synchronisations ->
// cudaErrorLaunchFailure; kernel launches -> cudaErrorLaunchOutOfResources; cuBLAS ->
// CUBLAS_STATUS_EXECUTION_FAILED. None is sticky: the next call succeeds.
#pragma once

#include <string>

#include "cuda_runtime_api.h"

namespace scanserve_emu {

enum class FaultPoint {
  kMalloc,           // "malloc": cudaMalloc
  kCopyToDevice,     // "memcpy-h2d"
  kCopyToHost,       // "memcpy-d2h"
  kCopyOnDevice,     // "memcpy-d2d"
  kMemset,           // "memset"
  kLaunch,           // "launch": a kernel launch
  kGemm,             // "gemm": cublasGemmEx
  kSynchronize,      // "sync": cudaStreamSynchronize, cudaEventSynchronize, cudaDeviceSynchronize
};

// The point's name, as the fault file spells it ("malloc", "memcpy-d2d", ...).
const char* FaultPointName(FaultPoint point);

void InjectFault(FaultPoint point, int nth);
void ClearFaults();
// How many injected faults have fired since the process started.
int FaultsFired();

// For the emulator: whether this call at `point` fails.
bool ShouldFail(FaultPoint point);

}  // namespace scanserve_emu
