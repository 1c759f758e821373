// CudaScorer's scoring passes: the queries to the device, the fused kernel or the cuBLAS products
// with their epilogues, top-k on the device. Kernels: scan_kernels.cu.
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstring>
#include <utility>
#include <vector>

#include "engine/common/status_macros.h"
#include "engine/scoring/cuda/cuda_scorer_impl.h"
#include "engine/scoring/cuda/cuda_status.h"

namespace scanserve {

using cuda_internal::CudaStatus;
using cuda_internal::DeviceBuffer;
using cuda_internal::DeviceGuard;

static_assert(static_cast<int>(RawFeatureNorm::kClippedL2Norm) == 0 &&
                  static_cast<int>(RawFeatureNorm::kL2Norm) == 1 &&
                  static_cast<int>(RawFeatureNorm::kClipped) == 2 &&
                  static_cast<int>(RawFeatureNorm::kNoNorm) == 3 &&
                  static_cast<int>(RawFeatureNorm::kSoftmax) == 4,
              "scan_kernels.cu numbers RawFeatureNorm the same way");
static_assert(static_cast<int>(Pooling::kLogSumExp) == 0 && static_cast<int>(Pooling::kMean) == 1 &&
                  static_cast<int>(Pooling::kMax) == 2 && static_cast<int>(Pooling::kSum) == 3,
              "scan_kernels.cu numbers Pooling the same way");

absl::Status CudaScorer::Impl::RunPass(absl::Span<const ItemView> queries) const {
  const int64_t d = dim;
  const int nq = static_cast<int>(queries.size());
  // Queries: stacked rows, metadata, norms, Gram matrices when they are the context.
  std::vector<ck::ItemDev> q_meta(nq);
  int64_t q_rows = 0, q_gram = 0;
  int32_t max_q_rows = 0;
  for (int j = 0; j < nq; ++j) {
    q_meta[j].row_begin = q_rows;
    q_meta[j].rows = static_cast<int32_t>(queries[j].rows);
    q_meta[j].gram_begin = q_gram;
    q_rows += queries[j].rows;
    if (!stored_is_context) q_gram += queries[j].rows * queries[j].rows;
    max_q_rows = std::max<int32_t>(max_q_rows, static_cast<int32_t>(queries[j].rows));
  }
  std::vector<float> packed(static_cast<size_t>(q_rows * d));
  for (int j = 0; j < nq; ++j) {
    std::memcpy(packed.data() + q_meta[j].row_begin * d, queries[j].data,
                static_cast<size_t>(queries[j].rows * d) * sizeof(float));
  }
  SCANSERVE_RETURN_IF_ERROR(q_f32.Reserve(packed.size() * sizeof(float), "queries"));
  SCANSERVE_RETURN_IF_ERROR(q_norms.Reserve(q_rows * sizeof(float), "query norms"));
  SCANSERVE_RETURN_IF_ERROR(q_items.Reserve(nq * sizeof(ck::ItemDev), "query metadata"));
  // packed, q_meta (and groups below) are pageable and freed when the pass returns: safe, since a
  // host-to-device cudaMemcpyAsync from pageable memory returns only once the source has been
  // staged (CUDA runtime API, "API synchronization behavior").
  SCANSERVE_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(q_f32.get(), packed.data(),
                                                 packed.size() * sizeof(float),
                                                 cudaMemcpyHostToDevice, stream),
                                 "upload queries");
  SCANSERVE_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(q_items.get(), q_meta.data(),
                                                 nq * sizeof(ck::ItemDev), cudaMemcpyHostToDevice,
                                                 stream),
                                 "upload queries");
  const ck::RowsView query_rows{q_f32.get(), ck::ElemType::kFloat32, nullptr};
  SCANSERVE_CUDA_RETURN_IF_ERROR(ck::RowNorms(query_rows, q_rows, d, q_norms.as<float>(), stream),
                                 "query norms");
  if (!stored_is_context) {
    SCANSERVE_RETURN_IF_ERROR(q_grams.Reserve(q_gram * sizeof(float), "query Gram matrices"));
    SCANSERVE_CUDA_RETURN_IF_ERROR(
        ck::Grams(query_rows, d, q_items.as<ck::ItemDev>(), nq, q_grams.as<float>(), stream),
        "query Gram matrices");
  }
  // The GEMM's query operand: fp32, or bf16 (hi rows, then lo rows when split).
  const void* q_operand = q_f32.get();
  int64_t ncols = q_rows;
  if (bf16_gemm) {
    ncols = split_queries ? 2 * q_rows : q_rows;
    SCANSERVE_RETURN_IF_ERROR(q_b16.Reserve(ncols * d * sizeof(uint16_t),
                                            "bf16 queries"));
    uint16_t* hi = q_b16.as<uint16_t>();
    SCANSERVE_CUDA_RETURN_IF_ERROR(
        ck::SplitToBf16(q_f32.as<float>(), hi, split_queries ? hi + q_rows * d : nullptr,
                        q_rows * d, stream),
        "split queries");
    q_operand = hi;
  }
  const int32_t max_s_rows = MaxStoredRows();

  // The fused pass, when asked for and the shapes allow it: query groups of whole queries.
  std::vector<ck::QueryGroupDev> groups;
  ck::FusedPlan fused_plan;
  bool fused = false;
  timed_pass.reset();
  if (options.pass_kernels != CudaPassKernels::kGemm) {
    int32_t max_group_rows = 0;
    for (int j = 0; j < nq; ++j) {
      if (groups.empty() || groups.back().rows + q_meta[j].rows > ck::kFusedMaxGroupRows) {
        ck::QueryGroupDev g;
        g.row_begin = q_meta[j].row_begin;
        g.first_query = j;
        groups.push_back(g);
      }
      groups.back().rows += q_meta[j].rows;
      groups.back().num_queries += 1;
      max_group_rows = std::max(max_group_rows, groups.back().rows);
    }
    SCANSERVE_CUDA_RETURN_IF_ERROR(
        ck::PlanFused(device, d, max_s_rows, max_q_rows, max_group_rows, split_queries,
                      stored_is_context, bf16_gemm, options.fused_blocks_per_sm,
                      options.fused_max_stages, &fused_plan),
        "plan the fused pass");
    fused = fused_plan.eligible;
    if (fused && options.pass_kernels == CudaPassKernels::kAuto) {
      const int64_t stored_rows = StoredRows();
      const PassKernel kernel = chooser.Choose(q_rows, stored_rows);
      fused = kernel == PassKernel::kFused;
      timed_pass = ChosenPass{kernel, q_rows, stored_rows};
    }
  }
  ++(fused ? passes.fused : passes.gemm);
  if (fused) {
    fused_launch = FusedLaunch{fused_plan.blocks_per_sm, fused_plan.epilogue_warps,
                               static_cast<int64_t>(fused_plan.shared_bytes), fused_plan.stages};
    SCANSERVE_RETURN_IF_ERROR(q_groups.Upload(groups, stream, "query groups"));
  }

  SCANSERVE_RETURN_IF_ERROR(
      scores.Reserve(static_cast<size_t>(nq) * num_items * sizeof(float), "scores"));
  ck::EpilogueParams p;
  p.raw_feature_norm = static_cast<int>(attention.raw_feature_norm);
  p.pooling = static_cast<int>(attention.pooling);
  p.lambda_softmax = attention.lambda_softmax;
  p.lambda_lse = attention.lambda_lse;
  p.stored_is_context = stored_is_context;
  p.ld_product = ncols;
  p.lo_offset = bf16_gemm && split_queries ? q_rows : 0;
  p.queries = q_items.as<ck::ItemDev>();
  p.num_queries = nq;
  p.query_norms = q_norms.as<float>();
  p.query_grams = stored_is_context ? nullptr : q_grams.as<float>();
  p.scores = scores.as<float>();
  p.ld_scores = num_items;
  if (fused) {
    ck::FusedParams f;
    f.queries = q_b16.as<__nv_bfloat16>();
    f.lo_row_offset = q_rows;
    f.dim = d;
    f.split = split_queries;
    f.groups = q_groups.as<ck::QueryGroupDev>();
    f.num_groups = static_cast<int>(groups.size());
    return Scored(ScoreTiles(p, f, fused_plan));
  }

  // The GEMM path: per-chunk products, of at most max_product_bytes (at least one item).
  int64_t chunk_rows = std::max<int64_t>(
      max_s_rows, options.max_product_bytes / static_cast<int64_t>(ncols * sizeof(float)));
  if (fp8()) {
    // Each chunk is widened to bf16 for the tensor cores, in a buffer of the same budget.
    chunk_rows = std::min(
        chunk_rows,
        std::max<int64_t>(max_s_rows, options.max_product_bytes / static_cast<int64_t>(d * 2)));
  }
  int64_t largest_slab = 0;
  for (const auto& s : slabs) largest_slab = std::max(largest_slab, s->used_rows);
  const int64_t product_rows = std::min(chunk_rows, largest_slab);
  // Two product buffers when a second chunk exists to overlap with.
  const size_t product_bytes = static_cast<size_t>(product_rows) * ncols * sizeof(float);
  SCANSERVE_RETURN_IF_ERROR(product[0].Reserve(product_bytes, "products"));
  int64_t chunks = 0;
  for (const auto& sp : slabs) chunks += (sp->used_rows + chunk_rows - 1) / chunk_rows;
  const bool pipelined = options.pipelined_epilogue && chunks > 1;
  if (pipelined) SCANSERVE_RETURN_IF_ERROR(product[1].Reserve(product_bytes, "products"));
  if (fp8()) {
    SCANSERVE_RETURN_IF_ERROR(widened.Reserve(static_cast<size_t>(product_rows) * d *
                                                  sizeof(uint16_t),
                                              "fp8 rows widened to bf16"));
  }
  ck::EpiloguePlan plan;
  SCANSERVE_CUDA_RETURN_IF_ERROR(
      ck::PlanEpilogue(device, stored_is_context ? max_s_rows : max_q_rows,
                       stored_is_context ? max_q_rows : max_s_rows, &plan),
      "plan the epilogue");
  if (plan.global_scratch_bytes > 0) {
    SCANSERVE_RETURN_IF_ERROR(epi_scratch.Reserve(plan.global_scratch_bytes, "epilogue scratch"));
  }
  return Scored(ScoreChunks(p, plan, q_operand, ncols, chunk_rows, pipelined));
}

