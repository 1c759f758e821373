// What scan_eval and scan_score share: the checks that fail fast, before minutes of loading and
// scoring, and the loading of one model or an ensemble.
#pragma once

#include <filesystem>
#include <memory>
#include <string>
#include <system_error>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "engine/model/scan_model.h"
#include "engine/scoring/gemm.h"
#include "engine/scoring/scorer.h"

namespace scanserve {

// --threads N: CPU threads for the encoders and the scorer, 0 = all cores.
inline absl::Status ParseThreadsFlag(const std::string& value, int* threads) {
  if (absl::SimpleAtoi(value, threads) && *threads >= 0) return absl::OkStatus();
  return absl::InvalidArgumentError(
      absl::StrCat("--threads: expected a non-negative integer, got '", value, "'"));
}

// INVALID_ARGUMENT when the directory an output file goes to does not exist.
inline absl::Status CheckOutputDirectory(const std::string& path, const char* flag) {
  const std::filesystem::path parent = std::filesystem::path(path).parent_path();
  std::error_code error;
  if (parent.empty() || std::filesystem::is_directory(parent, error)) return absl::OkStatus();
  return absl::InvalidArgumentError(
      absl::StrCat(flag, ": the directory ", parent.string(), " of ", path, " does not exist"));
}

// Applies `threads` process-wide (LibTorch's and the BLAS's), then checks that `backend` is built in
// and takes `storage`. First thing in a tool's run, so that nothing sets the threads otherwise.
inline absl::Status ApplyThreadsAndCheckBackend(ScorerBackend backend, StorageType storage, int threads) {
  SetComputeThreads(threads);
  ScorerConfig probe;
  probe.dim = 1;
  probe.storage = storage;
  probe.num_threads = threads;  // a CPU scorer applies it process-wide
  return MakeScorer(backend, probe).status();
}

// The models of `dirs` (one, or an ensemble), in order: `owned` holds them, `models` points at them.
struct LoadedModels {
  std::vector<std::unique_ptr<ScanModel>> owned;
  std::vector<const ScanModel*> models;
};

inline absl::StatusOr<LoadedModels> LoadModels(const std::vector<std::string>& dirs, int threads) {
  ModelLoadOptions options;
  options.num_threads = threads;
  LoadedModels loaded;
  for (const std::string& dir : dirs) {
    absl::StatusOr<std::unique_ptr<ScanModel>> model = ScanModel::Load(dir, options);
    if (!model.ok()) return model.status();
    if (*model == nullptr) return absl::InternalError("ScanModel::Load returned no model");
    loaded.models.push_back(model->get());
    loaded.owned.push_back(*std::move(model));
  }
  return loaded;
}

}  // namespace scanserve
