// FakeRegionDetector: a RegionDetector for server tests, honouring the contract of
// engine/detector/region_detector.h (per-image results, INVALID_ARGUMENT for bad bytes, thread-safe)
// without decoding anything: each image gets kRegions regions of `feature_dim` features derived
// deterministically from its bytes (feature[0][0] = FirstFeature(bytes), in [0, 1)), boxes and
// labels. Bytes starting with "bad" (or empty) are INVALID_ARGUMENT. Tests can close a gate so that
// detections block until it is opened, and read how often, and how batched, it was called.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include "absl/strings/str_cat.h"
#include "engine/detector/region_detector.h"

namespace scanserve {
namespace testing_fake {

class FakeRegionDetector final : public RegionDetector {
 public:
  static constexpr int kRegions = 3;

  // feature_dim: 8 matches FakeRetrievalEngine's img_dim (the real detector's is 2048).
  explicit FakeRegionDetector(int64_t feature_dim = 8) : feature_dim_(feature_dim) {}

  // FNV-1a of the bytes, mapped to [0, 1): the first feature of the first region.
  static float FirstFeature(std::string_view bytes) {
    uint64_t h = 1469598103934665603ULL;
    for (unsigned char c : bytes) {
      h ^= c;
      h *= 1099511628211ULL;
    }
    return static_cast<float>(h % 1000) / 1000.0f;
  }

  absl::StatusOr<DetectedRegions> Detect(std::string_view image_bytes) const override {
    ++detect_calls;
    WaitForGate();
    return DetectOne(image_bytes);
  }

  std::vector<absl::StatusOr<DetectedRegions>> DetectBatch(absl::Span<const std::string_view> images,
                                                           std::vector<DetectorTrace>* traces) const override {
    ++batch_calls;
    {
      std::lock_guard<std::mutex> lock(mu_);
      batch_sizes.push_back(static_cast<int>(images.size()));
    }
    WaitForGate();
    std::vector<absl::StatusOr<DetectedRegions>> results;
    for (std::string_view image : images) results.push_back(DetectOne(image));
    if (traces != nullptr) traces->assign(images.size(), DetectorTrace());
    return results;
  }

  DetectorInfo Info() const override {
    DetectorInfo info;
    info.summary = "fake detector (3 boxes)";
    info.device = "cpu";
    info.min_boxes = kRegions;
    info.max_boxes = kRegions;
    return info;
  }

  // Detections started after CloseGate() block (counted in `blocked`) until OpenGate().
  void CloseGate() {
    std::lock_guard<std::mutex> lock(mu_);
    gate_open_ = false;
  }
  void OpenGate() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      gate_open_ = true;
    }
    gate_.notify_all();
  }
  std::vector<int> BatchSizes() const {
    std::lock_guard<std::mutex> lock(mu_);
    return batch_sizes;
  }

  mutable std::atomic<int> detect_calls{0};
  mutable std::atomic<int> batch_calls{0};
  mutable std::atomic<int> images_detected{0};
  mutable std::atomic<int> blocked{0};  // detections waiting at the closed gate now

 private:
  void WaitForGate() const {
    std::unique_lock<std::mutex> lock(mu_);
    if (gate_open_) return;
    ++blocked;
    gate_.wait(lock, [this] { return gate_open_; });
    --blocked;
  }

  absl::StatusOr<DetectedRegions> DetectOne(std::string_view bytes) const {
    ++images_detected;
    if (bytes.empty()) return absl::InvalidArgumentError("the image is empty");
    if (bytes.substr(0, 3) == "bad") return absl::InvalidArgumentError("cannot decode the image: not a JPEG, PNG or WebP");
    DetectedRegions regions;
    regions.image_width = 640;
    regions.image_height = 480;
    regions.scale = 1.25f;
    regions.features = FloatMatrix(kRegions, feature_dim_);
    for (int64_t r = 0; r < kRegions; ++r) {
      for (int64_t c = 0; c < feature_dim_; ++c) regions.features.at(r, c) = 0.25f;
    }
    regions.features.at(0, 0) = FirstFeature(bytes);
    for (int r = 0; r < kRegions; ++r) {
      const float x = 10.0f * static_cast<float>(r);
      regions.boxes.push_back({x, x + 1, x + 100, x + 50});
      regions.object_ids.push_back(r);
      regions.object_confs.push_back(0.9f);
      regions.attribute_ids.push_back(r);
      regions.attribute_confs.push_back(0.5f);
      regions.labels.push_back(absl::StrCat("red thing", r));
    }
    return regions;
  }

  const int64_t feature_dim_;
  mutable std::mutex mu_;  // guards gate_open_, batch_sizes
  mutable std::condition_variable gate_;
  bool gate_open_ = true;
  mutable std::vector<int> batch_sizes;
};

}  // namespace testing_fake
}  // namespace scanserve
