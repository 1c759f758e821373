// CudaScorer: the GPU mirror of CpuScorer (see scorer.h for the data conventions). Plain C++: no
// CUDA header appears here, so callers build without the CUDA toolkit on their include path.
//
// What differs from the interface (and from CpuScorer):
//  - Availability. Create() returns FAILED_PRECONDITION when no CUDA device can be used (no GPU,
//    no driver, a bad CudaScorerOptions::device); MakeScorer(kCuda) passes that through.
//  - Storage. Items live on the device, in slabs of whole items (CudaScorerOptions::slab_rows
//    rows each, so that growing never copies the whole store): features (fp32, or bf16 rounded to
//    nearest even as CpuScorer does), the row norms, and, for the side that is the attention
//    context (t2i: images, i2t: captions), each item's Gram matrix (fp32, of the stored values),
//    computed on the device at Add. ScorerConfig::storage decides fp32, bf16 or fp8; bf16 is what
//    a server should pick on a GPU (scan_bench --backend=cuda defaults to it). fp8 (e4m3 with a
//    power-of-two scale per row, engine/common/fp8_e4m3.h, encoded on the device bit for bit as
//    CpuScorer does) halves bf16's memory. The GEMM path widens each chunk of fp8 rows (exactly)
//    to bf16 in device memory for cuBLAS, trading some bandwidth for capacity; the fused pass reads
//    the codes and widens them as it stages them (engine/scoring/cuda/README.md).
//  - Order. keys() is insertion order; an upserted key moves to the end. Remove compacts the slabs
//    it touches at once (device-to-device), so the store never holds tombstones.
//  - Scoring. Per pass: the queries are uploaded once, then per chunk of stored items ONE GEMM
//    (cuBLAS; bf16 tensor cores with fp32 accumulation for bf16 and fp8 storage, plain fp32 for fp32) of
//    the chunk's stacked rows against all queries' stacked rows, then ONE fused epilogue kernel
//    that takes every (query, item) pair from those raw products to its pooled score (LeakyReLU,
//    l2norm over the query axis, λ1 softmax over the context axis, the Gram-form quadratic
//    form, cosine, pooling) without writing anything but the score. With bf16/fp8 storage the fp32
//    queries are split into two bf16 parts (hi + lo) by default, so the products are those of the
//    rounded items with the unrounded queries (as CpuScorer's), to ~2^-16 relative.
//    CudaScorerOptions::pass_kernels = kFused replaces the GEMM + epilogue with one kernel that
//    computes the products on the tensor cores into shared memory and scores them there; kAuto
//    times both on the live passes and runs the faster, per bucket of query rows.
//  - Search selects the top k on the device (k <= kMaxDeviceTopK; larger k falls back to
//    ScoreAll + TopKPerRow); only k results per query come back to the host.
//  - Threading. Device work of concurrent const calls is serialised on the scorer's stream.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "engine/common/matrix.h"
#include "engine/scoring/cuda_query_precision.h"
#include "engine/scoring/pass_kernel_chooser.h"
#include "engine/scoring/scorer.h"

namespace scanserve {

struct CudaScorerOptions {
  int device = 0;  // CUDA device ordinal
  CudaQueryPrecision query_precision = CudaQueryPrecision::kBf16Split;
  // Rows per storage slab (whole items; an item larger than this gets a slab of its own).
  int64_t slab_rows = int64_t{1} << 18;
  // Upper bound on the fp32 product buffer (stored rows x query rows) of one chunk, in bytes; a
  // chunk is at least one item. With pipelined_epilogue there are two such buffers.
  int64_t max_product_bytes = int64_t{256} << 20;
  // GEMM path: chunk i's epilogue runs on a second stream while chunk i + 1's GEMM runs, in two
  // product buffers, so the CUDA-core epilogue hides behind the tensor-core GEMM. Off: both on one
  // stream, one buffer (scan_bench --kernels=gemm-serial compares them).
  bool pipelined_epilogue = true;
  // One kernel launch over the whole store instead of a cuBLAS GEMM + the epilogue per chunk: a
  // tiled GEMM on the tensor cores (bf16 WMMA; 128 stored rows x 128 query rows per block) whose
  // products stay in shared memory and are scored there, so no product matrix goes through
  // device memory; fp8 codes are widened to bf16 as they are staged. bf16/fp8
  // storage, dim % 32 == 0, stored items and queries of at most 128 rows; otherwise (or when the
  // epilogue's scratch does not fit beside the tile) the pass takes the GEMM path. kFused asks for
  // it; kAuto runs whichever of the two has been faster for passes of that many query rows
  // (PassKernelChooser: both are timed first, then the faster runs, the other re-probed now and
  // then). kGemm by default until the fused kernel is checked on a GPU (scripts/gpu-check.sh).
  CudaPassKernels pass_kernels = CudaPassKernels::kGemm;
  // Fused pass: blocks resident per SM, 1 or 2. With 2, one block's epilogue (CUDA cores) overlaps
  // the other's products (tensor cores); each block then has shared memory for fewer epilogue
  // warps. The pass falls back to 1 when 2 would leave fewer than two epilogue warps.
  int fused_blocks_per_sm = 2;
  // Fused pass: at most this many k steps of the operands staged at once, 2 to 8 (as many as the
  // block's shared memory holds: a stage's query slices are only as tall as the pass's tallest
  // query group, so a lone caption gets 8 where full groups get 3): the copies of the next
  // stages - 1 steps are in flight while one is multiplied. More hide more memory latency when
  // few query rows leave the pass bound by reading the store (batch 1); 2 is the classic double
  // buffer.
  int fused_max_stages = 8;
  // Host rows reach the device through two pinned staging buffers of this many bytes each, one
  // filling while the other's copy runs (at least one row per step).
  int64_t upload_bytes = int64_t{64} << 20;
};

class CudaScorer final : public Scorer {
 public:
  // INVALID_ARGUMENT for a bad config or options; FAILED_PRECONDITION when no CUDA device can be
  // used (the message says why).
  static absl::StatusOr<std::unique_ptr<CudaScorer>> Create(const ScorerConfig& config,
                                                            const CudaScorerOptions& options = {});
  // Whether a CUDA device is usable; *why (optional) gets the reason when not.
  static bool DeviceAvailable(std::string* why = nullptr);

