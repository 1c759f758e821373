// ScanModel: one SCAN model loaded from a model directory (docs/model-format.md): the vocabulary and
// tokenizer, the text encoder (embedding + (bi)GRU), the region encoder (FC), and the attention
// hyper-parameters its scores use. The encoders run on the CPU or on one CUDA device; their inputs
// and outputs are host matrices either way. Torch stays behind this header.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include "absl/strings/string_view.h"
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "engine/common/matrix.h"
#include "engine/model/encoder_device.h"
#include "engine/model/model_config.h"
#include "engine/text/vocabulary.h"

namespace scanserve {

struct ModelLoadOptions {
  int num_threads = 0;  // intra-op (CPU) threads for the encoders; 0 = all cores
  // OpenMP threads for LibTorch's elementwise CPU ops while an encoder runs, on the calling thread
  // (openmp_threads.h); the products keep the BLAS's threads. 1: the caller alone, which is much
  // faster where the two pools share a few cores; 0: LibTorch's intra-op setting.
  int cpu_openmp_threads = 1;
  // Where the weights live and the encoders run. CUDA turns off TF32 for cuDNN process-wide, so
  // that the GRU keeps fp32 precision (equal to the CPU path up to float rounding).
  EncoderDevice device;
};

// The Encode* methods are const and may be called from several threads at once.
class ScanModel {
 public:
  // Loads config.json, vocab.json and weights.safetensors from `model_dir`, checking every tensor's
  // presence and shape against the config. Errors name the file and the tensor. A CUDA device
  // that this LibTorch or machine cannot provide is FAILED_PRECONDITION.
  static absl::StatusOr<std::unique_ptr<ScanModel>> Load(const std::string& model_dir,
                                                         const ModelLoadOptions& options = {});
  // Whether the encoders can run on CUDA here (a CUDA LibTorch and at least one visible device);
  // *why (optional) gets the reason when not.
  static bool CudaAvailable(std::string* why = nullptr);
  ~ScanModel();

  const ModelConfig& config() const { return config_; }
  const Vocabulary& vocabulary() const { return *vocabulary_; }
  const std::string& model_dir() const { return model_dir_; }
  const EncoderDevice& device() const { return device_; }

  // Caption text -> token ids, `<start> w1 .. wn <end>` (lower-cased, NLTK-tokenised, <unk> for
  // unknown words). An empty or blank caption is INVALID_ARGUMENT.
  absl::StatusOr<std::vector<int64_t>> CaptionToIds(absl::string_view caption) const;

  // Token ids -> word embeddings (n x embed_size). Ids out of range are INVALID_ARGUMENT.
  absl::StatusOr<FloatMatrix> EncodeCaption(absl::Span<const int64_t> ids) const;
  // Many captions in one padded, length-packed batch; equal to EncodeCaption on each.
  absl::StatusOr<std::vector<FloatMatrix>> EncodeCaptions(
      const std::vector<std::vector<int64_t>>& ids) const;

  // Region features (k x img_dim) -> region embeddings (k x embed_size).
  absl::StatusOr<FloatMatrix> EncodeRegions(const FloatMatrix& features) const;

 private:
  struct Weights;  // torch tensors, defined in scan_model.cc
  ScanModel() = default;

  std::string model_dir_;
  EncoderDevice device_;
  int cpu_openmp_threads_ = 1;
  ModelConfig config_;
  std::unique_ptr<Vocabulary> vocabulary_;
  std::unique_ptr<Weights> weights_;
};

}  // namespace scanserve
