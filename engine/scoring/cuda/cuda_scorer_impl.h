// CudaScorer's device state (internal to engine/scoring/cuda/): the slabs of stored items, the
// per-pass buffers, streams and events. cuda_scorer.cc creates and configures it,
// cuda_scorer_store.cc adds and removes items, cuda_scorer_pass.cc scores.
#ifndef SCANSERVE_ENGINE_SCORING_CUDA_CUDA_SCORER_IMPL_H_
#define SCANSERVE_ENGINE_SCORING_CUDA_CUDA_SCORER_IMPL_H_

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "engine/scoring/cuda/device_memory.h"
#include "engine/scoring/cuda/scan_kernels.h"
#include "engine/scoring/cuda_scorer.h"

namespace scanserve {

namespace ck = cuda_kernels;

struct CudaScorer::Impl {
  using DeviceBuffer = cuda_internal::DeviceBuffer;
  using DeviceGuard = cuda_internal::DeviceGuard;
  using PinnedBuffer = cuda_internal::PinnedBuffer;

  // A slab: whole items in consecutive rows. Stored item i of the slab is items[i] (row_begin and
  // gram_begin slab-relative), keys[i] its key; device metadata items_dev mirrors `items`, and
  // tiles_dev mirrors `tiles`, the fused pass's row tiles over them.
  struct Slab {
    DeviceBuffer features;  // capacity_rows x dim, fp32, bf16 or fp8 codes
    DeviceBuffer scales;    // capacity_rows floats, fp8 only: each row's power-of-two scale
    DeviceBuffer norms;     // capacity_rows floats
    DeviceBuffer grams;     // gram_used floats (grown on demand)
    DeviceBuffer items_dev;
    DeviceBuffer tiles_dev;
    std::vector<ck::RowTileDev> tiles;
    int64_t capacity_rows = 0;
    int64_t used_rows = 0;
    int64_t gram_used = 0;
    int32_t max_rows = 0;
    std::vector<ck::ItemDev> items;
    std::vector<int64_t> keys;
  };
  // Where a key is stored.
  struct Location {
    Slab* slab = nullptr;
    int index = 0;
  };

  int device = 0;
  cudaDeviceProp props{};
  cudaStream_t stream = nullptr;
  // The pipelined GEMM path's epilogues; joined back into `stream` before every pass returns.
  cudaStream_t epilogue_stream = nullptr;
  cublasHandle_t cublas = nullptr;
  int64_t dim = 0;
  ck::ElemType elem = ck::ElemType::kFloat32;
  // bf16 and fp8 storage meet the queries on bf16 tensor cores (fp8 rows widened to bf16 first).
  bool bf16_gemm = false;
  bool split_queries = false;
  bool stored_is_context = true;
  AttentionParams attention;
  CudaScorerOptions options;

  std::vector<std::unique_ptr<Slab>> slabs;
  absl::flat_hash_map<int64_t, Location> where;
  int64_t num_items = 0;

  // Per-pass buffers, reused; guarded by pass_mu (const calls may run concurrently).
  mutable std::mutex pass_mu;
  mutable DeviceBuffer q_f32, q_b16, q_norms, q_grams, q_items, product[2], scores, epi_scratch,
      topk_a, topk_b, col_keys, upload_dev[2], compact_tmp, widened, q_groups, fused_slabs;
  mutable PinnedBuffer upload_host[2];
  mutable cudaEvent_t upload_done[2] = {nullptr, nullptr};
  // Pipelined GEMM path: product[b] written (on `stream`) / read by its epilogue (on
  // epilogue_stream); the epilogue stream's last work of a pass.
  mutable cudaEvent_t product_ready[2] = {nullptr, nullptr};
  mutable cudaEvent_t product_free[2] = {nullptr, nullptr};
  mutable cudaEvent_t epilogues_done = nullptr;
  mutable bool col_keys_dirty = true;
  mutable PassCounts passes;  // guarded by pass_mu
  mutable FusedLaunch fused_launch;  // guarded by pass_mu
  // pass_kernels = kAuto: the kernel choices, and the pass in flight that the chooser picked
  // (guarded by pass_mu).
  mutable PassKernelChooser chooser;
  struct ChosenPass {
    PassKernel kernel = PassKernel::kGemm;
    int64_t query_rows = 0;
    int64_t stored_rows = 0;
  };
  mutable std::optional<ChosenPass> timed_pass;
  // Set when a device copy failed midway through a compaction: the slabs and the key map may no
  // longer agree, so every later call fails with it rather than score a half-moved store.
  absl::Status broken;  // guarded by pass_mu