  // Search keeps the top k on the device up to this k.
  static constexpr int kMaxDeviceTopK = 256;

  ~CudaScorer() override;

  int64_t size() const override;
  std::vector<int64_t> keys() const override;
  int64_t memory_bytes() const override;
  // Free device memory plus this scorer's allocations, less 5% of the device (kept for cuBLAS,
  // the encoders and the detector) and one slab (a partly filled slab is allocated whole).
  int64_t MemoryCapacityBytes() const override;
  std::optional<DeviceMemory> DeviceMemoryInfo() const override;
  int64_t DeviceSearchMaxK() const override { return kMaxDeviceTopK; }
  absl::Status Health() const override;
  std::vector<std::pair<std::string, int64_t>> KernelPasses() const override;
  std::vector<KernelChoice> KernelChoices() const override;  // from pass_kernel_choices()

  const CudaScorerOptions& options() const { return options_; }
  // "NVIDIA H200 (sm_90, 139.8 GiB)" and the like.
  std::string DeviceDescription() const;
  // Waits for the device work of this scorer to finish (benchmarks).
  absl::Status Synchronize() const;
  // Scoring passes so far that took the fused kernel, and those that took the GEMM path; and the
  // fp8 rows widened to bf16 in device memory for the GEMM (the fused pass widens as it stages).
  struct PassCounts {
    int64_t fused = 0;
    int64_t gemm = 0;
    int64_t widened_rows = 0;
  };
  PassCounts pass_counts() const;
  // The last fused pass's launch: blocks resident per SM, epilogue warps per block, dynamic
  // shared memory per block, k steps staged at once (zeros before any fused pass).
  struct FusedLaunch {
    int blocks_per_sm = 0;
    int epilogue_warps = 0;
    int64_t shared_bytes = 0;
    int stages = 0;
  };
  FusedLaunch fused_launch() const;
  // With pass_kernels = kAuto: what the timing has chosen, per bucket of query rows so far.
  std::vector<PassKernelChooser::Bucket> pass_kernel_choices() const;
  // Switch CudaScorerOptions::pass_kernels, query_precision, pipelined_epilogue,
  // max_product_bytes (>= 1), fused_blocks_per_sm (1 or 2) and fused_max_stages (2 to 8) for
  // later passes: benchmarks compare them on one loaded store. A new query precision also
  // restarts kAuto's timing (the work per pass changed).
  void set_pass_kernels(CudaPassKernels kernels);
  void set_query_precision(CudaQueryPrecision precision);
  void set_fused_blocks_per_sm(int blocks);
  void set_fused_max_stages(int stages);
  void set_pipelined_epilogue(bool on);
  void set_max_product_bytes(int64_t bytes);

 protected:
  absl::Status AddImpl(absl::Span<const int64_t> keys, absl::Span<const ItemView> items) override;
  absl::Status RemoveImpl(absl::Span<const int64_t> keys) override;
  bool Contains(int64_t key) const override;
  absl::Status ScoreAllImpl(absl::Span<const ItemView> queries, FloatMatrix* scores) const override;
  absl::StatusOr<std::vector<std::vector<ScoredKey>>> SearchImpl(
      absl::Span<const ItemView> queries, int k) const override;

 private:
  struct Impl;  // device state, defined in engine/scoring/cuda/cuda_scorer_impl.h
  CudaScorer(const ScorerConfig& config, const CudaScorerOptions& options,
             std::unique_ptr<Impl> impl);

  CudaScorerOptions options_;
  std::unique_ptr<Impl> impl_;
};

}  // namespace scanserve
