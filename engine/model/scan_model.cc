// The SCAN encoders on LibTorch. Everything torch stays in this file.
#include "engine/model/scan_model.h"

#include <ATen/Context.h>
#include <ATen/Parallel.h>
#include <torch/cuda.h>
#include <torch/nn/modules/rnn.h>
#include <torch/nn/utils/rnn.h>

#include <algorithm>
#include <cmath>
#include <optional>
#include <thread>

#include "absl/strings/str_cat.h"
#include "engine/common/safetensors.h"
#include "engine/common/status_macros.h"
#include "engine/common/torch_status.h"
#include "engine/model/openmp_threads.h"

namespace scanserve {
namespace {

constexpr double kL2NormEps = 1e-8;  // SCAN's l2norm adds eps to the norm

// SCAN's l2norm along the last axis: x / (||x|| + eps).
torch::Tensor L2Norm(const torch::Tensor& x) {
  return x / (x.pow(2).sum(-1, /*keepdim=*/true).sqrt() + kL2NormEps);
}

FloatMatrix ToMatrix(const torch::Tensor& t) {
  torch::Tensor c = t.to(torch::kCPU, torch::kFloat32).contiguous();
  FloatMatrix m(c.size(0), c.size(1));
  std::copy(c.data_ptr<float>(), c.data_ptr<float>() + c.numel(), m.data.begin());
  return m;
}

// The torch device for `device`, or FAILED_PRECONDITION when this LibTorch or machine lacks it.
absl::StatusOr<torch::Device> ResolveDevice(const EncoderDevice& device) {
  if (!device.is_cuda()) return torch::Device(torch::kCPU);
  std::string why;
  if (!ScanModel::CudaAvailable(&why)) {
    return absl::FailedPreconditionError(
        absl::StrCat("text and region encoders: ", device.ToString(), " requested but ", why));
  }
  const int64_t count = static_cast<int64_t>(torch::cuda::device_count());
  if (device.cuda_index < 0 || device.cuda_index >= count) {
    return absl::FailedPreconditionError(absl::StrCat(
        "text and region encoders: ", device.ToString(), " requested but CUDA device ",
        device.cuda_index, " does not exist (", count, " visible)"));
  }
  return torch::Device(torch::kCUDA, static_cast<c10::DeviceIndex>(device.cuda_index));
}

}  // namespace

struct ScanModel::Weights {
  torch::Device device{torch::kCPU};  // where all of the below live
  torch::Tensor embed;   // (vocab, word_dim)
  torch::Tensor fc_weight;  // (embed, img_dim)
  torch::Tensor fc_bias;    // (embed)
  torch::nn::GRU gru{nullptr};
};

bool ScanModel::CudaAvailable(std::string* why) {
  try {
    if (!at::Context::hasCUDART()) {
      if (why != nullptr) *why = "this LibTorch was built without CUDA support";
      return false;
    }
    if (!torch::cuda::is_available()) {
      if (why != nullptr) *why = "no CUDA device is visible (driver, CUDA_VISIBLE_DEVICES)";
      return false;
    }
    return true;
  } catch (const std::exception& e) {
    if (why != nullptr) *why = absl::StrCat("CUDA cannot be initialised: ", e.what());
    return false;
  }
}

ScanModel::~ScanModel() = default;

absl::StatusOr<std::unique_ptr<ScanModel>> ScanModel::Load(const std::string& model_dir,
                                                           const ModelLoadOptions& options) {
  if (options.cpu_openmp_threads < 0) {
    return absl::InvalidArgumentError(absl::StrCat("cpu_openmp_threads must be >= 0, got ",
                                                   options.cpu_openmp_threads));
  }
  SCANSERVE_ASSIGN_OR_RETURN(const torch::Device device, ResolveDevice(options.device));
  std::unique_ptr<ScanModel> model(new ScanModel());
  model->model_dir_ = model_dir;
  model->device_ = options.device;
  model->cpu_openmp_threads_ = options.cpu_openmp_threads;
  SCANSERVE_ASSIGN_OR_RETURN(model->config_, ModelConfig::FromFile(model_dir + "/config.json"));
  const ModelConfig& c = model->config_;
  SCANSERVE_ASSIGN_OR_RETURN(Vocabulary vocab, Vocabulary::FromFile(model_dir + "/vocab.json"));
  if (vocab.size() != c.vocab_size) {
    return absl::InvalidArgumentError(absl::StrCat(model_dir, "/vocab.json has ", vocab.size(),
                                                   " words but config.json says vocab_size ",
                                                   c.vocab_size));
  }
  model->vocabulary_ = std::make_unique<Vocabulary>(std::move(vocab));
  SCANSERVE_ASSIGN_OR_RETURN(SafetensorsFile file,
                             SafetensorsFile::Read(model_dir + "/weights.safetensors"));

  // Torch's CPU pool starts with one thread here; size it once for the process.
  const int threads = options.num_threads > 0
                          ? options.num_threads
                          : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  if (at::get_num_threads() != threads) at::set_num_threads(threads);

  auto tensor = [&](const std::string& name, std::vector<int64_t> shape) -> absl::StatusOr<torch::Tensor> {
    SCANSERVE_ASSIGN_OR_RETURN(std::vector<float> values, file.Float32(name, shape));
    return torch::from_blob(values.data(), shape, torch::kFloat32).clone();
  };
  auto weights = std::make_unique<Weights>();
  SCANSERVE_ASSIGN_OR_RETURN(weights->embed, tensor("txt_enc.embed.weight", {c.vocab_size, c.word_dim}));
  SCANSERVE_ASSIGN_OR_RETURN(weights->fc_weight, tensor("img_enc.fc.weight", {c.embed_size, c.img_dim}));
  SCANSERVE_ASSIGN_OR_RETURN(weights->fc_bias, tensor("img_enc.fc.bias", {c.embed_size}));

  absl::Status gru_status = CatchTorch("building the GRU", [&]() -> absl::Status {
    weights->gru = torch::nn::GRU(torch::nn::GRUOptions(c.word_dim, c.embed_size)
                                      .num_layers(c.num_layers)
                                      .batch_first(true)
                                      .bidirectional(c.bi_gru));
    weights->gru->eval();
    torch::NoGradGuard no_grad;
    const int64_t directions = c.bi_gru ? 2 : 1;
    for (int layer = 0; layer < c.num_layers; ++layer) {
      const int64_t input = layer == 0 ? c.word_dim : c.embed_size * directions;
      for (int64_t dir = 0; dir < directions; ++dir) {
        const std::string suffix = absl::StrCat("_l", layer, dir == 1 ? "_reverse" : "");
        const std::vector<std::pair<std::string, std::vector<int64_t>>> params = {
            {"weight_ih" + suffix, {3 * c.embed_size, input}},
            {"weight_hh" + suffix, {3 * c.embed_size, c.embed_size}},
            {"bias_ih" + suffix, {3 * c.embed_size}},
            {"bias_hh" + suffix, {3 * c.embed_size}},
        };
        for (const auto& [name, shape] : params) {
          SCANSERVE_ASSIGN_OR_RETURN(torch::Tensor value, tensor("txt_enc.rnn." + name, shape));
          torch::Tensor* target = weights->gru->named_parameters().find(name);
          SCANSERVE_CHECK(target != nullptr);
          target->copy_(value);
        }
      }
    }
    return absl::OkStatus();
  });
  SCANSERVE_RETURN_IF_ERROR(gru_status);
  if (device.is_cuda()) {
    SCANSERVE_RETURN_IF_ERROR(CatchTorch("moving the encoders to CUDA", [&]() -> absl::Status {
      // cuDNN's RNN defaults to TF32 on Ampere and later (~1e-3 relative); fp32 keeps the GRU equal
      // to the CPU path. The flag is process-wide; a detector loaded later sets its own.
      at::globalContext().setAllowTF32CuDNN(false);
      weights->embed = weights->embed.to(device);
      weights->fc_weight = weights->fc_weight.to(device);
      weights->fc_bias = weights->fc_bias.to(device);
      weights->gru->to(device);  // also flattens the weights into cuDNN's layout
      weights->device = device;
      return absl::OkStatus();
    }));
  }
  model->weights_ = std::move(weights);
  return model;
}

absl::StatusOr<std::vector<int64_t>> ScanModel::CaptionToIds(absl::string_view caption) const {
  std::vector<int64_t> ids = vocabulary_->EncodeCaption(std::string_view(caption.data(), caption.size()));
  if (ids.size() <= 2) {
    return absl::InvalidArgumentError("caption is empty: it has no words after tokenisation");
  }
  return ids;
}

absl::StatusOr<FloatMatrix> ScanModel::EncodeCaption(absl::Span<const int64_t> ids) const {
  SCANSERVE_ASSIGN_OR_RETURN(std::vector<FloatMatrix> out,
                             EncodeCaptions({std::vector<int64_t>(ids.begin(), ids.end())}));
  return std::move(out[0]);
}

absl::StatusOr<std::vector<FloatMatrix>> ScanModel::EncodeCaptions(
    const std::vector<std::vector<int64_t>>& ids) const {
  if (ids.empty()) return std::vector<FloatMatrix>{};
  int64_t max_len = 0;
  for (size_t i = 0; i < ids.size(); ++i) {
    if (ids[i].empty()) return absl::InvalidArgumentError(absl::StrCat("caption ", i, " has no tokens"));
    for (int64_t id : ids[i]) {
      if (id < 0 || id >= config_.vocab_size) {
        return absl::InvalidArgumentError(absl::StrCat("caption ", i, ": token id ", id,
                                                       " is outside the vocabulary [0, ",
                                                       config_.vocab_size, ")"));
      }
    }
    max_len = std::max<int64_t>(max_len, static_cast<int64_t>(ids[i].size()));
  }
  // On the CPU the small elementwise ops run on this thread alone (by default) and the products on
  // the BLAS's threads: OpenMP threads beside those would contend for the cores (openmp_threads.h).
  std::optional<ScopedOpenMpThreads> caller_only;
  if (!device_.is_cuda() && cpu_openmp_threads_ > 0) caller_only.emplace(cpu_openmp_threads_);
  return CatchTorch("encoding captions", [&]() -> absl::StatusOr<std::vector<FloatMatrix>> {
    torch::NoGradGuard no_grad;
    const int64_t batch = static_cast<int64_t>(ids.size());
    torch::Tensor tokens = torch::zeros({batch, max_len}, torch::kInt64);  // padded with <pad>
    torch::Tensor lengths = torch::empty({batch}, torch::kInt64);
    for (int64_t i = 0; i < batch; ++i) {
      const auto& row = ids[static_cast<size_t>(i)];
      std::copy(row.begin(), row.end(), tokens[i].data_ptr<int64_t>());
      lengths[i] = static_cast<int64_t>(row.size());
    }
    // The tokens go to the device; the lengths stay on the host, where packing reads them.
    torch::Tensor words = torch::embedding(weights_->embed, tokens.to(weights_->device));
    // Packing runs each caption over its true length, so padding never reaches the backward pass.
    auto packed = torch::nn::utils::rnn::pack_padded_sequence(words, lengths, /*batch_first=*/true,
                                                              /*enforce_sorted=*/false);
    auto [packed_out, hidden] = weights_->gru->forward_with_packed_input(packed);
    torch::Tensor out = std::get<0>(
        torch::nn::utils::rnn::pad_packed_sequence(packed_out, /*batch_first=*/true));
    if (config_.bi_gru) {
      const int64_t e = config_.embed_size;
      out = (out.narrow(2, 0, e) + out.narrow(2, e, e)) / 2;
    }
    if (!config_.no_txtnorm) out = L2Norm(out);
    out = out.to(torch::kCPU);  // one transfer for the whole batch
    std::vector<FloatMatrix> result;
    result.reserve(ids.size());
    for (int64_t i = 0; i < batch; ++i) {
      result.push_back(ToMatrix(out[i].narrow(0, 0, static_cast<int64_t>(ids[static_cast<size_t>(i)].size()))));
    }
    return result;
  });
}

absl::StatusOr<FloatMatrix> ScanModel::EncodeRegions(const FloatMatrix& features) const {
  if (features.rows <= 0) return absl::InvalidArgumentError("an image needs at least one region");
  if (features.cols != config_.img_dim) {
    return absl::InvalidArgumentError(absl::StrCat("region features are ", features.cols,
                                                   "-d; this model expects ", config_.img_dim, "-d"));
  }
  if (static_cast<int64_t>(features.data.size()) != features.rows * features.cols) {
    return absl::InvalidArgumentError("region feature buffer does not match its shape");
  }
  for (size_t i = 0; i < features.data.size(); ++i) {
    if (!std::isfinite(features.data[i])) {
      return absl::InvalidArgumentError(absl::StrCat("region feature ", i / features.cols, " holds a ",
                                                     "non-finite value (NaN or infinity)"));
    }
  }
  std::optional<ScopedOpenMpThreads> caller_only;  // as for captions
  if (!device_.is_cuda() && cpu_openmp_threads_ > 0) caller_only.emplace(cpu_openmp_threads_);
  return CatchTorch("encoding regions", [&]() -> absl::StatusOr<FloatMatrix> {
    torch::NoGradGuard no_grad;
    torch::Tensor x = torch::from_blob(const_cast<float*>(features.data.data()),
                                       {features.rows, features.cols}, torch::kFloat32)
                          .to(weights_->device);
    torch::Tensor y = torch::addmm(weights_->fc_bias, x, weights_->fc_weight.t());
    if (!config_.no_imgnorm) y = L2Norm(y);
    return ToMatrix(y);
  });
}

}  // namespace scanserve