  bool fp8() const { return elem == ck::ElemType::kFp8E4M3; }
  size_t elem_bytes() const {
    return elem == ck::ElemType::kFloat32 ? 4 : (elem == ck::ElemType::kBFloat16 ? 2 : 1);
  }
  // Stored bytes per row: values, the fp8 scale, the norm.
  size_t row_bytes() const { return dim * elem_bytes() + (fp8() ? 4 : 0) + sizeof(float); }
  // Slab s's rows from `row` on.
  ck::RowsView Rows(const Slab& s, int64_t row) const {
    return ck::RowsView{s.features.as<char>() + row * dim * elem_bytes(), elem,
                        fp8() ? s.scales.as<float>() + row : nullptr};
  }

  ~Impl() {
    DeviceGuard guard(device);
    if (stream != nullptr) cudaStreamSynchronize(stream);
    if (epilogue_stream != nullptr) cudaStreamSynchronize(epilogue_stream);
    slabs.clear();
    for (DeviceBuffer* b : {&q_f32, &q_b16, &q_norms, &q_grams, &q_items, &product[0],
                            &product[1], &scores, &epi_scratch, &topk_a, &topk_b, &col_keys,
                            &upload_dev[0], &upload_dev[1], &compact_tmp, &widened, &q_groups,
                            &fused_slabs}) {
      b->Reset();
    }
    for (cudaEvent_t* e : Events()) {
      if (*e != nullptr) cudaEventDestroy(*e);
    }
    if (cublas != nullptr) cublasDestroy(cublas);
    if (epilogue_stream != nullptr) cudaStreamDestroy(epilogue_stream);
    if (stream != nullptr) cudaStreamDestroy(stream);
  }

  std::vector<cudaEvent_t*> Events() {
    return {&upload_done[0], &upload_done[1],   &product_ready[0], &product_ready[1],
            &product_free[0], &product_free[1], &epilogues_done};
  }

  int64_t StoredRows() const {
    int64_t rows = 0;
    for (const auto& s : slabs) rows += s->used_rows;
    return rows;
  }
  // A ScoreAll or Search pass, queries in to results on the host: when the chooser picked its
  // kernel, a successful pass's wall time goes to it.
  template <typename Pass>
  absl::Status TimedPass(Pass pass) const {
    const auto start = std::chrono::steady_clock::now();
    const absl::Status status = pass();
    if (timed_pass && status.ok()) {
      const std::chrono::duration<double> seconds = std::chrono::steady_clock::now() - start;
      chooser.Record(timed_pass->query_rows, timed_pass->stored_rows, timed_pass->kernel,
                     seconds.count());
    }
    timed_pass.reset();
    return status;
  }

  int32_t MaxStoredRows() const {
    int32_t m = 0;
    for (const auto& s : slabs) m = std::max(m, s->max_rows);
    return m;
  }

  // The item metadata and the row tiles to the device, after any change to the slab's items.
  absl::Status UploadItems(Slab& s) const;

  // Copies items[first, last) (already given rows in `s` from row `row0`) to the device, then
  // computes their norms and Gram matrices. Double-buffered through pinned memory.
  absl::Status WriteRun(Slab& s, absl::Span<const ItemView> items, int64_t row0);

  // Drops the items at `dead` (indices, ascending) from slab `s` in place, through compact_tmp
  // (already large enough); never allocates.
  absl::Status CompactSlab(Slab& s, const std::vector<int>& dead);

  // Removes the stored items at `locs` (each live), compacting every slab touched and dropping
  // emptied slabs. Allocates compact_tmp first; nothing changes when that fails.
  absl::Status RemoveLocations(const std::vector<Location>& locs);

  // One scoring pass: scores (device, queries x num_items, ld num_items) for every query.
  absl::Status RunPass(absl::Span<const ItemView> queries) const;
  // A chunk of whole items from items[first]: at most chunk_rows rows, at least one item.
  // Returns its end.
  static size_t ChunkEnd(const std::vector<ck::ItemDev>& items, size_t first, int64_t chunk_rows) {
    const int64_t row0 = items[first].row_begin;
    size_t end = first + 1;
    while (end < items.size() && items[end].row_begin + items[end].rows - row0 <= chunk_rows) {
      ++end;
    }
    return end;
  }
  // Slab rows [row0, row0 + rows) as the GEMM's stored operand: in place, or fp8 rows widened
  // to bf16 into `widened` (on `stream`).
  absl::StatusOr<const void*> ChunkOperand(const Slab& s, int64_t row0, int64_t rows) const;
  // The GEMM path's chunk loop of RunPass.
  absl::Status ScoreChunks(ck::EpilogueParams p, const ck::EpiloguePlan& plan,
                           const void* q_operand, int64_t ncols, int64_t chunk_rows,
                           bool pipelined) const;
  // RunPass's last step: the scoring kernels' status, passed on.
  absl::Status Scored(absl::Status status) const;
  // The fused pass of RunPass: one launch over every slab's row tiles.
  absl::Status ScoreTiles(const ck::EpilogueParams& p, ck::FusedParams f,
                          const ck::FusedPlan& plan) const;
};

}  // namespace scanserve

#endif  // SCANSERVE_ENGINE_SCORING_CUDA_CUDA_SCORER_IMPL_H_
