// CudaScorer: creation on a device, its settings and its accounting. The stored items:
// cuda_scorer_store.cc; the scoring passes: cuda_scorer_pass.cc; kernels: scan_kernels.cu.
#include "engine/scoring/cuda_scorer.h"

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <memory>
#include <mutex>
#include <optional>
#include <utility>

#include "absl/strings/str_cat.h"
#include "engine/common/status_macros.h"
#include "engine/scoring/cuda/cuda_scorer_impl.h"
#include "engine/scoring/cuda/cuda_status.h"

namespace scanserve {

using cuda_internal::DeviceBuffer;
using cuda_internal::DeviceGuard;

bool CudaScorer::DeviceAvailable(std::string* why) {
  int count = 0;
  const cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess || count == 0) {
    if (why != nullptr) {
      *why = err != cudaSuccess
                 ? absl::StrCat("cudaGetDeviceCount: ", cudaGetErrorName(err), " (",
                                cudaGetErrorString(err), ")")
                 : std::string("cudaGetDeviceCount found 0 devices");
    }
    cudaGetLastError();
    return false;
  }
  return true;
}

CudaScorer::CudaScorer(const ScorerConfig& config, const CudaScorerOptions& options,
                       std::unique_ptr<Impl> impl)
    : Scorer(config), options_(options), impl_(std::move(impl)) {}

CudaScorer::~CudaScorer() = default;

absl::StatusOr<std::unique_ptr<CudaScorer>> CudaScorer::Create(const ScorerConfig& config,
                                                               const CudaScorerOptions& options) {
  SCANSERVE_RETURN_IF_ERROR(ValidateScorerConfig(config));
  if (options.slab_rows < 1 || options.max_product_bytes < 1 || options.upload_bytes < 1 ||
      options.device < 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "CudaScorerOptions: slab_rows, max_product_bytes and upload_bytes must be >= 1 and "
        "device >= 0, got ",
        options.slab_rows, ", ", options.max_product_bytes, ", ", options.upload_bytes, " and ",
        options.device));
  }
  if (options.fused_blocks_per_sm < 1 || options.fused_blocks_per_sm > 2) {
    return absl::InvalidArgumentError(absl::StrCat(
        "CudaScorerOptions: fused_blocks_per_sm must be 1 or 2, got ", options.fused_blocks_per_sm));
  }
  if (options.fused_max_stages < ck::kFusedMinStages ||
      options.fused_max_stages > ck::kFusedMaxStages) {
    return absl::InvalidArgumentError(absl::StrCat(
        "CudaScorerOptions: fused_max_stages must be ", ck::kFusedMinStages, " to ",
        ck::kFusedMaxStages, ", got ", options.fused_max_stages));
  }
  if (config.dim > (int64_t{1} << 30)) {
    return absl::InvalidArgumentError(
        absl::StrCat("CudaScorer: dim ", config.dim, " is beyond cuBLAS's int sizes"));
  }
  std::string why;
  if (!DeviceAvailable(&why)) {
    return absl::FailedPreconditionError(absl::StrCat(
        "CudaScorer: no CUDA device is available (", why,
        "); use the cpu backend, or run on a machine with an NVIDIA GPU and driver"));
  }
  int count = 0;
  cudaGetDeviceCount(&count);
  if (options.device >= count) {
    return absl::FailedPreconditionError(absl::StrCat("CudaScorer: device ", options.device,
                                                      " requested but only ", count,
                                                      " CUDA device(s) present"));
  }
  auto impl = std::make_unique<Impl>();
  impl->device = options.device;
  DeviceGuard guard(options.device);
  SCANSERVE_CUDA_RETURN_IF_ERROR(cudaGetDeviceProperties(&impl->props, options.device),
                                 "cudaGetDeviceProperties");
  SCANSERVE_CUDA_RETURN_IF_ERROR(cudaStreamCreateWithFlags(&impl->stream, cudaStreamNonBlocking),
                                 "cudaStreamCreate");
  SCANSERVE_CUDA_RETURN_IF_ERROR(
      cudaStreamCreateWithFlags(&impl->epilogue_stream, cudaStreamNonBlocking), "cudaStreamCreate");
  for (cudaEvent_t* e : impl->Events()) {
    SCANSERVE_CUDA_RETURN_IF_ERROR(cudaEventCreateWithFlags(e, cudaEventDisableTiming),
                                   "cudaEventCreate");
  }
  SCANSERVE_CUBLAS_RETURN_IF_ERROR(cublasCreate(&impl->cublas), "cublasCreate");
  SCANSERVE_CUBLAS_RETURN_IF_ERROR(cublasSetStream(impl->cublas, impl->stream), "cublasSetStream");
  // fp32 products stay fp32 (no TF32): CUBLAS_COMPUTE_32F is passed explicitly as well.
  SCANSERVE_CUBLAS_RETURN_IF_ERROR(cublasSetMathMode(impl->cublas, CUBLAS_DEFAULT_MATH),
                                   "cublasSetMathMode");
  impl->dim = config.dim;
  impl->elem = config.storage == StorageType::kFloat32
                   ? ck::ElemType::kFloat32
                   : (config.storage == StorageType::kBFloat16 ? ck::ElemType::kBFloat16
                                                                : ck::ElemType::kFp8E4M3);
  impl->bf16_gemm = config.storage != StorageType::kFloat32;
  impl->split_queries = options.query_precision == CudaQueryPrecision::kBf16Split;
  const bool t2i = config.attention.cross_attn == CrossAttention::kTextToImage;
  impl->stored_is_context = t2i == (config.stored_kind == ItemKind::kImage);
  impl->attention = config.attention;
  impl->options = options;
  return std::unique_ptr<CudaScorer>(new CudaScorer(config, options, std::move(impl)));
}

