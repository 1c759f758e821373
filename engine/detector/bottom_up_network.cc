#include "engine/detector/bottom_up_network.h"

#include <torch/torch.h>

#include <map>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "engine/common/safetensors.h"
#include "engine/common/torch_status.h"
#include "engine/detector/roi_pool.h"
#ifdef SCANSERVE_WITH_CUDA_KERNELS
#include "engine/detector/cuda_ops.h"
#endif

namespace scanserve {
namespace {

constexpr int kRoiPooledSize = 14;
constexpr float kRoiSpatialScale = 1.0f / 16;
constexpr int kNumAnchors = 12;

// One bottleneck block: 1x1 (mid) -> 3x3 (mid) -> 1x1 (out), with a projection shortcut when the
// width or stride changes. Caffe puts the stride on the first 1x1 (and on the projection).
struct BlockSpec {
  std::string name;  // "res4b7"
  int64_t in = 0, mid = 0, out = 0;
  int64_t stride = 1;
  int64_t dilation = 1;
  bool projection = false;
};

void AddStage(std::vector<BlockSpec>* blocks, int stage, int num_blocks, int64_t in, int64_t mid,
              int64_t stride, int64_t dilation, bool numbered_b) {
  for (int i = 0; i < num_blocks; ++i) {
    BlockSpec b;
    // res2 and res5 name blocks a, b, c; res3 and res4 a, b1, b2, ...
    if (i == 0) {
      b.name = absl::StrCat("res", stage, "a");
    } else if (numbered_b) {
      b.name = absl::StrCat("res", stage, "b", i);
    } else {
      b.name = absl::StrCat("res", stage, std::string(1, static_cast<char>('a' + i)));
    }
    b.in = i == 0 ? in : 4 * mid;
    b.mid = mid;
    b.out = 4 * mid;
    b.stride = i == 0 ? stride : 1;
    b.dilation = dilation;
    b.projection = i == 0;
    blocks->push_back(b);
  }
}

std::vector<BlockSpec> TrunkBlocks() {
  std::vector<BlockSpec> blocks;
  AddStage(&blocks, 2, 3, 64, 64, 1, 1, false);
  AddStage(&blocks, 3, 4, 256, 128, 2, 1, true);
  AddStage(&blocks, 4, 23, 512, 256, 2, 1, true);
  return blocks;
}

std::vector<BlockSpec> HeadBlocks() {
  std::vector<BlockSpec> blocks;
  AddStage(&blocks, 5, 3, 1024, 512, 1, 2, false);  // res5 at 14x14: stride 1, dilated 3x3
  return blocks;
}

}  // namespace

std::vector<std::pair<std::string, std::vector<int64_t>>> BottomUpNetwork::TensorShapes() {
  std::vector<std::pair<std::string, std::vector<int64_t>>> t;
  auto conv = [&](const std::string& name, int64_t out, int64_t in, int64_t k) {
    t.push_back({name + ".weight", {out, in, k, k}});
    t.push_back({name + ".bias", {out}});
  };
  conv("conv1", 64, 3, 7);
  std::vector<BlockSpec> blocks = TrunkBlocks();
  for (const BlockSpec& b : HeadBlocks()) blocks.push_back(b);
  for (const BlockSpec& b : blocks) {
    conv(b.name + "_branch2a", b.mid, b.in, 1);
    conv(b.name + "_branch2b", b.mid, b.mid, 3);
    conv(b.name + "_branch2c", b.out, b.mid, 1);
    if (b.projection) conv(b.name + "_branch1", b.out, b.in, 1);
  }
  conv("rpn_conv_3x3", 512, 1024, 3);
  conv("rpn_cls_score", 2 * kNumAnchors, 512, 1);
  conv("rpn_bbox_pred", 4 * kNumAnchors, 512, 1);
  t.push_back({"cls_score.weight", {1601, 2048}});
  t.push_back({"cls_score.bias", {1601}});
  t.push_back({"cls_embedding.weight", {1601, 256}});
  t.push_back({"fc_attr.weight", {512, 2304}});
  t.push_back({"fc_attr.bias", {512}});
  t.push_back({"attr_score.weight", {401, 512}});
  t.push_back({"attr_score.bias", {401}});
  return t;
}

namespace {

absl::Status TorchError(const char* stage, const std::exception& e) {
  return TorchErrorStatus(absl::StrCat("detector ", stage), e);
}

FloatMatrix ToMatrix(const torch::Tensor& t) {
  torch::Tensor cpu = t.to(torch::kCPU, torch::kFloat32).contiguous();
  FloatMatrix m(cpu.size(0), cpu.size(1));
  std::memcpy(m.data.data(), cpu.data_ptr<float>(), m.data.size() * sizeof(float));
  return m;
}

// A trunk output's res4 map: the tensor (C x H x W contiguous) and, where the RoI pooling runs on
// the CPU, its channels-innermost copy, made once per image.
struct Res4Map {
  torch::Tensor tensor;
  std::unique_ptr<RoiPooler> pooler;
};

}  // namespace

struct BottomUpNetwork::Impl {
  torch::Device device{torch::kCPU};
  // The convolutions' type (weights, biases, activations): fp32, or bf16 (DetectorPrecision).
  torch::ScalarType conv_type = torch::kFloat32;
  bool tf32 = false;

