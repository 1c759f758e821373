// The arithmetic the detector network runs in. Only fp32 reproduces the original (Caffe) network
// to float rounding; the others are opt-in speed-ups whose feature drift scan_extract
// --compare-precision measures on the user's own images and weights.
#pragma once

#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"

namespace scanserve {

enum class DetectorPrecision {
  kFloat32,  // the default
  // TF32 tensor cores for the CUDA convolutions and matrix products (10-bit mantissa inputs, fp32
  // accumulation); on the CPU the same as fp32. LibTorch's TF32 switch is process-wide: the
  // detector sets it before each run, so it also applies to other CUDA work of the process at the
  // time (the server therefore refuses tf32; scan_extract runs the detector alone).
  kTf32,
  // The convolutions (trunk, RPN, res5 head) in bf16, weights and activations, with fp32
  // accumulation; the RPN's outputs, RoI pooling, pool5 and the classifiers stay fp32. About twice
  // the speed of fp32 on GPUs and on CPUs with bf16 units (AVX512-BF16, AMX); features move by
  // about 1% and the selected regions may change.
  kBf16,
};

// Inline: the server's configuration names precisions without linking the detector.
// "fp32", "tf32", "bf16".
inline const char* DetectorPrecisionName(DetectorPrecision precision) {
  switch (precision) {
    case DetectorPrecision::kFloat32:
      return "fp32";
    case DetectorPrecision::kTf32:
      return "tf32";
    case DetectorPrecision::kBf16:
      return "bf16";
  }
  return "?";
}

// The inverse; INVALID_ARGUMENT naming the accepted values otherwise.
inline absl::StatusOr<DetectorPrecision> ParseDetectorPrecision(const std::string& name) {
  for (DetectorPrecision p :
       {DetectorPrecision::kFloat32, DetectorPrecision::kTf32, DetectorPrecision::kBf16}) {
    if (name == DetectorPrecisionName(p)) return p;
  }
  return absl::InvalidArgumentError(
      absl::StrCat("detector precision must be fp32, tf32 or bf16, got '", name, "'"));
}

// Why `precision` will run far slower than fp32 where the detector runs, or "" when it will not:
// bf16 on a CPU without bf16 arithmetic (AVX512-BF16 or AMX-BF16, CpuVectorFeatures::bf16), where
// LibTorch emulates the convolutions (an image that took 35 s in fp32 on a 2-core AVX2 EPYC was not
// done after 4 minutes in bf16).
inline std::string DetectorPrecisionCaveat(DetectorPrecision precision, bool on_cuda, bool cpu_has_bf16) {
  if (precision != DetectorPrecision::kBf16 || on_cuda || cpu_has_bf16) return "";
  return "bf16 on this CPU is emulated (it has neither AVX512-BF16 nor AMX-BF16): detections run "
         "several times slower than in fp32, the default";
}

}  // namespace scanserve
