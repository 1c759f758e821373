// MakeScorer: the one place that knows which scoring backends were compiled in.
#include <memory>
#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "engine/common/status_macros.h"
#include "engine/scoring/cpu_scorer.h"
#include "engine/scoring/reference_scorer.h"
#include "engine/scoring/scorer.h"

#ifdef SCANSERVE_WITH_CUDA
#include "engine/scoring/cuda_scorer.h"
#endif

namespace scanserve {

absl::StatusOr<std::unique_ptr<Scorer>> MakeScorer(ScorerBackend backend,
                                                   const ScorerConfig& config,
                                                   [[maybe_unused]] const ScorerTuning& tuning) {
  switch (backend) {
    case ScorerBackend::kCpu: {
      SCANSERVE_ASSIGN_OR_RETURN(std::unique_ptr<CpuScorer> s, CpuScorer::Create(config));
      return std::unique_ptr<Scorer>(std::move(s));
    }
    case ScorerBackend::kReference: {
      SCANSERVE_ASSIGN_OR_RETURN(std::unique_ptr<ReferenceScorer> s,
                                 ReferenceScorer::Create(config));
      return std::unique_ptr<Scorer>(std::move(s));
    }
    case ScorerBackend::kCuda:
#ifdef SCANSERVE_WITH_CUDA
    {
      CudaScorerOptions options;
      options.pass_kernels = tuning.cuda_pass_kernels;
      options.query_precision = tuning.cuda_query_precision;
      SCANSERVE_ASSIGN_OR_RETURN(std::unique_ptr<CudaScorer> s, CudaScorer::Create(config, options));
      return std::unique_ptr<Scorer>(std::move(s));
    }
#else
      return absl::UnimplementedError(
          "scorer backend 'cuda' is not available: scanserve was built without CUDA "
          "(SCANSERVE_WITH_CUDA=OFF)");
#endif
  }
  return absl::InvalidArgumentError("MakeScorer: unknown backend");
}

}  // namespace scanserve
