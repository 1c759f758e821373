// LibTorch stays inside this file (its headers leak glog-style macros).
#include "engine/scoring/reference_scorer.h"

#include <cstring>
#include <exception>
#include <new>
#include <tuple>

#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>
#include <c10/util/Exception.h>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "engine/common/status_macros.h"
#include "engine/common/torch_status.h"
#include "engine/scoring/gemm.h"

namespace scanserve {
namespace {

// model.py: l2norm(X, dim, eps=1e-8), eps ADDED to the norm.
at::Tensor L2Norm(const at::Tensor& x, int64_t dim) {
  at::Tensor norm = x.pow(2).sum(dim, /*keepdim=*/true).sqrt() + 1e-8;
  return x.div(norm);
}

// model.py: cosine_similarity(x1, x2, dim, eps=1e-8), eps CLAMPS |x1||x2|. (No squeeze: a single
// stored item or a one-row item must keep its dimensions.)
at::Tensor CosineSimilarity(const at::Tensor& x1, const at::Tensor& x2, int64_t dim) {
  at::Tensor w12 = (x1 * x2).sum(dim);
  at::Tensor w1 = x1.norm(2, dim);
  at::Tensor w2 = x2.norm(2, dim);
  return w12 / (w1 * w2).clamp_min(1e-8);
}

// model.py: func_attention(query, context, opt, smooth). query: (batch, queryL, d), context:
// (batch, sourceL, d); returns the attended vectors (batch, queryL, d).
at::Tensor FuncAttention(const at::Tensor& query, const at::Tensor& context,
                         const AttentionParams& p) {
  const int64_t batch = context.size(0);
  const int64_t source_l = context.size(1);
  const int64_t query_l = query.size(1);
  at::Tensor query_t = query.transpose(1, 2);
  at::Tensor attn = at::bmm(context, query_t);  // (batch, sourceL, queryL)
  switch (p.raw_feature_norm) {
    case RawFeatureNorm::kSoftmax:
      attn = at::softmax(attn.view({batch * source_l, query_l}), 1).view({batch, source_l, query_l});
      break;
    case RawFeatureNorm::kL2Norm:
      attn = L2Norm(attn, 2);
      break;
    case RawFeatureNorm::kClippedL2Norm:
      attn = at::leaky_relu(attn, 0.1);
      attn = L2Norm(attn, 2);
      break;
    case RawFeatureNorm::kClipped:
      attn = at::leaky_relu(attn, 0.1);
      break;
    case RawFeatureNorm::kNoNorm:
      break;
  }
  attn = attn.transpose(1, 2).contiguous();  // (batch, queryL, sourceL)
  attn = attn.view({batch * query_l, source_l});
  attn = at::softmax(attn * p.lambda_softmax, 1);
  attn = attn.view({batch, query_l, source_l});
  at::Tensor attn_t = attn.transpose(1, 2).contiguous();  // (batch, sourceL, queryL)
  at::Tensor context_t = context.transpose(1, 2);         // (batch, d, sourceL)
  at::Tensor weighted = at::bmm(context_t, attn_t);       // (batch, d, queryL)
  return weighted.transpose(1, 2);                        // (batch, queryL, d)
}

// xattn_score_*: pools row_sim (batch, L) into (batch).
at::Tensor Pool(const at::Tensor& row_sim, const AttentionParams& p) {
  switch (p.pooling) {
    case Pooling::kLogSumExp:
      return row_sim.mul(p.lambda_lse).exp().sum(1).log() / p.lambda_lse;
    case Pooling::kMax:
      return std::get<0>(row_sim.max(1));
    case Pooling::kSum:
      return row_sim.sum(1);
    case Pooling::kMean:
      return row_sim.mean(1);
  }
  return row_sim.mean(1);
}

}  // namespace

absl::StatusOr<std::unique_ptr<ReferenceScorer>> ReferenceScorer::Create(
    const ScorerConfig& config) {
  SCANSERVE_RETURN_IF_ERROR(ValidateScorerConfig(config));
  if (config.storage != StorageType::kFloat32) {
    return absl::InvalidArgumentError(
        "ReferenceScorer: only fp32 storage is supported (it is the fp32 oracle); use the cpu "
        "backend for bf16");
  }
  if (config.num_threads > 0) SetComputeThreads(config.num_threads);
  return std::unique_ptr<ReferenceScorer>(new ReferenceScorer(config));
}

int64_t ReferenceScorer::memory_bytes() const {
  int64_t bytes = 0;
  for (const auto& [rows, group] : groups_) {
    bytes += static_cast<int64_t>(group.values.size() * sizeof(float) +
                                  group.keys.size() * sizeof(int64_t));
  }
  return bytes;
}

void ReferenceScorer::RebuildColumns() {
  column_of_key_.clear();
  for (size_t i = 0; i < keys_.size(); ++i) column_of_key_[keys_[i]] = static_cast<int64_t>(i);
}

void ReferenceScorer::Erase(absl::Span<const int64_t> keys) {
  const int64_t d = config().dim;
  absl::flat_hash_set<int64_t> gone(keys.begin(), keys.end());
  absl::flat_hash_set<int64_t> touched;
  for (int64_t key : keys) touched.insert(rows_of_key_.at(key));
  for (int64_t rows : touched) {
    Group& g = groups_[rows];
    Group kept;
    for (size_t i = 0; i < g.keys.size(); ++i) {
      if (gone.contains(g.keys[i])) continue;
      kept.keys.push_back(g.keys[i]);
      const float* src = g.values.data() + i * rows * d;
      kept.values.insert(kept.values.end(), src, src + rows * d);
    }
    if (kept.keys.empty()) {
      groups_.erase(rows);
    } else {
      g = std::move(kept);
    }
  }
  std::vector<int64_t> remaining;
  remaining.reserve(keys_.size());
  for (int64_t key : keys_) {
    if (!gone.contains(key)) remaining.push_back(key);
  }
  keys_ = std::move(remaining);
  for (int64_t key : keys) rows_of_key_.erase(key);
  RebuildColumns();
}

absl::Status ReferenceScorer::AddImpl(absl::Span<const int64_t> keys,
                                      absl::Span<const ItemView> items) {
  const int64_t d = config().dim;
  try {
    std::vector<int64_t> replaced;
    for (int64_t key : keys) {
      if (Contains(key)) replaced.push_back(key);
    }
    if (!replaced.empty()) Erase(replaced);
    for (size_t i = 0; i < keys.size(); ++i) {
      Group& g = groups_[items[i].rows];
      g.keys.push_back(keys[i]);
      g.values.insert(g.values.end(), items[i].data, items[i].data + items[i].rows * d);
      rows_of_key_[keys[i]] = items[i].rows;
      column_of_key_[keys[i]] = static_cast<int64_t>(keys_.size());
      keys_.push_back(keys[i]);
    }
  } catch (const std::bad_alloc&) {
    return absl::ResourceExhaustedError("ReferenceScorer::Add: out of memory");
  }
  return absl::OkStatus();
}

absl::Status ReferenceScorer::RemoveImpl(absl::Span<const int64_t> keys) {
  Erase(keys);
  return absl::OkStatus();
}

absl::Status ReferenceScorer::ScoreAllImpl(absl::Span<const ItemView> queries,
                                           FloatMatrix* scores) const {
  const int64_t d = config().dim;
  const AttentionParams& p = config().attention;
  const bool t2i = p.cross_attn == CrossAttention::kTextToImage;
  const bool stored_images = config().stored_kind == ItemKind::kImage;
  // t2i: the caption's words attend over the image's regions; i2t: the regions over the words.
  const bool stored_is_context = t2i == stored_images;
  try {
    c10::InferenceMode guard;
    const auto opts = at::TensorOptions().dtype(at::kFloat);
    for (size_t j = 0; j < queries.size(); ++j) {
      // One query at a time, as the reference evaluation loops over captions.
      at::Tensor q = at::from_blob(const_cast<float*>(queries[j].data), {1, queries[j].rows, d},
                                   opts);
      for (const auto& [rows, group] : groups_) {
        const int64_t n = static_cast<int64_t>(group.keys.size());
        at::Tensor stored =
            at::from_blob(const_cast<float*>(group.values.data()), {n, rows, d}, opts);
        at::Tensor repeated = q.repeat({n, 1, 1});
        const at::Tensor& context = stored_is_context ? stored : repeated;
        const at::Tensor& attending = stored_is_context ? repeated : stored;
        // As xattn_score_*: both operands of the cosine made contiguous first.
        at::Tensor weighted = FuncAttention(attending, context, p).contiguous();
        at::Tensor row_sim =
            CosineSimilarity(attending.contiguous(), weighted, 2);  // (n, attending rows)
        at::Tensor pooled = Pool(row_sim, p).contiguous();
        const float* out = pooled.data_ptr<float>();
        for (int64_t i = 0; i < n; ++i) {
          scores->at(static_cast<int64_t>(j), column_of_key_.at(group.keys[i])) = out[i];
        }
      }
    }
  } catch (const std::exception& e) {
    return TorchErrorStatus("ReferenceScorer::ScoreAll", e);
  }
  return absl::OkStatus();
}

}  // namespace scanserve
