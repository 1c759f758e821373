// The bottom-up-attention Faster R-CNN (Caffe ResNet-101, Visual Genome) in LibTorch: the trunk to
// res4, the RPN and proposal layer, Caffe RoI max pooling, the dilated res5 head, pool5, and the
// object and attribute classifiers. Torch stays inside bottom_up_network.cc; this header is
// torch-free. The network runs per image up to res4 (batch 1, unpadded, as the original) and over
// the RoIs of several images at once in the head (exact: the head is per RoI).
#pragma once

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "engine/common/matrix.h"
#include "engine/detector/detector_precision.h"
#include "engine/detector/image_preprocess.h"
#include "engine/detector/proposal_layer.h"

namespace scanserve {

struct BottomUpNetworkOptions {
  bool use_cuda = false;
  int cuda_device = 0;
  DetectorPrecision precision = DetectorPrecision::kFloat32;
  int num_threads = 0;  // intra-op threads on CPU; 0 = leave LibTorch's setting
  // RoIs per res5 pass: bounds activation memory (a 14x14x2048 fp32 map is 1.6 MB per RoI).
  // On the CPU, 16 keeps each activation under glibc's 32 MB mmap threshold, so chunks reuse heap
  // memory instead of faulting in fresh pages every time.
  int head_chunk_rois = 0;  // 0 = 16 on CPU, 1200 on CUDA
};

// One image after the trunk and the RPN.
struct TrunkOutput {
  Proposals proposals;  // resized-image pixels, descending objectness (R <= 300)
  // The res4 map (1 x 1024 x H/16 x W/16) on the network's device, type-erased: a torch tensor
  // owned by bottom_up_network.cc.
  std::shared_ptr<void> res4;
};

struct HeadOutput {
  FloatMatrix pool5;      // R x 2048
  FloatMatrix cls_prob;   // R x 1601
  FloatMatrix attr_prob;  // R x 401
};

class BottomUpNetwork {
 public:
  // Reads `weights_path` (weights.safetensors of a detector directory), checking every tensor's
  // name and shape (INVALID_ARGUMENT naming it), and moves them to the device.
  static absl::StatusOr<std::unique_ptr<BottomUpNetwork>> Load(const std::string& weights_path,
                                                              const BottomUpNetworkOptions& options);
  ~BottomUpNetwork();

  // Every tensor weights.safetensors holds (docs/detector-format.md), with its shape, in network
  // order.
  static std::vector<std::pair<std::string, std::vector<int64_t>>> TensorShapes();

  // Trunk, RPN and proposal layer for one preprocessed image. Thread-safe.
  absl::StatusOr<TrunkOutput> RunTrunk(const DetectorInput& input) const;

  // RoI pooling, res5, pool5 and the heads for every proposal of each image. result[i] belongs to
  // images[i]. Thread-safe.
  absl::StatusOr<std::vector<HeadOutput>> RunHead(absl::Span<const TrunkOutput* const> images) const;

  std::string device() const;

 private:
  struct Impl;
  explicit BottomUpNetwork(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace scanserve