absl::Status CudaScorer::Impl::Scored(absl::Status status) const {
  // The kernels themselves failed (a launch the device refused, a fault): the chooser stops
  // choosing this kernel for such passes. Failures before this point (memory for the queries,
  // the scores) would fail either kernel and are not held against one.
  if (!status.ok() && timed_pass) {
    chooser.RecordFailure(timed_pass->query_rows, timed_pass->kernel);
    timed_pass.reset();
  }
  return status;
}

absl::Status CudaScorer::Impl::ScoreTiles(const ck::EpilogueParams& p, ck::FusedParams f,
                                          const ck::FusedPlan& plan) const {
  // Every slab in one launch: the slabs' descriptors, in tile order (pageable, staged at the
  // call like the query groups).
  std::vector<ck::FusedSlabDev> descs;
  int64_t tiles = 0, col = 0;
  for (const auto& sp : slabs) {
    const Slab& s = *sp;
    if (!s.tiles.empty()) {
      ck::FusedSlabDev d;
      d.stored = Rows(s, 0);
      d.norms = s.norms.as<float>();
      d.grams = stored_is_context ? s.grams.as<float>() : nullptr;
      d.items = s.items_dev.as<ck::ItemDev>();
      d.tiles = s.tiles_dev.as<ck::RowTileDev>();
      d.first_tile = tiles;
      d.col0 = col;
      descs.push_back(d);
      tiles += static_cast<int64_t>(s.tiles.size());
    }
    col += static_cast<int64_t>(s.items.size());
  }
  if (descs.empty()) return absl::OkStatus();
  SCANSERVE_RETURN_IF_ERROR(fused_slabs.Upload(descs, stream, "fused pass slabs"));
  f.slabs = fused_slabs.as<ck::FusedSlabDev>();
  f.num_slabs = static_cast<int>(descs.size());
  f.stored_type = elem;
  SCANSERVE_CUDA_RETURN_IF_ERROR(ck::FusedScore(p, f, plan, tiles, stream),
                                 "fused products and epilogue");
  return absl::OkStatus();
}

