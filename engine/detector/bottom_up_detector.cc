// BottomUpDetector: decode -> trunk (per image) -> head (all images' RoIs together) -> generate_tsv
// region selection -> labels.
#include <algorithm>
#include <cmath>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "engine/common/cpu_features.h"
#include "engine/detector/bottom_up_network.h"
#include "engine/detector/detector_config.h"
#include "engine/detector/image_preprocess.h"
#include "engine/detector/region_detector.h"
#include "engine/detector/region_selection.h"
#include "engine/io/genome_vocab.h"

namespace scanserve {
namespace {

constexpr int kNumObjects = 1600;
constexpr int kNumAttributes = 400;
constexpr float kMinAttributeConf = 0.1f;  // the bottom-up demos' rule for naming an attribute
// The network needs a few res4 cells on each side; a 3:1000 panorama scales to 1000 x 3.
constexpr int64_t kMinResizedSide = 32;

// Row argmax/max over columns 1.. (column 0 is background / "no attribute").
void ArgMaxSkippingFirst(const FloatMatrix& prob, int64_t row, int64_t* id, float* conf) {
  const float* p = prob.row(row);
  int64_t best = 1;
  for (int64_t c = 2; c < prob.cols; ++c) {
    if (p[c] > p[best]) best = c;
  }
  *id = best - 1;
  *conf = p[best];
}

class BottomUpDetector : public RegionDetector {
 public:
  BottomUpDetector(std::unique_ptr<BottomUpNetwork> network, GenomeVocabulary vocabulary,
                   RegionSelectionConfig selection, ImageLimits limits, std::string summary,
                   std::string warning)
      : network_(std::move(network)),
        vocabulary_(std::move(vocabulary)),
        selection_(selection),
        limits_(limits),
        summary_(std::move(summary)),
        warning_(std::move(warning)) {}

  absl::StatusOr<DetectedRegions> Detect(std::string_view image_bytes) const override {
    const std::string_view images[] = {image_bytes};
    std::vector<absl::StatusOr<DetectedRegions>> out = DetectBatch(images, nullptr);
    return std::move(out[0]);
  }

  std::vector<absl::StatusOr<DetectedRegions>> DetectBatch(
      absl::Span<const std::string_view> images, std::vector<DetectorTrace>* traces) const override {
    std::vector<absl::StatusOr<DetectedRegions>> results(images.size(),
                                                         absl::InternalError("not run"));
    if (traces != nullptr) traces->assign(images.size(), DetectorTrace());
    std::vector<DetectorInput> inputs(images.size());
    std::vector<TrunkOutput> trunks(images.size());
    std::vector<size_t> live;  // images that reached the head
    for (size_t i = 0; i < images.size(); ++i) {
      absl::StatusOr<DetectorInput> input = PrepareDetectorInput(images[i], limits_);
      if (!input.ok()) {
        results[i] = input.status();
        continue;
      }
      if (std::min(input->height, input->width) < kMinResizedSide) {
        results[i] = absl::InvalidArgumentError(absl::StrCat(
            "image of ", input->image_width, "x", input->image_height,
            " is too elongated: it scales to ", input->width, "x", input->height,
            " and the detector needs at least ", kMinResizedSide, " pixels on each side"));
        continue;
      }
      absl::StatusOr<TrunkOutput> trunk = network_->RunTrunk(*input);
      if (!trunk.ok()) {
        results[i] = trunk.status();
        continue;
      }
      if (trunk->proposals.boxes.empty()) {
        results[i] = absl::InvalidArgumentError("the detector found no region proposals in the image");
        continue;
      }
      inputs[i] = std::move(*input);
      trunks[i] = std::move(*trunk);
      live.push_back(i);
    }
    if (live.empty()) return results;

    std::vector<const TrunkOutput*> head_inputs;
    for (size_t i : live) head_inputs.push_back(&trunks[i]);
    absl::StatusOr<std::vector<HeadOutput>> heads = network_->RunHead(head_inputs);
    for (size_t j = 0; j < live.size(); ++j) {
      const size_t i = live[j];
      if (!heads.ok()) {
        results[i] = heads.status();
        continue;
      }
      trunks[i].res4.reset();
      results[i] = Select(inputs[i], trunks[i].proposals, (*heads)[j],
                          traces != nullptr ? &(*traces)[i] : nullptr);
    }
    return results;
  }