std::string CudaScorer::DeviceDescription() const {
  const cudaDeviceProp& p = impl_->props;
  return absl::StrCat(p.name, " (sm_", p.major, p.minor, ", ",
                      absl::SixDigits(static_cast<double>(p.totalGlobalMem) / (1 << 30)), " GiB, ",
                      p.multiProcessorCount, " SMs)");
}

absl::Status CudaScorer::Synchronize() const {
  DeviceGuard guard(impl_->device);
  SCANSERVE_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(impl_->stream), "synchronize");
  return absl::OkStatus();
}

CudaScorer::PassCounts CudaScorer::pass_counts() const {
  std::lock_guard<std::mutex> lock(impl_->pass_mu);
  return impl_->passes;
}

void CudaScorer::set_pass_kernels(CudaPassKernels kernels) {
  std::lock_guard<std::mutex> lock(impl_->pass_mu);
  impl_->options.pass_kernels = kernels;
  options_.pass_kernels = kernels;
}

void CudaScorer::set_query_precision(CudaQueryPrecision precision) {
  std::lock_guard<std::mutex> lock(impl_->pass_mu);
  if (impl_->options.query_precision == precision) return;
  impl_->options.query_precision = precision;
  impl_->split_queries = precision == CudaQueryPrecision::kBf16Split;
  options_.query_precision = precision;
  impl_->chooser.Reset();
}

std::vector<PassKernelChooser::Bucket> CudaScorer::pass_kernel_choices() const {
  return impl_->chooser.Buckets();
}

std::vector<Scorer::KernelChoice> CudaScorer::KernelChoices() const {
  std::vector<KernelChoice> out;
  for (const PassKernelChooser::Bucket& b : pass_kernel_choices()) {
    KernelChoice c;
    c.min_query_rows = b.min_query_rows;
    c.max_query_rows = b.max_query_rows;
    if (b.decided()) c.kernel = PassKernelName(b.choice);
    for (PassKernel k : {PassKernel::kGemm, PassKernel::kFused}) {
      const double seconds = b.median_seconds[static_cast<int>(k)];
      if (seconds > 0) c.median_seconds.emplace_back(PassKernelName(k), seconds);
    }
    out.push_back(std::move(c));
  }
  return out;
}