absl::StatusOr<const void*> CudaScorer::Impl::ChunkOperand(const Slab& s, int64_t row0, int64_t rows) const {
  if (!fp8()) return static_cast<const void*>(s.features.as<char>() + row0 * dim * elem_bytes());
  passes.widened_rows += rows;
  SCANSERVE_CUDA_RETURN_IF_ERROR(
      ck::Fp8RowsToBf16(s.features.as<uint8_t>() + row0 * dim, s.scales.as<float>() + row0, rows,
                        dim, widened.as<uint16_t>(), stream),
      "widen fp8 rows");
  return static_cast<const void*>(widened.get());
}

absl::Status CudaScorer::Impl::ScoreChunks(ck::EpilogueParams p, const ck::EpiloguePlan& plan,
                                           const void* q_operand, int64_t ncols,
                                           int64_t chunk_rows, bool pipelined) const {
  const int64_t d = dim;
  const float one = 1.0f, zero = 0.0f;
  const cudaDataType_t type = bf16_gemm ? CUDA_R_16BF : CUDA_R_32F;
  int chunk = 0;
  // Chunk i's GEMM fills product[i % 2] on `stream` once chunk i - 2's epilogue has read it; its
  // epilogue, on epilogue_stream, waits for that GEMM. The queries, norms and Gram matrices the
  // epilogues read were made on `stream` before any GEMM.
  auto score_chunk = [&](const void* stored_operand, int64_t rows) -> absl::Status {
    const int b = pipelined ? chunk % 2 : 0;
    ++chunk;
    if (pipelined) {
      SCANSERVE_CUDA_RETURN_IF_ERROR(cudaStreamWaitEvent(stream, product_free[b], 0),
                                     "order the product buffers");
    }
    // product (row-major rows x ncols) = stored rows · queriesᵀ; in cuBLAS's column-major
    // terms: C (ncols x rows) = Qᵀ(ncols x d) · F(d x rows).
    SCANSERVE_CUBLAS_RETURN_IF_ERROR(
        cublasGemmEx(cublas, CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(ncols),
                     static_cast<int>(rows), static_cast<int>(d), &one, q_operand, type,
                     static_cast<int>(d), stored_operand, type, static_cast<int>(d), &zero,
                     product[b].get(), CUDA_R_32F, static_cast<int>(ncols), CUBLAS_COMPUTE_32F,
                     CUBLAS_GEMM_DEFAULT),
        "region-word products (cublasGemmEx)");
    p.product = product[b].as<float>();
    if (!pipelined) {
      SCANSERVE_CUDA_RETURN_IF_ERROR(ck::Epilogue(p, plan, epi_scratch.as<float>(), stream),
                                     "fused epilogue");
      return absl::OkStatus();
    }
    SCANSERVE_CUDA_RETURN_IF_ERROR(cudaEventRecord(product_ready[b], stream), "order the epilogue");
    SCANSERVE_CUDA_RETURN_IF_ERROR(cudaStreamWaitEvent(epilogue_stream, product_ready[b], 0),
                                   "order the epilogue");
    SCANSERVE_CUDA_RETURN_IF_ERROR(
        ck::Epilogue(p, plan, epi_scratch.as<float>(), epilogue_stream), "fused epilogue");
    SCANSERVE_CUDA_RETURN_IF_ERROR(cudaEventRecord(product_free[b], epilogue_stream),
                                   "order the product buffers");
    return absl::OkStatus();
  };
  auto score_all = [&]() -> absl::Status {
    int64_t col = 0;
    for (const auto& sp : slabs) {
      const Slab& s = *sp;
      size_t i0 = 0;
      while (i0 < s.items.size()) {
        const size_t i1 = ChunkEnd(s.items, i0, chunk_rows);
        const int64_t row0 = s.items[i0].row_begin;
        const int64_t rows = s.items[i1 - 1].row_begin + s.items[i1 - 1].rows - row0;
        // fp8: widened on `stream`, after the previous chunk's GEMM has read the buffer.
        const absl::StatusOr<const void*> stored_operand = ChunkOperand(s, row0, rows);
        if (!stored_operand.ok()) return stored_operand.status();
        p.chunk_row0 = row0;
        p.items = s.items_dev.as<ck::ItemDev>();
        p.item_begin = static_cast<int>(i0);
        p.num_items = static_cast<int>(i1 - i0);
        p.stored_norms = s.norms.as<float>();
        p.stored_grams = stored_is_context ? s.grams.as<float>() : nullptr;
        p.col0 = col + static_cast<int64_t>(i0);
        SCANSERVE_RETURN_IF_ERROR(score_chunk(*stored_operand, rows));
        i0 = i1;
      }
      col += static_cast<int64_t>(s.items.size());
    }
    return absl::OkStatus();
  };
  absl::Status status = score_all();
  if (pipelined) {
    // Joined even after a failure: what `stream` does next (the scores' copy, the next pass's
    // uploads into buffers the epilogues read) must come after every queued epilogue.
    cudaError_t err = cudaEventRecord(epilogues_done, epilogue_stream);
    if (err == cudaSuccess) err = cudaStreamWaitEvent(stream, epilogues_done, 0);
    const absl::Status join =
        err == cudaSuccess ? absl::OkStatus()
                           : CudaStatus(err, "join the epilogues", __FILE__, __LINE__);
    if (!join.ok()) {
      // Nothing orders the streams: wait for the epilogues on the host instead.
      cudaStreamSynchronize(epilogue_stream);
      cudaGetLastError();
      if (status.ok()) status = join;
    }
  }
  return status;
}