  absl::Status WarmUp() const override {
    // A smooth 800x600 pattern in the blob's value range: the shapes of a typical photo.
    DetectorInput input;
    input.image_height = input.height = 600;
    input.image_width = input.width = 800;
    input.scale = 1.0;
    input.chw.resize(3 * 600 * 800);
    for (size_t i = 0; i < input.chw.size(); ++i) {
      input.chw[i] = static_cast<float>(100.0 * std::sin(0.001 * static_cast<double>(i % 480000)) +
                                        20.0 * std::cos(0.05 * static_cast<double>(i % 800)));
    }
    absl::StatusOr<TrunkOutput> trunk = network_->RunTrunk(input);
    if (!trunk.ok()) return trunk.status();
    if (trunk->proposals.boxes.empty()) return absl::OkStatus();
    const TrunkOutput* images[] = {&*trunk};
    return network_->RunHead(images).status();
  }

  DetectorInfo Info() const override {
    DetectorInfo info;
    info.summary = summary_;
    info.device = network_->device();
    info.min_boxes = selection_.min_boxes;
    info.max_boxes = selection_.max_boxes;
    info.warning = warning_;
    return info;
  }

 private:
  absl::StatusOr<DetectedRegions> Select(const DetectorInput& input, const Proposals& proposals,
                                         HeadOutput& head, DetectorTrace* trace) const {
    const int64_t num_rois = static_cast<int64_t>(proposals.boxes.size());
    // Boxes in original pixels: float32 division by the float32 scale, as numpy divides a float32
    // array by a Python float.
    const float scale = static_cast<float>(input.scale);
    FloatMatrix boxes(num_rois, 4);
    for (int64_t r = 0; r < num_rois; ++r) {
      for (int k = 0; k < 4; ++k) boxes.at(r, k) = proposals.boxes[r][k] / scale;
    }
    RegionSelection selection = SelectRegions(boxes.data.data(), head.cls_prob.data.data(),
                                              static_cast<int>(num_rois),
                                              static_cast<int>(head.cls_prob.cols), selection_);
    DetectedRegions out;
    out.image_width = input.image_width;
    out.image_height = input.image_height;
    out.scale = scale;
    const int64_t k = static_cast<int64_t>(selection.keep.size());
    out.features = FloatMatrix(k, head.pool5.cols);
    for (int64_t j = 0; j < k; ++j) {
      const int64_t r = selection.keep[j];
      std::copy(head.pool5.row(r), head.pool5.row(r) + head.pool5.cols, out.features.row(j));
      out.boxes.push_back({boxes.at(r, 0), boxes.at(r, 1), boxes.at(r, 2), boxes.at(r, 3)});
      int64_t object = 0, attribute = 0;
      float object_conf = 0, attribute_conf = 0;
      ArgMaxSkippingFirst(head.cls_prob, r, &object, &object_conf);
      ArgMaxSkippingFirst(head.attr_prob, r, &attribute, &attribute_conf);
      out.object_ids.push_back(object);
      out.object_confs.push_back(object_conf);
      out.attribute_ids.push_back(attribute);
      out.attribute_confs.push_back(attribute_conf);
      absl::StatusOr<std::string> label =
          vocabulary_.Label(object, attribute, attribute_conf, kMinAttributeConf);
      out.labels.push_back(label.ok() ? *std::move(label) : std::string());
    }
    if (trace != nullptr) {
      trace->im_info = {static_cast<float>(input.height), static_cast<float>(input.width), scale};
      trace->input = FloatMatrix(3, input.height * input.width);
      trace->input.data = input.chw;
      trace->rois = FloatMatrix(num_rois, 4);
      for (int64_t r = 0; r < num_rois; ++r) {
        std::copy(proposals.boxes[r].begin(), proposals.boxes[r].end(), trace->rois.row(r));
      }
      trace->roi_scores = proposals.scores;
      trace->keep = selection.keep;
      trace->max_conf = selection.max_conf;
      trace->pool5 = std::move(head.pool5);
      trace->cls_prob = std::move(head.cls_prob);
      trace->attr_prob = std::move(head.attr_prob);
    }
    return out;
  }

