// ScorerBackend: which implementation scores. Header-only and torch-free, so that server/ and the
// tools name and parse it without linking the scoring library.
#pragma once

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"

namespace scanserve {

// cpu: the production CPU scorer; reference: the plain reimplementation of the original code that
// the others are tested against; cuda: the GPU scorer (CUDA builds).
enum class ScorerBackend { kCpu, kReference, kCuda };

// "cpu", "reference", "cuda".
inline const char* ScorerBackendName(ScorerBackend backend) {
  switch (backend) {
    case ScorerBackend::kCpu: return "cpu";
    case ScorerBackend::kReference: return "reference";
    case ScorerBackend::kCuda: return "cuda";
  }
  return "unknown";
}

// The names above; INVALID_ARGUMENT otherwise, worded for the --backend flag (or config key) that
// every front end reads it from, so they report it as-is.
inline absl::StatusOr<ScorerBackend> ParseScorerBackend(absl::string_view name) {
  for (ScorerBackend b : {ScorerBackend::kCpu, ScorerBackend::kReference, ScorerBackend::kCuda}) {
    if (name == ScorerBackendName(b)) return b;
  }
  return absl::InvalidArgumentError(
      absl::StrCat("--backend: expected cpu, reference or cuda, got '", name, "'"));
}

}  // namespace scanserve
