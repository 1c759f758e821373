// The detector network's bf16 path against its fp32 one, on random weights and a tiny input: the
// convolutions really run in bf16 (the features move), the pooled features stay close, and the
// classifiers (fp32 in both) still give distributions. Small enough for every CPU, including those
// where LibTorch emulates bf16 (the input is 48x64 and the head sees two RoIs). The full network
// against the independent PyTorch reference: tests/python/test_detector_parity.py.
#include "engine/detector/bottom_up_network.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <map>
#include <random>
#include <string>

#include "tests/engine/detector/network_weights.h"

namespace scanserve {
namespace {

namespace fs = std::filesystem;

class BottomUpNetworkPrecisionTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new fs::path(fs::temp_directory_path() /
                        ("bottom_up_network_test_" + std::to_string(::getpid())));
    fs::create_directories(*dir_);
    // He-initialised convolutions with the residual branches' last 1x1 damped (no batch norm
    // here: undamped, each block would double the activations' variance), zero biases, and
    // classifiers that keep their inputs' scale.
    std::mt19937 rng(7);
    std::normal_distribution<float> normal;
    const absl::Status written = WriteBottomUpWeights(
        Weights(), [&](const std::string& name, const std::vector<int64_t>& shape, std::vector<float>* values) {
          if (shape.size() == 1) return;  // biases stay zero
          int64_t fan_in = 1;
          for (size_t i = 1; i < shape.size(); ++i) fan_in *= shape[i];
          float stddev = std::sqrt((shape.size() == 4 ? 2.0f : 1.0f) / static_cast<float>(fan_in));
          if (name.find("_branch2c") != std::string::npos) stddev *= 0.2f;
          for (float& v : *values) v = stddev * normal(rng);
        });
    ASSERT_TRUE(written.ok()) << written;
  }
  static void TearDownTestSuite() {
    fs::remove_all(*dir_);
    delete dir_;
  }
  static std::string Weights() { return (*dir_ / "weights.safetensors").string(); }

  static std::unique_ptr<BottomUpNetwork> Load(DetectorPrecision precision) {
    BottomUpNetworkOptions options;
    options.precision = precision;
    options.num_threads = 2;
    absl::StatusOr<std::unique_ptr<BottomUpNetwork>> network = BottomUpNetwork::Load(Weights(), options);
    EXPECT_TRUE(network.ok()) << network.status();
    return network.ok() ? *std::move(network) : nullptr;
  }

  static DetectorInput TinyInput() {
    DetectorInput input;
    input.image_height = input.height = 48;
    input.image_width = input.width = 64;
    input.scale = 1.0;
    std::mt19937 rng(3);
    std::uniform_real_distribution<float> pixel(-100.0f, 100.0f);  // BGR minus the means
    input.chw.resize(3 * 48 * 64);
    for (float& v : input.chw) v = pixel(rng);
    return input;
  }

  static fs::path* dir_;
};

fs::path* BottomUpNetworkPrecisionTest::dir_ = nullptr;

double Cosine(const float* a, const float* b, int64_t n) {
  double ab = 0, aa = 0, bb = 0;
  for (int64_t i = 0; i < n; ++i) {
    ab += double(a[i]) * b[i];
    aa += double(a[i]) * a[i];
    bb += double(b[i]) * b[i];
  }
  return ab / std::sqrt(aa * bb);
}

double RelativeL2(const float* a, const float* b, int64_t n) {
  double diff = 0, norm = 0;
  for (int64_t i = 0; i < n; ++i) {
    diff += (double(a[i]) - b[i]) * (double(a[i]) - b[i]);
    norm += double(a[i]) * a[i];
  }
  return std::sqrt(diff / norm);
}

TEST_F(BottomUpNetworkPrecisionTest, Bf16FeaturesMoveButStayCloseToFp32) {
  std::unique_ptr<BottomUpNetwork> fp32 = Load(DetectorPrecision::kFloat32);
  std::unique_ptr<BottomUpNetwork> bf16 = Load(DetectorPrecision::kBf16);
  ASSERT_NE(fp32, nullptr);
  ASSERT_NE(bf16, nullptr);
  const DetectorInput input = TinyInput();
  absl::StatusOr<TrunkOutput> trunk32 = fp32->RunTrunk(input);
  absl::StatusOr<TrunkOutput> trunk16 = bf16->RunTrunk(input);
  ASSERT_TRUE(trunk32.ok()) << trunk32.status();
  ASSERT_TRUE(trunk16.ok()) << trunk16.status();
  ASSERT_FALSE(trunk32->proposals.boxes.empty());
  ASSERT_FALSE(trunk16->proposals.boxes.empty());
  // Both heads pool the same two RoIs (on so small an image the RPN's boxes, clipped to it, merge
  // into one), each from its own res4 map.
  Proposals rois;
  rois.boxes = {{0.0f, 0.0f, 31.0f, 23.0f}, {10.0f, 5.0f, 60.0f, 45.0f}};
  rois.scores = {0.9f, 0.8f};
  trunk32->proposals = rois;
  trunk16->proposals = rois;
  const TrunkOutput* images32[] = {&*trunk32};
  const TrunkOutput* images16[] = {&*trunk16};
  absl::StatusOr<std::vector<HeadOutput>> head32 = fp32->RunHead(images32);
  absl::StatusOr<std::vector<HeadOutput>> head16 = bf16->RunHead(images16);
  ASSERT_TRUE(head32.ok()) << head32.status();
  ASSERT_TRUE(head16.ok()) << head16.status();
  const HeadOutput& a = (*head32)[0];
  const HeadOutput& b = (*head16)[0];
  ASSERT_EQ(a.pool5.rows, 2);
  ASSERT_EQ(b.pool5.rows, 2);
  ASSERT_EQ(b.pool5.cols, 2048);
  for (int64_t r = 0; r < 2; ++r) {
    const float* x = a.pool5.data.data() + r * 2048;
    const float* y = b.pool5.data.data() + r * 2048;
    const double drift = RelativeL2(x, y, 2048);
    const double cosine = Cosine(x, y, 2048);
    std::printf("RoI %lld: pool5 bf16 vs fp32: cosine %.6f, relative L2 %.5f\n", static_cast<long long>(r),
                cosine, drift);
    EXPECT_GT(drift, 0.0) << "RoI " << r << ": bf16 features equal fp32's: the bf16 path did not run";
    EXPECT_LT(drift, 0.03) << "RoI " << r;  // ~0.004 measured; bf16 keeps 8 bits
    EXPECT_GT(cosine, 0.999) << "RoI " << r;
    for (const FloatMatrix* probs : {&b.cls_prob, &b.attr_prob}) {
      double sum = 0;
      for (int64_t c = 0; c < probs->cols; ++c) sum += probs->at(r, c);
      EXPECT_NEAR(sum, 1.0, 1e-4) << "RoI " << r;
    }
  }
}

}  // namespace
}  // namespace scanserve
