// SCAN training on LibTorch: the trainable model, the batched differentiable stacked cross attention,
// the contrastive loss, Adam, checkpoints and the training loop. Everything torch of the trainer is in
// this file (CI compiles on 2 cores; one torch translation unit keeps that bearable).
#include "engine/train/scan_trainer.h"

#include <ATen/Parallel.h>
#include <torch/cuda.h>
#include <torch/nn/modules/embedding.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/modules/rnn.h>
#include <torch/nn/utils/rnn.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <limits>
#include <optional>
#include <thread>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "engine/common/atomic_file.h"
#include "engine/common/file_read.h"
#include "engine/common/status_macros.h"
#include "engine/common/torch_status.h"
#include "engine/eval/similarity.h"
#include "engine/model/scan_model.h"
#include "engine/scoring/gemm.h"
#include "engine/train/epoch_order.h"
#include "engine/train/progress_bar.h"
#include "engine/train/train_checkpoint.h"
#include "engine/train/training_data.h"
#include "nlohmann/json.hpp"

namespace scanserve {
namespace {

namespace fs = std::filesystem;
using Json = nlohmann::json;

constexpr double kL2NormEps = 1e-8;  // SCAN's l2norm: eps ADDED to the norm
constexpr double kCosineEps = 1e-8;  // SCAN's cosine_similarity: eps CLAMPS the norm product
constexpr double kLeakySlope = 0.1;  // the reference's LeakyReLU(0.1) in clipped_* norms
constexpr double kAdamBeta1 = 0.9, kAdamBeta2 = 0.999, kAdamEps = 1e-8;  // torch.optim.Adam defaults
constexpr double kInf = std::numeric_limits<double>::infinity();

// ------------------------------------------------------------------------------------------------
// Files

absl::Status CreateDirectories(const std::string& dir) {
  std::error_code error;
  fs::create_directories(dir, error);
  if (error) return absl::PermissionDeniedError(absl::StrCat(dir, ": cannot create: ", error.message()));
  return absl::OkStatus();
}

// ------------------------------------------------------------------------------------------------
// The trainable model: SCAN's EncoderImagePrecomp (fc) and EncoderText (embed + GRU).

struct NamedParameter {
  std::string name;  // model-format name, e.g. "txt_enc.rnn.weight_hh_l0_reverse"
  std::vector<int64_t> shape;
  torch::Tensor tensor;
};

struct ScanNet {
  ModelConfig config;
  torch::nn::Linear fc{nullptr};
  torch::nn::Embedding embed{nullptr};
  torch::nn::GRU gru{nullptr};
  std::vector<NamedParameter> parameters;  // docs/model-format.md order
};

// Every tensor of the model format, with its shape, in a fixed order (also the optimiser's order).
std::vector<std::pair<std::string, std::vector<int64_t>>> ParameterShapes(const ModelConfig& c) {
  std::vector<std::pair<std::string, std::vector<int64_t>>> shapes = {
      {"img_enc.fc.weight", {c.embed_size, c.img_dim}},
      {"img_enc.fc.bias", {c.embed_size}},
      {"txt_enc.embed.weight", {c.vocab_size, c.word_dim}},
  };
  const int64_t directions = c.bi_gru ? 2 : 1;
  for (int layer = 0; layer < c.num_layers; ++layer) {
    const int64_t input = layer == 0 ? c.word_dim : c.embed_size * directions;
    for (int64_t dir = 0; dir < directions; ++dir) {
      const std::string suffix = absl::StrCat("_l", layer, dir == 1 ? "_reverse" : "");
      shapes.push_back({"txt_enc.rnn.weight_ih" + suffix, {3 * c.embed_size, input}});
      shapes.push_back({"txt_enc.rnn.weight_hh" + suffix, {3 * c.embed_size, c.embed_size}});
      shapes.push_back({"txt_enc.rnn.bias_ih" + suffix, {3 * c.embed_size}});
      shapes.push_back({"txt_enc.rnn.bias_hh" + suffix, {3 * c.embed_size}});
    }
  }
  return shapes;
}

// Builds the modules with SCAN's initialisation (torch's global generator, seeded by the caller):
// fc Xavier-uniform with zero bias (EncoderImagePrecomp.init_weights), embedding U(-0.1, 0.1)
// (EncoderText.init_weights), the GRU with torch's default U(-1/sqrt(H), 1/sqrt(H)).
absl::StatusOr<ScanNet> BuildNet(const ModelConfig& c, torch::Device device, torch::Dtype dtype) {
  return CatchTorch("building the model", [&]() -> absl::StatusOr<ScanNet> {
    ScanNet net;
    net.config = c;
    net.fc = torch::nn::Linear(torch::nn::LinearOptions(c.img_dim, c.embed_size));
    net.embed = torch::nn::Embedding(torch::nn::EmbeddingOptions(c.vocab_size, c.word_dim));
    net.gru = torch::nn::GRU(torch::nn::GRUOptions(c.word_dim, c.embed_size)
                                 .num_layers(c.num_layers)
                                 .batch_first(true)
                                 .bidirectional(c.bi_gru));
    {
      torch::NoGradGuard no_grad;
      const double r = std::sqrt(6.0) / std::sqrt(static_cast<double>(c.img_dim + c.embed_size));
      net.fc->weight.uniform_(-r, r);
      net.fc->bias.fill_(0);
      net.embed->weight.uniform_(-0.1, 0.1);
    }
    net.fc->to(device, dtype);
    net.embed->to(device, dtype);
    net.gru->to(device, dtype);

    auto gru_parameters = net.gru->named_parameters();
    for (auto& [name, shape] : ParameterShapes(c)) {
      torch::Tensor tensor;
      if (name == "img_enc.fc.weight") {
        tensor = net.fc->weight;
      } else if (name == "img_enc.fc.bias") {
        tensor = net.fc->bias;
      } else if (name == "txt_enc.embed.weight") {
        tensor = net.embed->weight;
      } else {
        const std::string gru_name = name.substr(std::string("txt_enc.rnn.").size());
        torch::Tensor* found = gru_parameters.find(gru_name);
        if (found == nullptr) return absl::InternalError(absl::StrCat("the GRU has no ", gru_name));
        tensor = *found;
      }
      if (tensor.sizes().vec() != shape) {
        return absl::InternalError(absl::StrCat(name, " has shape ", ShapeToString(tensor.sizes().vec()),
                                                ", expected ", ShapeToString(shape)));
      }
      net.parameters.push_back({name, shape, tensor});
    }
    return net;
  });
}

torch::Tensor ToTensor(const std::vector<float>& values, const std::vector<int64_t>& shape) {
  return torch::from_blob(const_cast<float*>(values.data()), shape, torch::kFloat32).clone();
}

Float32Tensor ToFloat32(const torch::Tensor& t) {
  torch::Tensor c = t.detach().to(torch::kCPU, torch::kFloat32).contiguous();
  Float32Tensor out;
  out.shape = c.sizes().vec();
  out.values.assign(c.data_ptr<float>(), c.data_ptr<float>() + c.numel());
  return out;
}

// Copies `prefix + name` of every parameter from a safetensors file (shapes checked).
absl::Status LoadTensors(const SafetensorsFile& file, const std::string& prefix,
                         const std::vector<NamedParameter>& parameters,
                         std::vector<torch::Tensor>* targets) {
  for (size_t i = 0; i < parameters.size(); ++i) {
    SCANSERVE_ASSIGN_OR_RETURN(std::vector<float> values,
                               file.Float32(prefix + parameters[i].name, parameters[i].shape));
    SCANSERVE_RETURN_IF_ERROR(CatchTorch("loading a tensor", [&]() -> absl::Status {
      torch::NoGradGuard no_grad;
      torch::Tensor& target = (*targets)[i];
      target.copy_(ToTensor(values, parameters[i].shape).to(target.device(), target.scalar_type()));
      return absl::OkStatus();
    }));
  }
  return absl::OkStatus();
}

std::vector<torch::Tensor> ParameterTensors(const ScanNet& net) {
  std::vector<torch::Tensor> out;
  for (const NamedParameter& p : net.parameters) out.push_back(p.tensor);
  return out;
}

// A model directory's config and weights into a new net (its vocabulary is read by the caller).
absl::StatusOr<ScanNet> LoadNet(const std::string& model_dir, torch::Device device, torch::Dtype dtype) {
  SCANSERVE_ASSIGN_OR_RETURN(ModelConfig config, ModelConfig::FromFile(model_dir + "/config.json"));
  SCANSERVE_ASSIGN_OR_RETURN(ScanNet net, BuildNet(config, device, dtype));
  SCANSERVE_ASSIGN_OR_RETURN(SafetensorsFile file, SafetensorsFile::Read(model_dir + "/weights.safetensors"));
  std::vector<torch::Tensor> targets = ParameterTensors(net);
  SCANSERVE_RETURN_IF_ERROR(LoadTensors(file, "", net.parameters, &targets));
  return net;
}

// config.json's text: the model's hyper-parameters and where the weights came from.
std::string ConfigText(const ModelConfig& model_config, const Json& source) {
  Json config = Json::parse(model_config.ToJson());
  config["source"] = source;
  return config.dump(2) + "\n";
}

// Writes config.json (with `source`), vocab.json and weights.safetensors, each atomically.
absl::Status ExportModel(const ScanNet& net, const Vocabulary& vocabulary, const Json& source,
                         const std::string& dir) {
  SCANSERVE_RETURN_IF_ERROR(CreateDirectories(dir));
  std::map<std::string, Float32Tensor> tensors;
  SCANSERVE_RETURN_IF_ERROR(CatchTorch("exporting the weights", [&]() -> absl::Status {
    for (const NamedParameter& p : net.parameters) tensors[p.name] = ToFloat32(p.tensor);
    return absl::OkStatus();
  }));
  SCANSERVE_RETURN_IF_ERROR(WriteFileAtomically(dir + "/vocab.json", vocabulary.ToJson()));
  SCANSERVE_RETURN_IF_ERROR(WriteFileAtomically(dir + "/config.json", ConfigText(net.config, source)));
  return WriteSafetensors(dir + "/weights.safetensors", tensors);
}

// ------------------------------------------------------------------------------------------------
// Encoders (the exact semantics of ScanModel, differentiable, batched)

torch::Tensor EncodeImages(const ScanNet& net, const torch::Tensor& features) {  // (B, k, img_dim)
  torch::nn::Linear fc = net.fc;  // a handle: the module's forward is non-const
  torch::Tensor y = fc->forward(features);
  if (net.config.no_imgnorm) return y;
  return y / (y.pow(2).sum(-1, /*keepdim=*/true).sqrt() + kL2NormEps);
}

struct CaptionBatch {
  torch::Tensor ids;      // (B, L) int64, <pad> beyond each length
  torch::Tensor lengths;  // (B) int64, on the CPU (packing wants it there)
  torch::Tensor mask;     // (B, L) 1 for real tokens, 0 for padding, the model's dtype
  int64_t max_length = 0;
};

CaptionBatch MakeCaptionBatch(const std::vector<const std::vector<int64_t>*>& captions,
                              torch::Device device, torch::Dtype dtype) {
  CaptionBatch batch;
  const int64_t n = static_cast<int64_t>(captions.size());
  for (const auto* ids : captions) batch.max_length = std::max<int64_t>(batch.max_length, ids->size());
  torch::Tensor ids = torch::zeros({n, batch.max_length}, torch::kInt64);
  torch::Tensor mask = torch::zeros({n, batch.max_length}, torch::kFloat32);
  batch.lengths = torch::empty({n}, torch::kInt64);
  for (int64_t i = 0; i < n; ++i) {
    const std::vector<int64_t>& row = *captions[static_cast<size_t>(i)];
    std::copy(row.begin(), row.end(), ids[i].data_ptr<int64_t>());
    mask[i].narrow(0, 0, static_cast<int64_t>(row.size())).fill_(1);
    batch.lengths[i] = static_cast<int64_t>(row.size());
  }
  batch.ids = ids.to(device);
  batch.mask = mask.to(device, dtype);
  return batch;
}

// (B, L, embed) word embeddings; the padding rows are exactly zero.
torch::Tensor EncodeCaptions(const ScanNet& net, const CaptionBatch& batch) {
  torch::nn::Embedding embed = net.embed;  // handles: the modules' forwards are non-const
  torch::nn::GRU gru = net.gru;
  torch::Tensor words = embed->forward(batch.ids);
  // Packing runs each caption over its true length: padding never reaches the backward direction.
  auto packed = torch::nn::utils::rnn::pack_padded_sequence(words, batch.lengths, /*batch_first=*/true,
                                                            /*enforce_sorted=*/false);
  auto packed_out = std::get<0>(gru->forward_with_packed_input(packed));
  torch::Tensor out = std::get<0>(torch::nn::utils::rnn::pad_packed_sequence(
      packed_out, /*batch_first=*/true, /*padding_value=*/0.0, batch.max_length));
  if (net.config.bi_gru) {
    const int64_t e = net.config.embed_size;
    out = (out.narrow(2, 0, e) + out.narrow(2, e, e)) / 2;
  }
  if (net.config.no_txtnorm) return out;
  // SCAN's l2norm. Padding rows get 1 added under the root: their value stays 0, and the gradient
  // of sqrt at 0 (infinite, NaN after the chain rule) never arises; real rows add exactly 0.
  torch::Tensor pad = (1 - batch.mask).unsqueeze(-1);
  return out / ((out.pow(2).sum(-1, /*keepdim=*/true) + pad).sqrt() + kL2NormEps);
}

// ------------------------------------------------------------------------------------------------
// Stacked cross attention for every (image, caption) pair of a batch, differentiable.
//
// Both directions are one computation with the roles swapped: t2i attends from the words (queries)
// over the regions (context), i2t from the regions over the words. With S the context-query products
// of a pair, W the attention weights and G the context's Gram matrix, the attended vector
// a_q = sum_c W[c,q] x_c never needs to be built: <y_q, a_q> = sum_c W[c,q] S[c,q] and
// |a_q|^2 = W_q^T G W_q (the spec's "cheaper exact form"). Everything is laid out context-major,
// (B_context, n_context, B_query, n_query), the GEMM's own output: no transposed copies.

// One side of the attention: items (B, n, d) whose padding rows are zero, and the mask (B, n) of
// real rows (undefined: no padding).
struct AttentionSide {
  torch::Tensor rows;
  torch::Tensor mask;
};

// The reference's raw_feature_norm of s (Bc, c, Bq, q) along the QUERY axis (3). For the l2 norms a
// padded context row (all zero) gets 1 added under the root: it stays zero, and sqrt's infinite
// derivative at 0 never arises (real rows add exactly 0).
torch::Tensor NormalizeAlongQueries(const torch::Tensor& s, RawFeatureNorm norm, const AttentionSide& context,
                                    const AttentionSide& query) {
  auto l2 = [&](const torch::Tensor& x) {
    torch::Tensor squares = (x * x).sum(3, /*keepdim=*/true);
    if (context.mask.defined()) {
      squares = squares + (1 - context.mask).view({context.mask.size(0), context.mask.size(1), 1, 1});
    }
    return x / (squares.sqrt() + kL2NormEps);
  };
  switch (norm) {
    case RawFeatureNorm::kClippedL2Norm:
      return l2(torch::leaky_relu(s, kLeakySlope));
    case RawFeatureNorm::kL2Norm:
      return l2(s);
    case RawFeatureNorm::kClipped:
      return torch::leaky_relu(s, kLeakySlope);
    case RawFeatureNorm::kNoNorm:
      return s;
    case RawFeatureNorm::kSoftmax:
      if (query.mask.defined()) {
        torch::Tensor padded = query.mask.view({1, 1, query.mask.size(0), query.mask.size(1)}) == 0;
        return torch::softmax(s.masked_fill(padded, -kInf), 3);
      }
      return torch::softmax(s, 3);
  }
  return s;
}

// Pools relevance (Bc, Bq, q) over the queries (last axis), padded queries excluded.
torch::Tensor Pool(const torch::Tensor& relevance, const torch::Tensor& query_mask, const AttentionParams& p) {
  const bool masked = query_mask.defined();
  torch::Tensor mask = masked ? query_mask.unsqueeze(0) : torch::Tensor();  // (1, Bq, q)
  switch (p.pooling) {
    case Pooling::kLogSumExp: {
      // log(sum exp(lambda2 R)) / lambda2, as the reference writes it (R is a cosine: no overflow).
      torch::Tensor e = (relevance * p.lambda_lse).exp();
      if (masked) e = e * mask;
      return e.sum(-1).log() / p.lambda_lse;
    }
    case Pooling::kMean:
      return masked ? (relevance * mask).sum(-1) / query_mask.sum(-1).unsqueeze(0) : relevance.mean(-1);
    case Pooling::kMax:
      return std::get<0>((masked ? relevance.masked_fill(mask == 0, -kInf) : relevance).max(-1));
    case Pooling::kSum:
      return (masked ? relevance * mask : relevance).sum(-1);
  }
  return relevance.sum(-1);
}

// Scores (B_context, B_query): every query item attends over every context item.
torch::Tensor AttendAndPool(const AttentionSide& context, const AttentionSide& query, const AttentionParams& p) {
  const int64_t bc = context.rows.size(0), c = context.rows.size(1), d = context.rows.size(2);
  const int64_t bq = query.rows.size(0), q = query.rows.size(1);
  // s[x, c, y, q] = <context x row c, query y row q>: every product of every pair in one GEMM.
  torch::Tensor s = torch::matmul(context.rows.reshape({bc * c, d}), query.rows.reshape({bq * q, d}).t())
                        .view({bc, c, bq, q});
  torch::Tensor a = NormalizeAlongQueries(s, p.raw_feature_norm, context, query) * p.lambda_softmax;
  if (context.mask.defined()) a = a.masked_fill(context.mask.view({bc, c, 1, 1}) == 0, -kInf);
  torch::Tensor w = torch::softmax(a, 1);  // over the context items
  torch::Tensor dot = (w * s).sum(1);      // <query row, attended>, (Bc, Bq, q)
  torch::Tensor gram = torch::bmm(context.rows, context.rows.transpose(1, 2));  // (Bc, c, c)
  torch::Tensor attended_sq = (w * torch::bmm(gram, w.view({bc, c, bq * q})).view({bc, c, bq, q})).sum(1);
  // |query row|; a padded (zero) row gets 1 under the root, then 0.
  torch::Tensor query_squares = (query.rows * query.rows).sum(-1);
  torch::Tensor query_norm = query.mask.defined() ? (query_squares + (1 - query.mask)).sqrt() * query.mask
                                                  : query_squares.sqrt();
  torch::Tensor relevance = dot / (query_norm.unsqueeze(0) * attended_sq.sqrt()).clamp_min(kCosineEps);
  return Pool(relevance, query.mask, p);
}

// Scores (Bi, Bj) of images (Bi, k, d) against captions (Bj, L, d) whose padding rows are zero;
// word_mask (Bj, L) is 1 at real tokens.
torch::Tensor BatchScores(const torch::Tensor& images, const torch::Tensor& words,
                          const torch::Tensor& word_mask, const AttentionParams& p) {
  const AttentionSide regions{images, torch::Tensor()};
  const AttentionSide caption_words{words, word_mask};
  if (p.cross_attn == CrossAttention::kTextToImage) return AttendAndPool(regions, caption_words, p);
  return AttendAndPool(caption_words, regions, p).t();
}

torch::Tensor ContrastiveLoss(const torch::Tensor& scores, const LossOptions& options) {
  const int64_t b = scores.size(0);
  torch::Tensor diagonal = scores.diag().view({b, 1});
  // Row i: image i against every caption (caption retrieval); column j: caption j against every image.
  torch::Tensor cost_captions = (options.margin + scores - diagonal).clamp_min(0);
  torch::Tensor cost_images = (options.margin + scores - diagonal.t()).clamp_min(0);
  torch::Tensor eye = torch::eye(b, torch::TensorOptions().dtype(torch::kBool).device(scores.device()));
  cost_captions = cost_captions.masked_fill(eye, 0);
  cost_images = cost_images.masked_fill(eye, 0);
  if (options.max_violation) {
    cost_captions = std::get<0>(cost_captions.max(1));
    cost_images = std::get<0>(cost_images.max(0));
  }
  return cost_captions.sum() + cost_images.sum();
}

// ------------------------------------------------------------------------------------------------
// Optimiser: torch.optim.Adam (no weight decay, no amsgrad) and clip_grad_norm, written out so that
// their state is ours to checkpoint, independent of LibTorch's serialisation.

struct AdamState {
  int64_t step = 0;
  std::vector<torch::Tensor> exp_avg;
  std::vector<torch::Tensor> exp_avg_sq;
};

AdamState MakeAdamState(const std::vector<torch::Tensor>& parameters) {
  AdamState state;
  for (const torch::Tensor& p : parameters) {
    state.exp_avg.push_back(torch::zeros_like(p));
    state.exp_avg_sq.push_back(torch::zeros_like(p));
  }
  return state;
}

// torch.optim.Adam's single-tensor update, operation for operation.
void AdamStep(const std::vector<torch::Tensor>& parameters, double lr, AdamState* state) {
  torch::NoGradGuard no_grad;
  ++state->step;
  const double bias_correction1 = 1 - std::pow(kAdamBeta1, static_cast<double>(state->step));
  const double bias_correction2 = 1 - std::pow(kAdamBeta2, static_cast<double>(state->step));
  const double step_size = lr / bias_correction1;
  const double bias_correction2_sqrt = std::sqrt(bias_correction2);
  for (size_t i = 0; i < parameters.size(); ++i) {
    const torch::Tensor& grad = parameters[i].grad();
    if (!grad.defined()) continue;
    state->exp_avg[i].mul_(kAdamBeta1).add_(grad, 1 - kAdamBeta1);
    state->exp_avg_sq[i].mul_(kAdamBeta2).addcmul_(grad, grad, 1 - kAdamBeta2);
    torch::Tensor denom = (state->exp_avg_sq[i].sqrt() / bias_correction2_sqrt).add_(kAdamEps);
    parameters[i].addcdiv_(state->exp_avg[i], denom, -step_size);
  }
}

// clip_grad_norm(parameters, max_norm): scales every gradient by max_norm / (total_norm + 1e-6)
// when that is below 1. Returns the total norm before clipping.
double ClipGradNorm(const std::vector<torch::Tensor>& parameters, double max_norm) {
  torch::NoGradGuard no_grad;
  std::vector<torch::Tensor> norms;
  for (const torch::Tensor& p : parameters) {
    if (p.grad().defined()) norms.push_back(p.grad().norm());
  }
  if (norms.empty()) return 0;
  const double total = torch::stack(norms).norm().item<double>();
  if (max_norm > 0) {
    const double coefficient = max_norm / (total + 1e-6);
    if (coefficient < 1) {
      for (const torch::Tensor& p : parameters) {
        if (p.grad().defined()) p.grad().mul_(coefficient);
      }
    }
  }
  return total;
}

void ZeroGrad(const std::vector<torch::Tensor>& parameters) {
  for (const torch::Tensor& p : parameters) {
    if (p.grad().defined()) p.grad().zero_();
  }
}

// ------------------------------------------------------------------------------------------------
// Batches

// Region features of the given images as (B, k, img_dim) on the device.
torch::Tensor GatherImages(const PrecompSplit& split, const std::vector<int64_t>& images,
                           torch::Device device, torch::Dtype dtype) {
  torch::Tensor all = torch::from_blob(const_cast<float*>(split.features.data()),
                                       {split.num_images, split.regions_per_image, split.img_dim},
                                       torch::kFloat32);
  torch::Tensor index = torch::from_blob(const_cast<int64_t*>(images.data()),
                                         {static_cast<int64_t>(images.size())}, torch::kInt64);
  return all.index_select(0, index).to(device, dtype);
}

// The batch's B x B scores: image of caption b against caption b', b, b' in `captions`.
torch::Tensor ForwardBatch(const ScanNet& net, const TrainingSplit& split, const std::vector<int64_t>& captions,
                           torch::Device device, torch::Dtype dtype) {
  std::vector<int64_t> images;
  std::vector<const std::vector<int64_t>*> ids;
  for (int64_t c : captions) {
    images.push_back(c / kCaptionsPerImage);
    ids.push_back(&split.caption_ids[static_cast<size_t>(c)]);
  }
  CaptionBatch batch = MakeCaptionBatch(ids, device, dtype);
  torch::Tensor regions = EncodeImages(net, GatherImages(split.data, images, device, dtype));
  torch::Tensor words = EncodeCaptions(net, batch);
  return BatchScores(regions, words, batch.mask, net.config.attention);
}

// ------------------------------------------------------------------------------------------------
// Checkpoints: checkpoint.json (the commit point, written last) names the state file
// state-<step>.safetensors (weights "model/<name>", Adam "adam.exp_avg/<name>",
// "adam.exp_avg_sq/<name>") next to vocab.json.

absl::Status WriteCheckpoint(const std::string& dir, const ScanNet& net, const AdamState& adam,
                             const TrainProgress& progress, const Json& settings, const Json& runtime) {
  std::map<std::string, Float32Tensor> tensors;
  SCANSERVE_RETURN_IF_ERROR(CatchTorch("checkpointing", [&]() -> absl::Status {
    for (size_t i = 0; i < net.parameters.size(); ++i) {
      const std::string& name = net.parameters[i].name;
      tensors["model/" + name] = ToFloat32(net.parameters[i].tensor);
      tensors["adam.exp_avg/" + name] = ToFloat32(adam.exp_avg[i]);
      tensors["adam.exp_avg_sq/" + name] = ToFloat32(adam.exp_avg_sq[i]);
    }
    return absl::OkStatus();
  }));
  TrainCheckpoint checkpoint;
  checkpoint.state_file = StateFileName(progress.global_step);
  checkpoint.adam_step = adam.step;
  checkpoint.progress = progress;
  checkpoint.settings = settings;
  checkpoint.runtime = runtime;
  SCANSERVE_RETURN_IF_ERROR(WriteSafetensors(dir + "/" + checkpoint.state_file, tensors));
  SCANSERVE_RETURN_IF_ERROR(
      WriteFileAtomically(dir + "/" + kTrainCheckpointFile, TrainCheckpointToJson(checkpoint)));
  // Older state files are garbage once checkpoint.json names the new one.
  std::error_code error;
  for (const auto& entry : fs::directory_iterator(dir, error)) {
    const std::string name = entry.path().filename().string();
    if (name != checkpoint.state_file && name.rfind("state-", 0) == 0) fs::remove(entry.path(), error);
  }
  return absl::OkStatus();
}

// ------------------------------------------------------------------------------------------------
// Dev evaluation through the serving path: export, ScanModel::Load, ComputeSimilarities.

absl::StatusOr<RetrievalMetrics> EvaluateModelDir(const std::string& model_dir, const PrecompSplit& dev,
                                                  int64_t dev_images, int threads, int intra_op_threads) {
  ModelLoadOptions load;
  load.num_threads = intra_op_threads;  // the encoders' LibTorch pool, as in training
  SCANSERVE_ASSIGN_OR_RETURN(std::unique_ptr<ScanModel> model, ScanModel::Load(model_dir, load));
  std::vector<RegionFeaturesView> images(static_cast<size_t>(dev_images));
  for (int64_t i = 0; i < dev_images; ++i) {
    images[static_cast<size_t>(i)] = {dev.image_features(i), dev.regions_per_image, dev.img_dim};
  }
  const std::vector<std::string> captions(dev.captions.begin(),
                                          dev.captions.begin() + dev_images * kCaptionsPerImage);
  SimilarityOptions options;
  options.num_threads = threads;
  SCANSERVE_ASSIGN_OR_RETURN(FloatMatrix sims, ComputeSimilarities({model.get()}, images, captions, options));
  return EvaluateRetrieval(sims);
}

std::string MetricsLine(const RetrievalMetrics& m) {
  return absl::StrFormat("i2t R@1 %.1f R@5 %.1f R@10 %.1f | t2i R@1 %.1f R@5 %.1f R@10 %.1f | rsum %.1f",
                         m.i2t.r1, m.i2t.r5, m.i2t.r10, m.t2i.r1, m.t2i.r5, m.t2i.r10, m.rsum);
}

absl::StatusOr<torch::Device> ResolveDevice(const std::string& name) {
  if (name == "cpu") return torch::Device(torch::kCPU);
  const bool cuda = torch::cuda::is_available();
  if (name == "cuda") {
    if (!cuda) return absl::FailedPreconditionError("--device cuda: no CUDA device (or a CPU-only LibTorch)");
    return torch::Device(torch::kCUDA);
  }
  if (name == "auto" || name.empty()) return torch::Device(cuda ? torch::kCUDA : torch::kCPU);
  return absl::InvalidArgumentError(absl::StrCat("--device: expected cpu, cuda or auto, got '", name, "'"));
}

// BLAS (GEMMs) gets `threads`; LibTorch's OpenMP pool (elementwise ops, reductions) gets
// `intra_op_threads`: libgomp busy-waits between parallel regions, and on a small or shared machine
// its spinning threads starve the BLAS threads (measured 3-5x slower on 2 busy cores).
void SetThreads(int threads, int intra_op_threads) {
  SetComputeThreads(threads);  // LibTorch's pool and the BLAS library
  const int intra = intra_op_threads > 0 ? intra_op_threads : ComputeThreads();
  if (at::get_num_threads() != intra) at::set_num_threads(intra);
}

absl::Status ValidateOptions(const TrainOptions& o) {
  auto bad = [](const std::string& what) { return absl::InvalidArgumentError(what); };
  if (o.data_dir.empty()) return bad("--data-dir is required");
  if (o.out_dir.empty()) return bad("--out is required");
  if (o.epochs < 1) return bad("--epochs must be >= 1");
  if (o.batch_size < 2) return bad("--batch-size must be >= 2 (the loss needs negatives)");
  if (o.lr_update < 1) return bad("--lr-update must be >= 1");
  if (!(o.learning_rate > 0)) return bad("--lr must be > 0");
  if (!(o.loss.margin >= 0)) return bad("--margin must be >= 0");
  if (o.checkpoint_every < 0) return bad("--checkpoint-every must be >= 0");
  if (o.dev_images < 0) return bad("--dev-images must be >= 0");
  if (!o.init_model.empty() && !o.vocab_path.empty()) {
    return bad("--vocab and --init-model exclude each other: the model brings its vocabulary");
  }
  if (o.warmup_sum_epochs < 0) return bad("--warmup-sum-epochs must be >= 0");
  const ModelConfig& m = o.model;
  if (o.init_model.empty()) {
    if (m.embed_size < 1 || m.word_dim < 1 || m.num_layers < 1) {
      return bad("--embed-size, --word-dim and --num-layers must be >= 1");
    }
    if (!(m.attention.lambda_softmax > 0)) return bad("--lambda-softmax must be > 0");
    if (m.attention.pooling == Pooling::kLogSumExp && !(m.attention.lambda_lse > 0)) {
      return bad("--lambda-lse must be > 0 for LogSumExp pooling");
    }
  }
  return absl::OkStatus();
}

// Everything the loop needs, prepared (and the data checked) before the first step.
struct Setup {
  TrainingSplit train;
  PrecompSplit dev;
  int64_t dev_images = 0;
  std::unique_ptr<Vocabulary> vocabulary;
  ModelConfig config;
  std::string checkpoint_dir;
  Json settings;
};

absl::StatusOr<Setup> Prepare(const TrainOptions& o) {
  Setup setup;
  setup.checkpoint_dir = o.checkpoint_dir.empty() ? o.out_dir + "-checkpoint" : o.checkpoint_dir;
  if (o.resume && !fs::exists(setup.checkpoint_dir + "/" + kTrainCheckpointFile)) {
    return absl::NotFoundError(absl::StrCat("--resume: ", setup.checkpoint_dir, "/", kTrainCheckpointFile,
                                            " does not exist (nothing to resume)"));
  }
  std::optional<ModelConfig> init_config;
  if (!o.init_model.empty()) {
    SCANSERVE_ASSIGN_OR_RETURN(init_config, ModelConfig::FromFile(o.init_model + "/config.json"));
  }
  // Data first: every problem is reported before anything is trained or written.
  SCANSERVE_ASSIGN_OR_RETURN(setup.train.data,
                             LoadAndCheckSplit(o.data_dir, o.train_split, init_config ? init_config->img_dim : 0));
  setup.train.name = o.train_split;
  SCANSERVE_ASSIGN_OR_RETURN(setup.dev, LoadAndCheckSplit(o.data_dir, o.dev_split, setup.train.data.img_dim));
  setup.dev_images = o.dev_images > 0 ? std::min(o.dev_images, setup.dev.num_images) : setup.dev.num_images;

  const std::string stored_vocab = setup.checkpoint_dir + "/vocab.json";
  std::string vocab_path = o.vocab_path;
  if (o.resume) {
    vocab_path = stored_vocab;  // the ids the checkpoint was trained with
  } else if (!o.init_model.empty()) {
    vocab_path = o.init_model + "/vocab.json";
  }
  SCANSERVE_ASSIGN_OR_RETURN(Vocabulary vocabulary,
                             MakeTrainingVocabulary(setup.train.data.captions, vocab_path, o.min_count));
  setup.vocabulary = std::make_unique<Vocabulary>(std::move(vocabulary));
  SCANSERVE_ASSIGN_OR_RETURN(setup.train.caption_ids,
                             CaptionIds(*setup.vocabulary, setup.train.data.captions,
                                        CaptionsPath(o.data_dir, o.train_split)));
  SCANSERVE_RETURN_IF_ERROR(CaptionIds(*setup.vocabulary, setup.dev.captions,
                                       CaptionsPath(o.data_dir, o.dev_split)).status());

  if (init_config) {
    setup.config = *init_config;
    if (setup.config.vocab_size != setup.vocabulary->size()) {
      return absl::InvalidArgumentError(absl::StrCat(o.init_model, ": vocab.json has ", setup.vocabulary->size(),
                                                     " words but config.json says ", setup.config.vocab_size));
    }
  } else {
    setup.config = o.model;
    setup.config.img_dim = setup.train.data.img_dim;
    setup.config.vocab_size = setup.vocabulary->size();
    setup.config.margin = o.loss.margin;
    setup.config.precomp_enc_type = "basic";
    if (setup.config.data_name.empty()) {
      setup.config.data_name = fs::path(o.data_dir).lexically_normal().filename().string();
      if (setup.config.data_name.empty()) {
        setup.config.data_name = fs::path(o.data_dir).lexically_normal().parent_path().filename().string();
      }
    }
  }
  setup.settings = ComparableSettings(o, setup.config, setup.train.data, setup.dev_images);
  return setup;
}

}  // namespace

// ------------------------------------------------------------------------------------------------

absl::StatusOr<TrainResult> TrainScan(const TrainOptions& o) {
  SCANSERVE_RETURN_IF_ERROR(ValidateOptions(o));
  SCANSERVE_ASSIGN_OR_RETURN(torch::Device device, ResolveDevice(o.device));
  SCANSERVE_ASSIGN_OR_RETURN(Setup setup, Prepare(o));
  SetThreads(o.threads, o.intra_op_threads);
  const int threads = ComputeThreads();
  const int intra_op_threads = at::get_num_threads();
  const Json runtime = {{"threads", threads}, {"intra_op_threads", intra_op_threads}, {"device", device.str()}};
  const torch::Dtype dtype = torch::kFloat32;

  // Model and optimiser state: fresh (seeded), from --init-model, or from the checkpoint.
  torch::manual_seed(o.seed);
  SCANSERVE_ASSIGN_OR_RETURN(ScanNet net, BuildNet(setup.config, device, dtype));
  std::vector<torch::Tensor> parameters = ParameterTensors(net);
  AdamState adam = MakeAdamState(parameters);
  TrainProgress state;
  SCANSERVE_RETURN_IF_ERROR(CreateDirectories(setup.checkpoint_dir));
  if (o.resume) {
    const std::string path = setup.checkpoint_dir + "/" + kTrainCheckpointFile;
    SCANSERVE_ASSIGN_OR_RETURN(std::string text, ReadWholeFile(path));
    SCANSERVE_ASSIGN_OR_RETURN(TrainCheckpoint checkpoint, ParseTrainCheckpoint(text, path));
    const std::string difference = SettingsDifference(checkpoint.settings, setup.settings);
    if (!difference.empty()) {
      return absl::FailedPreconditionError(absl::StrCat(
          "--resume: the command's settings differ from the checkpoint in ", setup.checkpoint_dir, " (",
          difference, "); resume with the same settings (only --epochs, the thread counts, --checkpoint-every "
          "and the output options may change)"));
    }
    if (checkpoint.runtime != runtime) {
      std::fprintf(stderr, "scan_train: warning: the checkpoint was written with %s, this run uses %s: "
                   "the result may differ from the uninterrupted run's in the last bits\n",
                   checkpoint.runtime.dump().c_str(), runtime.dump().c_str());
    }
    SCANSERVE_ASSIGN_OR_RETURN(SafetensorsFile file,
                               SafetensorsFile::Read(setup.checkpoint_dir + "/" + checkpoint.state_file));
    SCANSERVE_RETURN_IF_ERROR(LoadTensors(file, "model/", net.parameters, &parameters));
    SCANSERVE_RETURN_IF_ERROR(LoadTensors(file, "adam.exp_avg/", net.parameters, &adam.exp_avg));
    SCANSERVE_RETURN_IF_ERROR(LoadTensors(file, "adam.exp_avg_sq/", net.parameters, &adam.exp_avg_sq));
    adam.step = checkpoint.adam_step;
    state = std::move(checkpoint.progress);
    if (o.print_epochs) {
      std::printf("resuming %s at epoch %d, iteration %lld (step %lld)\n", setup.checkpoint_dir.c_str(),
                  state.epoch + 1, static_cast<long long>(state.iteration),
                  static_cast<long long>(state.global_step));
    }
  } else {
    if (fs::exists(setup.checkpoint_dir + "/" + kTrainCheckpointFile)) {
      return absl::FailedPreconditionError(absl::StrCat(
          setup.checkpoint_dir, " already holds a checkpoint: pass --resume to continue it, or remove it"));
    }
    if (!o.init_model.empty()) {
      SCANSERVE_ASSIGN_OR_RETURN(SafetensorsFile file, SafetensorsFile::Read(o.init_model + "/weights.safetensors"));
      SCANSERVE_RETURN_IF_ERROR(LoadTensors(file, "", net.parameters, &parameters));
    }
    SCANSERVE_RETURN_IF_ERROR(WriteFileAtomically(setup.checkpoint_dir + "/vocab.json", setup.vocabulary->ToJson()));
  }

  TrainResult result;
  result.checkpoint_dir = setup.checkpoint_dir;
  for (EpochReport report : state.history) {
    report.seconds = report.dev_seconds = 0;  // times of this process only
    result.epochs.push_back(report);
  }
  if (o.print_epochs && !o.resume) {
    std::printf("training %s on %s/%s: %lld images, %lld captions; dev %s: %lld images; %s; %s\n",
                setup.config.Summary().c_str(), o.data_dir.c_str(), o.train_split.c_str(),
                static_cast<long long>(setup.train.data.num_images),
                static_cast<long long>(setup.train.data.captions.size()), o.dev_split.c_str(),
                static_cast<long long>(setup.dev_images), device.str().c_str(),
                absl::StrFormat("%d BLAS / %d intra-op thread(s)", threads, intra_op_threads).c_str());
    std::fflush(stdout);
  }

  const int64_t num_captions = static_cast<int64_t>(setup.train.caption_ids.size());
  const int64_t batches_per_epoch = (num_captions + o.batch_size - 1) / o.batch_size;
  const std::string candidate_dir = setup.checkpoint_dir + "/candidate";
  int64_t iterations_here = 0;
  auto stop_now = [&]() {
    return (o.stop_requested != nullptr && o.stop_requested->load()) ||
           (o.stop_after_iterations > 0 && iterations_here >= o.stop_after_iterations);
  };
  auto checkpoint = [&]() {
    return WriteCheckpoint(setup.checkpoint_dir, net, adam, state, setup.settings, runtime);
  };

  while (state.epoch < o.epochs) {
    const double lr = o.learning_rate * std::pow(0.1, state.epoch / o.lr_update);
    LossOptions loss_options = o.loss;
    if (state.epoch < o.warmup_sum_epochs) loss_options.max_violation = false;
    const std::vector<int64_t> order = EpochOrder(num_captions, o.seed, state.epoch);
    ProgressBar bar(o.show_progress, state.epoch + 1, o.epochs, batches_per_epoch, state.iteration);
    const auto epoch_start = std::chrono::steady_clock::now();
    while (state.iteration < batches_per_epoch) {
      if (stop_now()) {
        bar.Finish();
        SCANSERVE_RETURN_IF_ERROR(checkpoint());
        result.interrupted = true;
        result.iterations = state.global_step;
        result.best_rsum = state.best_rsum;
        result.best_epoch = state.best_epoch;
        return result;
      }
      const int64_t begin = state.iteration * o.batch_size;
      const std::vector<int64_t> captions(order.begin() + begin,
                                          order.begin() + std::min(num_captions, begin + o.batch_size));
      absl::StatusOr<double> loss = CatchTorch("training step", [&]() -> absl::StatusOr<double> {
        ZeroGrad(parameters);
        torch::Tensor scores = ForwardBatch(net, setup.train, captions, device, dtype);
        torch::Tensor loss_tensor = ContrastiveLoss(scores, loss_options);
        loss_tensor.backward();
        ClipGradNorm(parameters, o.grad_clip);
        AdamStep(parameters, lr, &adam);
        return loss_tensor.item<double>();
      });
      if (!loss.ok()) return loss.status();
      if (!std::isfinite(*loss)) {
        return absl::InternalError(absl::StrCat("the loss became ", *loss, " at epoch ", state.epoch + 1,
                                                ", iteration ", state.iteration));
      }
      ++state.iteration;
      ++state.global_step;
      ++iterations_here;
      state.epoch_loss_sum += *loss;
      ++state.epoch_batches;
      bar.Update(state.iteration, *loss, static_cast<int64_t>(captions.size()));
      if (o.checkpoint_every > 0 && state.global_step % o.checkpoint_every == 0 &&
          state.iteration < batches_per_epoch) {
        SCANSERVE_RETURN_IF_ERROR(checkpoint());
      }
    }
    bar.Finish();
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - epoch_start).count();

    // Evaluate on dev through the serving path; keep the model when its rsum is the best so far.
    const Json source = {{"trainer", "scan_train"}, {"epoch", state.epoch + 1}, {"Eiters", state.global_step}};
    const auto dev_start = std::chrono::steady_clock::now();
    SCANSERVE_RETURN_IF_ERROR(ExportModel(net, *setup.vocabulary, source, candidate_dir));
    SCANSERVE_ASSIGN_OR_RETURN(RetrievalMetrics dev, EvaluateModelDir(candidate_dir, setup.dev, setup.dev_images, threads, intra_op_threads));
    SetThreads(o.threads, o.intra_op_threads);  // the scorer sets LibTorch's pool to its own count
    EpochReport report;
    report.epoch = state.epoch + 1;
    report.mean_loss = state.epoch_batches > 0 ? state.epoch_loss_sum / static_cast<double>(state.epoch_batches) : 0;
    report.dev = dev;
    report.seconds = seconds;
    report.dev_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - dev_start).count();
    report.best = dev.rsum > state.best_rsum;
    if (report.best) {
      state.best_rsum = dev.rsum;
      state.best_epoch = report.epoch;
      // The dev score is known only now: the kept model's config.json records it.
      Json best_source = source;
      best_source["best_rsum"] = dev.rsum;
      SCANSERVE_RETURN_IF_ERROR(
          WriteFileAtomically(candidate_dir + "/config.json", ConfigText(net.config, best_source)));
      SCANSERVE_RETURN_IF_ERROR(CreateDirectories(o.out_dir));
      for (const char* file : {"vocab.json", "weights.safetensors", "config.json"}) {
        SCANSERVE_RETURN_IF_ERROR(MoveFileDurably(candidate_dir + "/" + file, o.out_dir + "/" + file));
      }
    }
    if (o.print_epochs) {
      std::printf("epoch %d/%d: loss %.4f (%s) lr %.3g, %.0f s | dev %s, %.0f s%s\n", report.epoch, o.epochs,
                  report.mean_loss, loss_options.max_violation ? "hardest negatives" : "all negatives", lr,
                  seconds, MetricsLine(dev).c_str(), report.dev_seconds, report.best ? " (best)" : "");
      std::fflush(stdout);
    }
    result.epochs.push_back(report);
    state.history.push_back(report);
    ++state.epoch;
    state.iteration = 0;
    state.epoch_loss_sum = 0;
    state.epoch_batches = 0;
    SCANSERVE_RETURN_IF_ERROR(checkpoint());
  }
  std::error_code error;
  fs::remove_all(candidate_dir, error);
  result.iterations = state.global_step;
  result.best_rsum = state.best_rsum;
  result.best_epoch = state.best_epoch;
  return result;
}