  // LibTorch's TF32 switches are process-wide: set this network's before each CUDA run, so that
  // two networks of different precisions in one process (scan_extract --compare-precision) each
  // run as asked. (Not meant for concurrent runs; the server offers no tf32 for that reason.)
  void SetTf32() const {
    if (!device.is_cuda()) return;
    at::globalContext().setAllowTF32CuDNN(tf32);
    at::globalContext().setAllowTF32CuBLAS(tf32);
  }
  std::map<std::string, torch::Tensor> weights;
  std::vector<BlockSpec> trunk_blocks = TrunkBlocks();
  std::vector<BlockSpec> head_blocks = HeadBlocks();
  int head_chunk_rois = 64;

  const torch::Tensor& W(const std::string& name) const { return weights.at(name); }

  torch::Tensor Conv(const torch::Tensor& x, const std::string& name, int64_t stride = 1,
                     int64_t pad = 0, int64_t dilation = 1) const {
    return torch::conv2d(x, W(name + ".weight"), W(name + ".bias"), {stride, stride}, {pad, pad},
                         {dilation, dilation});
  }

  torch::Tensor Block(const torch::Tensor& x, const BlockSpec& b) const {
    torch::Tensor y = torch::relu(Conv(x, b.name + "_branch2a", b.stride));
    y = torch::relu(Conv(y, b.name + "_branch2b", 1, b.dilation, b.dilation));
    y = Conv(y, b.name + "_branch2c");
    torch::Tensor shortcut = b.projection ? Conv(x, b.name + "_branch1", b.stride) : x;
    return torch::relu(y + shortcut);
  }

  torch::Tensor Res4(const torch::Tensor& image) const {
    torch::Tensor x = torch::relu(Conv(image, "conv1", 2, 3));
    // Caffe pooling: no padding, ceil-mode output size.
    x = torch::max_pool2d(x, {3, 3}, {2, 2}, {0, 0}, {1, 1}, /*ceil_mode=*/true);
    for (const BlockSpec& b : trunk_blocks) x = Block(x, b);
    return x;
  }

