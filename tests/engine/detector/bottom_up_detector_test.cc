// Loading a detector directory: every broken piece is refused with a status naming it. (The
// network's numbers are checked against an independent PyTorch reference in
// tests/python/test_detector_parity.py.)
#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "engine/common/safetensors.h"
#include "engine/detector/bottom_up_network.h"
#include "engine/detector/detector_config.h"
#include "engine/detector/region_detector.h"
#include "tests/engine/detector/network_weights.h"

namespace scanserve {
namespace {

namespace fs = std::filesystem;

class DetectorDirTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() /
           ("scanserve_detector_dir_test_" + std::to_string(::testing::UnitTest::GetInstance()->random_seed()) +
            "_" + ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
    WriteConfig(R"({"format": "scanserve.bottom_up_detector", "format_version": 1,
                    "num_classes": 1601, "num_attributes": 401, "min_boxes": 10, "max_boxes": 100,
                    "conf_threshold": 0.2, "source": {"caffemodel": "test.caffemodel"}})");
    WriteLines("objects_vocab.txt", 1600);
    WriteLines("attributes_vocab.txt", 400);
  }
  void TearDown() override { fs::remove_all(dir_); }

  void WriteConfig(const std::string& json) { std::ofstream(dir_ / "detector.json") << json; }
  void WriteLines(const std::string& name, int n) {
    std::ofstream out(dir_ / name);
    for (int i = 0; i < n; ++i) out << "thing" << i << "\n";
  }
  absl::Status Load() {
    DetectorOptions options;
    options.detector_dir = dir_.string();
    return LoadBottomUpDetector(options).status();
  }
  // Every tensor of the network, all zero: a directory that loads (its numbers do not matter).
  void WriteZeroWeights() { ASSERT_TRUE(WriteBottomUpWeights((dir_ / "weights.safetensors").string()).ok()); }

  fs::path dir_;
};

TEST_F(DetectorDirTest, ConfigIsRead) {
  absl::StatusOr<BottomUpDetectorConfig> config = BottomUpDetectorConfig::Load(dir_.string());
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->min_boxes, 10);
  EXPECT_EQ(config->max_boxes, 100);
  EXPECT_EQ(config->source, "test.caffemodel");
}

TEST_F(DetectorDirTest, TheDirectorysSelectionPolicyAppliesUnlessOptionsOverrideIt) {
  WriteConfig(R"({"format": "scanserve.bottom_up_detector", "format_version": 1, "min_boxes": 5,
                  "max_boxes": 50, "conf_threshold": 0.35})");
  WriteZeroWeights();
  DetectorOptions options;
  options.detector_dir = dir_.string();
  absl::StatusOr<std::unique_ptr<RegionDetector>> detector = LoadBottomUpDetector(options);
  ASSERT_TRUE(detector.ok()) << detector.status();
  DetectorInfo info = (*detector)->Info();
  EXPECT_EQ(info.min_boxes, 5);
  EXPECT_EQ(info.max_boxes, 50);
  EXPECT_NE(info.summary.find("conf >= 0.35"), std::string::npos) << info.summary;
  EXPECT_EQ(info.warning, "");  // fp32

  options.min_boxes = 10;
  options.max_boxes = 20;
  options.conf_threshold = 0.5f;
  detector = LoadBottomUpDetector(options);
  ASSERT_TRUE(detector.ok()) << detector.status();
  info = (*detector)->Info();
  EXPECT_EQ(info.min_boxes, 10);
  EXPECT_EQ(info.max_boxes, 20);
  EXPECT_NE(info.summary.find("conf >= 0.5"), std::string::npos) << info.summary;
}

TEST_F(DetectorDirTest, MissingDirectoryIsNotFound) {
  DetectorOptions options;
  options.detector_dir = (dir_ / "absent").string();
  EXPECT_EQ(LoadBottomUpDetector(options).status().code(), absl::StatusCode::kNotFound);
}