  std::unique_ptr<BottomUpNetwork> network_;
  GenomeVocabulary vocabulary_;
  RegionSelectionConfig selection_;
  ImageLimits limits_;
  std::string summary_;
  std::string warning_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<RegionDetector>> LoadBottomUpDetector(const DetectorOptions& options) {
  absl::StatusOr<BottomUpDetectorConfig> config = BottomUpDetectorConfig::Load(options.detector_dir);
  if (!config.ok()) return config.status();
  absl::StatusOr<GenomeVocabulary> vocabulary =
      GenomeVocabulary::Load(options.detector_dir + "/objects_vocab.txt",
                             options.detector_dir + "/attributes_vocab.txt");
  if (!vocabulary.ok()) return vocabulary.status();
  if (vocabulary->num_objects() != kNumObjects || vocabulary->num_attributes() != kNumAttributes) {
    return absl::InvalidArgumentError(absl::StrCat(
        options.detector_dir, ": objects_vocab.txt / attributes_vocab.txt have ",
        vocabulary->num_objects(), " / ", vocabulary->num_attributes(), " lines; expected ",
        kNumObjects, " / ", kNumAttributes));
  }
  // Negative means the directory's; anything else must be a confidence (a threshold above 1 would
  // silently fall back to the min_boxes rule on every image).
  if (!(options.conf_threshold < 0) && !IsConfidenceThreshold(options.conf_threshold)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "detector conf_threshold ", options.conf_threshold,
        ": a confidence is in [0, 1] (or negative for detector.json's)"));
  }
  RegionSelectionConfig selection;
  selection.min_boxes = options.min_boxes > 0 ? options.min_boxes : config->min_boxes;
  selection.max_boxes = options.max_boxes > 0 ? options.max_boxes : config->max_boxes;
  selection.conf_threshold = options.conf_threshold >= 0 ? options.conf_threshold : config->conf_threshold;
  if (selection.min_boxes > selection.max_boxes || selection.max_boxes > 300) {
    return absl::InvalidArgumentError(absl::StrCat("detector boxes ", selection.min_boxes, "..",
                                                   selection.max_boxes,
                                                   ": need min <= max <= 300 (the RPN keeps 300)"));
  }
  BottomUpNetworkOptions network_options;
  network_options.use_cuda = options.device == DetectorDevice::kCuda;
  network_options.cuda_device = options.cuda_device;
  network_options.precision = options.precision;
  network_options.num_threads = options.num_threads;
  absl::StatusOr<std::unique_ptr<BottomUpNetwork>> network =
      BottomUpNetwork::Load(options.detector_dir + "/weights.safetensors", network_options);
  if (!network.ok()) return network.status();
  ImageLimits limits;
  limits.max_bytes = options.max_image_bytes;
  limits.max_pixels = options.max_image_pixels;
  const std::string summary = absl::StrCat(
      "bottom-up ResNet-101 Faster R-CNN (", config->source.empty() ? "converted" : config->source,
      "), ", selection.min_boxes, "-", selection.max_boxes, " boxes, conf >= ",
      selection.conf_threshold, ", on ", (*network)->device(), " in ",
      DetectorPrecisionName(options.precision));
  std::string warning = DetectorPrecisionCaveat(options.precision, network_options.use_cuda,
                                                DetectCpuVectorFeatures().bf16);
  return std::unique_ptr<RegionDetector>(new BottomUpDetector(
      *std::move(network), *std::move(vocabulary), selection, limits, summary, std::move(warning)));
}

}  // namespace scanserve