  // Caffe RoI max pooling of rois (n x 4, resized-image pixels, on the CPU) from res4 into
  // out (n x 1024 x 14 x 14, on the device).
  void RoiPool(const Res4Map& res4, const float* rois, int64_t n, torch::Tensor out) const {
    const torch::Tensor& map = res4.tensor;
    [[maybe_unused]] const int64_t channels = map.size(1), height = map.size(2), width = map.size(3);
    const int64_t bin_values = channels * kRoiPooledSize * kRoiPooledSize;
#ifdef SCANSERVE_WITH_CUDA_KERNELS
    if (map.is_cuda()) {
      torch::Tensor rois_device =
          torch::from_blob(const_cast<float*>(rois), {n, 4}, torch::kFloat32).to(map.device());
      const std::string error = RoiPoolCuda(map.data_ptr<float>(), channels, height, width,
                                            rois_device.data_ptr<float>(), n, kRoiSpatialScale,
                                            kRoiPooledSize, kRoiPooledSize, out.data_ptr<float>(),
                                            /*stream=*/nullptr);
      if (!error.empty()) throw std::runtime_error("RoI pooling kernel: " + error);
      return;
    }
#endif
    torch::Tensor pooled = out.is_cuda() ? torch::empty(out.sizes(), torch::kFloat32) : out;
    float* pooled_data = pooled.data_ptr<float>();
    at::parallel_for(0, n, 4, [&](int64_t begin, int64_t end) {
      res4.pooler->Pool(rois + 4 * begin, static_cast<int>(end - begin), kRoiSpatialScale,
                        kRoiPooledSize, kRoiPooledSize, pooled_data + begin * bin_values,
                        /*pool=*/nullptr);
    });
    if (out.is_cuda()) out.copy_(pooled);
  }
};

BottomUpNetwork::BottomUpNetwork(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
BottomUpNetwork::~BottomUpNetwork() = default;

absl::StatusOr<std::unique_ptr<BottomUpNetwork>> BottomUpNetwork::Load(
    const std::string& weights_path, const BottomUpNetworkOptions& options) {
  auto impl = std::make_unique<Impl>();
  try {
    if (options.use_cuda) {
      if (!torch::cuda::is_available()) {
        return absl::FailedPreconditionError(
            "detector device cuda: no CUDA device visible (or a CPU-only LibTorch)");
      }
      if (options.cuda_device < 0 || options.cuda_device >= static_cast<int>(torch::cuda::device_count())) {
        return absl::InvalidArgumentError(absl::StrCat("detector device cuda:", options.cuda_device,
                                                       " does not exist"));
      }
      impl->device = torch::Device(torch::kCUDA, static_cast<c10::DeviceIndex>(options.cuda_device));
      impl->tf32 = options.precision == DetectorPrecision::kTf32;
      impl->SetTf32();
    }
    if (options.precision == DetectorPrecision::kBf16) impl->conv_type = torch::kBFloat16;
    if (options.num_threads > 0 && at::get_num_threads() != options.num_threads) {
      at::set_num_threads(options.num_threads);
    }
    impl->head_chunk_rois = options.head_chunk_rois > 0 ? options.head_chunk_rois
                                                        : (options.use_cuda ? 1200 : 16);
    absl::StatusOr<SafetensorsFile> file = SafetensorsFile::Read(weights_path);
    if (!file.ok()) return file.status();
    for (const auto& [name, shape] : TensorShapes()) {
      absl::StatusOr<std::vector<float>> values = file->Float32(name, shape);
      if (!values.ok()) {
        return absl::InvalidArgumentError(
            absl::StrCat(weights_path, ": ", values.status().message()));
      }
      torch::Tensor w = torch::from_blob(values->data(), shape, torch::kFloat32).clone().to(impl->device);
      // The classifiers (plain matrices) stay fp32; convolution weights and biases take conv_type.
      const bool classifier = name.rfind("cls_", 0) == 0 || name.rfind("fc_attr", 0) == 0 ||
                              name.rfind("attr_score", 0) == 0;
      if (!classifier) w = w.to(impl->conv_type);
      // oneDNN and cuDNN run NHWC convolutions without reordering every layer's input and output.
      if (w.dim() == 4) w = w.contiguous(torch::MemoryFormat::ChannelsLast);
      impl->weights[name] = std::move(w);
    }
  } catch (const std::exception& e) {
    return TorchError("load", e);
  }
  return std::unique_ptr<BottomUpNetwork>(new BottomUpNetwork(std::move(impl)));
}

std::string BottomUpNetwork::device() const { return impl_->device.str(); }

absl::StatusOr<TrunkOutput> BottomUpNetwork::RunTrunk(const DetectorInput& input) const {
  const Impl& net = *impl_;
  try {
    c10::InferenceMode inference;
    net.SetTf32();
    torch::Tensor image =
        torch::from_blob(const_cast<float*>(input.chw.data()), {1, 3, input.height, input.width},
                         torch::kFloat32)
            .to(net.device, net.conv_type)
            .contiguous(torch::MemoryFormat::ChannelsLast);
    torch::Tensor res4 = net.Res4(image);
    torch::Tensor rpn = torch::relu(net.Conv(res4, "rpn_conv_3x3", 1, 1));
    torch::Tensor cls = net.Conv(rpn, "rpn_cls_score").to(torch::kFloat32);
    torch::Tensor deltas = net.Conv(rpn, "rpn_bbox_pred").to(torch::kFloat32);
    const int64_t h = cls.size(2), w = cls.size(3);
    // Caffe's reshape to (2, 12·H, W) and softmax over the first axis pairs channel a
    // (background) with 12 + a (foreground).
    torch::Tensor prob = torch::softmax(cls.contiguous().view({1, 2, kNumAnchors * h, w}), 1)
                             .view({1, 2 * kNumAnchors, h, w});
    torch::Tensor fg = prob.slice(1, kNumAnchors, 2 * kNumAnchors)
                           .permute({0, 2, 3, 1})
                           .contiguous()
                           .to(torch::kCPU);  // H x W x A
    torch::Tensor d = deltas.permute({0, 2, 3, 1}).contiguous().to(torch::kCPU);  // H x W x (A·4)
    TrunkOutput out;
    out.proposals = ComputeProposals(fg.data_ptr<float>(), d.data_ptr<float>(), static_cast<int>(h),
                                     static_cast<int>(w), static_cast<float>(input.height),
                                     static_cast<float>(input.width),
                                     static_cast<float>(input.scale));
    // RoI pooling reads res4 as a plain C x H x W fp32 array.
    auto map = std::make_shared<Res4Map>();
    map->tensor = res4.to(torch::kFloat32).contiguous();
    bool pool_on_cpu = !map->tensor.is_cuda();
#ifndef SCANSERVE_WITH_CUDA_KERNELS
    pool_on_cpu = true;
#endif
    if (pool_on_cpu) {
      torch::Tensor cpu = map->tensor.to(torch::kCPU).contiguous();
      map->pooler = std::make_unique<RoiPooler>(cpu.data_ptr<float>(), static_cast<int>(cpu.size(1)),
                                                static_cast<int>(cpu.size(2)),
                                                static_cast<int>(cpu.size(3)), /*pool=*/nullptr);
    }
    out.res4 = std::move(map);
    return out;
  } catch (const std::exception& e) {
    return TorchError("trunk", e);
  }
}

absl::StatusOr<std::vector<HeadOutput>> BottomUpNetwork::RunHead(
    absl::Span<const TrunkOutput* const> images) const {
  const Impl& net = *impl_;
  try {
    c10::InferenceMode inference;
    net.SetTf32();
    // Every (image, proposal) pair in order, run through res5 in chunks that may span images.
    std::vector<std::pair<size_t, int64_t>> rois;
    for (size_t i = 0; i < images.size(); ++i) {
      for (size_t r = 0; r < images[i]->proposals.boxes.size(); ++r) {
        rois.emplace_back(i, static_cast<int64_t>(r));
      }
    }
    const int64_t total = static_cast<int64_t>(rois.size());
    const auto opts = torch::TensorOptions().dtype(torch::kFloat32).device(net.device);
    torch::Tensor pool5 = torch::empty({total, 2048}, opts);
    for (int64_t begin = 0; begin < total; begin += net.head_chunk_rois) {
      const int64_t end = std::min<int64_t>(total, begin + net.head_chunk_rois);
      torch::Tensor pooled = torch::empty({end - begin, 1024, kRoiPooledSize, kRoiPooledSize}, opts);
      // One RoI-pooling call per image segment of the chunk.
      for (int64_t s = begin; s < end;) {
        const size_t image = rois[s].first;
        int64_t e = s;
        while (e < end && rois[e].first == image) ++e;
        const TrunkOutput& trunk = *images[image];
        const Res4Map& res4 = *static_cast<const Res4Map*>(trunk.res4.get());
        const float* boxes = trunk.proposals.boxes[rois[s].second].data();
        net.RoiPool(res4, boxes, e - s, pooled.narrow(0, s - begin, e - s));
        s = e;
      }
      torch::Tensor x = pooled.to(net.conv_type).contiguous(torch::MemoryFormat::ChannelsLast);
      for (const BlockSpec& b : net.head_blocks) x = net.Block(x, b);
      // Averaged in fp32, whatever the convolutions ran in.
      pool5.narrow(0, begin, end - begin).copy_(x.to(torch::kFloat32).mean({2, 3}));
    }
    torch::Tensor cls_score = torch::linear(pool5, net.W("cls_score.weight"), net.W("cls_score.bias"));
    torch::Tensor cls_prob = torch::softmax(cls_score, 1);
    // Attribute head: the embedding of the arg-max class (background included), beside pool5.
    // Caffe's ArgMax layer breaks ties toward the higher class index; torch's argmax toward the
    // lower, so take it over the reversed classes.
    const int64_t num_classes = cls_score.size(1);
    torch::Tensor predicted = (num_classes - 1) - cls_score.flip({1}).argmax(1);
    torch::Tensor embedded = net.W("cls_embedding.weight").index_select(0, predicted);
    torch::Tensor attr_hidden = torch::relu(torch::linear(torch::cat({pool5, embedded}, 1),
                                                          net.W("fc_attr.weight"), net.W("fc_attr.bias")));
    torch::Tensor attr_prob = torch::softmax(
        torch::linear(attr_hidden, net.W("attr_score.weight"), net.W("attr_score.bias")), 1);

    std::vector<HeadOutput> out(images.size());
    int64_t offset = 0;
    for (size_t i = 0; i < images.size(); ++i) {
      const int64_t n = static_cast<int64_t>(images[i]->proposals.boxes.size());
      out[i].pool5 = ToMatrix(pool5.narrow(0, offset, n));
      out[i].cls_prob = ToMatrix(cls_prob.narrow(0, offset, n));
      out[i].attr_prob = ToMatrix(attr_prob.narrow(0, offset, n));
      offset += n;
    }
    return out;
  } catch (const std::exception& e) {
    return TorchError("head", e);
  }
}

}  // namespace scanserve