void CudaScorer::set_fused_blocks_per_sm(int blocks) {
  std::lock_guard<std::mutex> lock(impl_->pass_mu);
  impl_->options.fused_blocks_per_sm = std::clamp(blocks, 1, 2);
  options_.fused_blocks_per_sm = impl_->options.fused_blocks_per_sm;
}

void CudaScorer::set_fused_max_stages(int stages) {
  std::lock_guard<std::mutex> lock(impl_->pass_mu);
  impl_->options.fused_max_stages = std::clamp(stages, ck::kFusedMinStages, ck::kFusedMaxStages);
  options_.fused_max_stages = impl_->options.fused_max_stages;
}

std::vector<std::pair<std::string, int64_t>> CudaScorer::KernelPasses() const {
  const PassCounts counts = pass_counts();
  return {{"fused", counts.fused}, {"gemm", counts.gemm}};
}

CudaScorer::FusedLaunch CudaScorer::fused_launch() const {
  std::lock_guard<std::mutex> lock(impl_->pass_mu);
  return impl_->fused_launch;
}

void CudaScorer::set_pipelined_epilogue(bool on) {
  std::lock_guard<std::mutex> lock(impl_->pass_mu);
  impl_->options.pipelined_epilogue = on;
  options_.pipelined_epilogue = on;
}

void CudaScorer::set_max_product_bytes(int64_t bytes) {
  std::lock_guard<std::mutex> lock(impl_->pass_mu);
  impl_->options.max_product_bytes = std::max<int64_t>(1, bytes);
  options_.max_product_bytes = impl_->options.max_product_bytes;
}

int64_t CudaScorer::size() const { return impl_->num_items; }

bool CudaScorer::Contains(int64_t key) const { return impl_->where.contains(key); }

std::vector<int64_t> CudaScorer::keys() const {
  std::vector<int64_t> out;
  out.reserve(impl_->num_items);
  for (const auto& s : impl_->slabs) out.insert(out.end(), s->keys.begin(), s->keys.end());
  return out;
}

int64_t CudaScorer::memory_bytes() const {
  int64_t bytes = 0;
  for (const auto& s : impl_->slabs) {
    bytes += s->used_rows * static_cast<int64_t>(impl_->row_bytes()) +
             s->gram_used * static_cast<int64_t>(sizeof(float)) +
             static_cast<int64_t>(s->items.size() * sizeof(ck::ItemDev) +
                                  s->tiles.size() * sizeof(ck::RowTileDev));
  }
  return bytes;
}

std::optional<Scorer::DeviceMemory> CudaScorer::DeviceMemoryInfo() const {
  DeviceGuard guard(impl_->device);
  size_t free_bytes = 0, total_bytes = 0;
  if (cudaMemGetInfo(&free_bytes, &total_bytes) != cudaSuccess) {
    cudaGetLastError();
    return std::nullopt;
  }
  return DeviceMemory{static_cast<int64_t>(free_bytes), static_cast<int64_t>(total_bytes)};
}

int64_t CudaScorer::MemoryCapacityBytes() const {
  const Impl& m = *impl_;
  const std::optional<DeviceMemory> device = DeviceMemoryInfo();
  if (!device.has_value()) return -1;
  int64_t allocated = 0;
  for (const auto& s : m.slabs) {
    for (const DeviceBuffer* b :
         {&s->features, &s->scales, &s->norms, &s->grams, &s->items_dev, &s->tiles_dev}) {
      allocated += static_cast<int64_t>(b->bytes());
    }
  }
  const int64_t slab = m.options.slab_rows * static_cast<int64_t>(m.row_bytes());
  return std::max<int64_t>(0, device->free_bytes + allocated - device->total_bytes / 20 - slab);
}

}  // namespace scanserve