absl::Status CudaScorer::ScoreAllImpl(absl::Span<const ItemView> queries,
                                      FloatMatrix* scores) const {
  const Impl& m = *impl_;
  std::lock_guard<std::mutex> lock(m.pass_mu);
  if (!m.broken.ok()) return m.broken;
  DeviceGuard guard(m.device);
  return m.TimedPass([&]() -> absl::Status {
    SCANSERVE_RETURN_IF_ERROR(m.RunPass(queries));
    SCANSERVE_CUDA_RETURN_IF_ERROR(
        cudaMemcpyAsync(scores->data.data(), m.scores.get(), scores->data.size() * sizeof(float),
                        cudaMemcpyDeviceToHost, m.stream),
        "download scores");
    SCANSERVE_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(m.stream), "ScoreAll");
    return absl::OkStatus();
  });
}

absl::StatusOr<std::vector<std::vector<ScoredKey>>> CudaScorer::SearchImpl(
    absl::Span<const ItemView> queries, int k) const {
  if (k > kMaxDeviceTopK) return Scorer::SearchImpl(queries, k);
  const Impl& m = *impl_;
  std::lock_guard<std::mutex> lock(m.pass_mu);
  if (!m.broken.ok()) return m.broken;
  DeviceGuard guard(m.device);
  const int nq = static_cast<int>(queries.size());
  const int64_t n = m.num_items;
  if (m.col_keys_dirty) {
    const std::vector<int64_t> column_keys = keys();
    SCANSERVE_RETURN_IF_ERROR(m.col_keys.Upload(column_keys, m.stream, "column keys"));
    SCANSERVE_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(m.stream), "upload column keys");
    m.col_keys_dirty = false;
  }
  std::vector<ck::TopKCand> best(static_cast<size_t>(nq) * k);
  SCANSERVE_RETURN_IF_ERROR(m.TimedPass([&]() -> absl::Status {
    SCANSERVE_RETURN_IF_ERROR(m.RunPass(queries));
    const int64_t tile = ck::kTopKTile;
    int64_t tiles = (n + tile - 1) / tile;
    const size_t cand_bytes = static_cast<size_t>(nq) * tiles * k * sizeof(ck::TopKCand);
    SCANSERVE_RETURN_IF_ERROR(m.topk_a.Reserve(cand_bytes, "top-k candidates"));
    SCANSERVE_RETURN_IF_ERROR(m.topk_b.Reserve(cand_bytes, "top-k candidates"));
    SCANSERVE_CUDA_RETURN_IF_ERROR(
        ck::TopKFromScores(m.scores.as<float>(), n, n, m.col_keys.as<int64_t>(), nq, k,
                           m.topk_a.as<ck::TopKCand>(), m.stream),
        "top-k");
    const DeviceBuffer* cur = &m.topk_a;
    const DeviceBuffer* other = &m.topk_b;
    while (tiles > 1) {
      const int64_t cands = tiles * k;
      SCANSERVE_CUDA_RETURN_IF_ERROR(
          ck::TopKFromCandidates(cur->as<ck::TopKCand>(), cands, nq, k, other->as<ck::TopKCand>(),
                                 m.stream),
          "top-k merge");
      std::swap(cur, other);
      tiles = (cands + tile - 1) / tile;
    }
    SCANSERVE_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(best.data(), cur->get(),
                                                   best.size() * sizeof(ck::TopKCand),
                                                   cudaMemcpyDeviceToHost, m.stream),
                                   "download top-k");
    SCANSERVE_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(m.stream), "Search");
    return absl::OkStatus();
  }));
  std::vector<std::vector<ScoredKey>> out(nq);
  const int64_t take = std::min<int64_t>(k, n);
  for (int j = 0; j < nq; ++j) {
    out[j].reserve(take);
    for (int64_t t = 0; t < take; ++t) {
      const ck::TopKCand& c = best[static_cast<size_t>(j) * k + t];
      if (c.valid) out[j].push_back(ScoredKey{c.key, c.score});
    }
  }
  return out;
}

}  // namespace scanserve
