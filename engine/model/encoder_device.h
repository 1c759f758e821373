// EncoderDevice: where a ScanModel's text and region encoders run. Torch-free, so that engine
// options and the server can name a device without LibTorch.
#pragma once

#include <string>

namespace scanserve {

struct EncoderDevice {
  enum class Kind { kCpu, kCuda };

  Kind kind = Kind::kCpu;
  int cuda_index = 0;  // the CUDA device ordinal; unused for kCpu

  static EncoderDevice Cpu() { return {}; }
  static EncoderDevice Cuda(int index = 0) { return {Kind::kCuda, index}; }

  bool is_cuda() const { return kind == Kind::kCuda; }
  // "cpu", "cuda:0", ... (torch::Device's spelling).
  std::string ToString() const {
    return is_cuda() ? "cuda:" + std::to_string(cuda_index) : std::string("cpu");
  }
  bool operator==(const EncoderDevice& other) const {
    return kind == other.kind && (kind == Kind::kCpu || cuda_index == other.cuda_index);
  }
  bool operator!=(const EncoderDevice& other) const { return !(*this == other); }
};

}  // namespace scanserve