TEST_F(DetectorDirTest, BadConfigsAreInvalid) {
  for (const char* json : {
           "not json",
           "[1, 2]",
           R"({"format": "something.else", "format_version": 1})",
           R"({"format": 7, "format_version": 1})",
           R"({"format": "scanserve.bottom_up_detector", "format_version": "1"})",
           R"({"format": "scanserve.bottom_up_detector", "format_version": 1, "max_boxes": "100"})",
           R"({"format": "scanserve.bottom_up_detector", "format_version": 1, "conf_threshold": null})",
           R"({"format": "scanserve.bottom_up_detector", "format_version": 1, "source": {"caffemodel": 3}})",
           R"({"format": "scanserve.bottom_up_detector", "format_version": 2})",
           R"({"format": "scanserve.bottom_up_detector", "format_version": 1, "num_classes": 81})",
           R"({"format": "scanserve.bottom_up_detector", "format_version": 1, "min_boxes": 50, "max_boxes": 10})",
           // Integers that an int would wrap to accepted values (2^32 + 1, 2^32 + 36).
           R"({"format": "scanserve.bottom_up_detector", "format_version": 4294967297})",
           R"({"format": "scanserve.bottom_up_detector", "format_version": 1, "min_boxes": 4294967332})",
           R"({"format": "scanserve.bottom_up_detector", "format_version": 1, "source": "x.caffemodel"})",
           R"({"format": "scanserve.bottom_up_detector", "format_version": 1, "conf_threshold": 1.5})",
           R"({"format": "scanserve.bottom_up_detector", "format_version": 1, "conf_threshold": -0.1})",
       }) {
    WriteConfig(json);
    const absl::Status status = Load();
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << json << ": " << status;
  }
}

TEST_F(DetectorDirTest, OptionsConfThresholdMustBeAConfidence) {
  // Checked before the weights are read: this directory has none, so a threshold that passed
  // would be NOT_FOUND instead.
  for (float threshold : {1.5f, std::nanf("")}) {
    DetectorOptions options;
    options.detector_dir = dir_.string();
    options.conf_threshold = threshold;
    const absl::Status status = LoadBottomUpDetector(options).status();
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << threshold << ": " << status;
    EXPECT_NE(status.message().find("conf_threshold"), std::string_view::npos) << status;
  }
  for (float threshold : {-1.0f, 0.0f, 1.0f}) {
    DetectorOptions options;
    options.detector_dir = dir_.string();
    options.conf_threshold = threshold;
    EXPECT_EQ(LoadBottomUpDetector(options).status().code(), absl::StatusCode::kNotFound) << threshold;
  }
}

TEST_F(DetectorDirTest, WrongVocabularyLengthIsInvalid) {
  WriteLines("objects_vocab.txt", 1599);
  const absl::Status status = Load();
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
  EXPECT_NE(status.message().find("1599"), std::string_view::npos) << status;
}

TEST_F(DetectorDirTest, MissingWeightsAreNotFound) {
  EXPECT_EQ(Load().code(), absl::StatusCode::kNotFound);
}

TEST_F(DetectorDirTest, WrongTensorShapeIsNamed) {
  std::map<std::string, Float32Tensor> tensors;
  tensors["conv1.weight"] = Float32Tensor{{64, 3, 5, 5}, std::vector<float>(64 * 3 * 25, 0.f)};
  ASSERT_TRUE(WriteSafetensors((dir_ / "weights.safetensors").string(), tensors).ok());
  const absl::Status status = Load();
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
  EXPECT_NE(status.message().find("conv1.weight"), std::string_view::npos) << status;
}

TEST_F(DetectorDirTest, MissingTensorIsNamed) {
  std::map<std::string, Float32Tensor> tensors;
  tensors["conv1.weight"] = Float32Tensor{{64, 3, 7, 7}, std::vector<float>(64 * 3 * 49, 0.f)};
  ASSERT_TRUE(WriteSafetensors((dir_ / "weights.safetensors").string(), tensors).ok());
  const absl::Status status = Load();
  EXPECT_FALSE(status.ok());
  EXPECT_NE(status.message().find("conv1.bias"), std::string_view::npos) << status;
}

TEST_F(DetectorDirTest, TruncatedWeightsFileIsRefused) {
  std::ofstream(dir_ / "weights.safetensors") << "\x10\0\0\0\0\0\0\0{\"a\":";
  const absl::Status status = Load();
  EXPECT_FALSE(status.ok());
  EXPECT_NE(status.code(), absl::StatusCode::kOk);
}

}  // namespace
}  // namespace scanserve