absl::StatusOr<GradientCheckResult> ComputeLossAndGradients(const GradientCheckOptions& o) {
  SetThreads(o.threads, o.threads);
  const torch::Dtype dtype = o.float64 ? torch::kFloat64 : torch::kFloat32;
  const torch::Device device(torch::kCPU);
  SCANSERVE_ASSIGN_OR_RETURN(ScanNet net, LoadNet(o.model_dir, device, dtype));
  SCANSERVE_ASSIGN_OR_RETURN(Vocabulary vocabulary, Vocabulary::FromFile(o.model_dir + "/vocab.json"));
  TrainingSplit split;
  split.name = o.split;
  SCANSERVE_ASSIGN_OR_RETURN(split.data, LoadAndCheckSplit(o.data_dir, o.split, net.config.img_dim));
  SCANSERVE_ASSIGN_OR_RETURN(split.caption_ids,
                             CaptionIds(vocabulary, split.data.captions, CaptionsPath(o.data_dir, o.split)));
  std::vector<int64_t> captions = o.caption_indices;
  if (captions.empty()) {
    for (int64_t i = 0; i < std::min(o.batch_size, split.data.num_images); ++i) {
      captions.push_back(i * kCaptionsPerImage);
    }
  }
  for (int64_t c : captions) {
    if (c < 0 || c >= static_cast<int64_t>(split.caption_ids.size())) {
      return absl::InvalidArgumentError(absl::StrCat("caption index ", c, " is outside the split's ",
                                                     split.caption_ids.size(), " captions"));
    }
  }
  if (captions.size() < 2) return absl::InvalidArgumentError("the batch needs at least 2 pairs");
  return CatchTorch("computing gradients", [&]() -> absl::StatusOr<GradientCheckResult> {
    std::vector<torch::Tensor> parameters = ParameterTensors(net);
    ZeroGrad(parameters);
    torch::Tensor scores = ForwardBatch(net, split, captions, device, dtype);
    torch::Tensor loss = ContrastiveLoss(scores, o.loss);
    loss.backward();
    GradientCheckResult result;
    result.loss = loss.item<double>();
    torch::Tensor s = scores.detach().to(torch::kFloat32).contiguous();
    result.scores = FloatMatrix(s.size(0), s.size(1));
    std::copy(s.data_ptr<float>(), s.data_ptr<float>() + s.numel(), result.scores.data.begin());
    for (const NamedParameter& p : net.parameters) {
      torch::Tensor grad = p.tensor.grad();
      result.gradients[p.name] = ToFloat32(grad.defined() ? grad : torch::zeros_like(p.tensor));
    }
    if (o.steps > 0) {
      AdamState adam = MakeAdamState(parameters);
      for (int step = 0; step < o.steps; ++step) {
        ZeroGrad(parameters);
        ContrastiveLoss(ForwardBatch(net, split, captions, device, dtype), o.loss).backward();
        ClipGradNorm(parameters, o.grad_clip);
        AdamStep(parameters, o.learning_rate, &adam);
      }
      for (const NamedParameter& p : net.parameters) result.weights_after_steps[p.name] = ToFloat32(p.tensor);
    }
    return result;
  });
}

absl::StatusOr<FloatMatrix> TrainingSimilarity(const std::vector<FloatMatrix>& images,
                                               const std::vector<FloatMatrix>& captions,
                                               const AttentionParams& attention) {
  if (images.empty() || captions.empty()) return FloatMatrix(static_cast<int64_t>(images.size()), static_cast<int64_t>(captions.size()));
  const int64_t k = images[0].rows, d = images[0].cols;
  int64_t max_len = 0;
  for (const FloatMatrix& image : images) {
    if (image.rows != k || image.cols != d || k < 1) {
      return absl::InvalidArgumentError("TrainingSimilarity: every image needs the same k >= 1 regions of the same width");
    }
  }
  for (const FloatMatrix& caption : captions) {
    if (caption.cols != d || caption.rows < 1) {
      return absl::InvalidArgumentError("TrainingSimilarity: every caption needs >= 1 word of the images' width");
    }
    max_len = std::max(max_len, caption.rows);
  }
  return CatchTorch("TrainingSimilarity", [&]() -> absl::StatusOr<FloatMatrix> {
    torch::NoGradGuard no_grad;
    const int64_t bi = static_cast<int64_t>(images.size()), bj = static_cast<int64_t>(captions.size());
    torch::Tensor v = torch::empty({bi, k, d}, torch::kFloat32);
    for (int64_t i = 0; i < bi; ++i) {
      std::copy(images[i].data.begin(), images[i].data.end(), v[i].data_ptr<float>());
    }
    torch::Tensor e = torch::zeros({bj, max_len, d}, torch::kFloat32);
    torch::Tensor mask = torch::zeros({bj, max_len}, torch::kFloat32);
    for (int64_t j = 0; j < bj; ++j) {
      std::copy(captions[j].data.begin(), captions[j].data.end(), e[j].data_ptr<float>());
      mask[j].narrow(0, 0, captions[j].rows).fill_(1);
    }
    torch::Tensor scores = BatchScores(v, e, mask, attention).contiguous();
    FloatMatrix out(bi, bj);
    std::copy(scores.data_ptr<float>(), scores.data_ptr<float>() + scores.numel(), out.data.begin());
    return out;
  });
}

}  // namespace scanserve
