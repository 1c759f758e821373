#include "engine/common/safetensors.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

namespace scanserve {
namespace {

namespace fs = std::filesystem;

class SafetensorsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    path_ = fs::temp_directory_path() / ("safetensors_test_" + std::to_string(::getpid()) + "_" +
                                         ::testing::UnitTest::GetInstance()->current_test_info()->name());
  }
  void TearDown() override { fs::remove(path_); }
  void WriteRaw(const std::string& header, const std::string& data) {
    std::ofstream out(path_, std::ios::binary);
    uint64_t len = header.size();
    out.write(reinterpret_cast<const char*>(&len), 8);
    out << header << data;
  }
  fs::path path_;
};

TEST_F(SafetensorsTest, RoundTripsFloat32Tensors) {
  std::map<std::string, Float32Tensor> tensors = {
      {"a", {{2, 3}, {1, 2, 3, 4, 5, 6}}},
      {"b.bias", {{1}, {-7.5f}}},
  };
  ASSERT_TRUE(WriteSafetensors(path_.string(), tensors).ok());
  auto file = SafetensorsFile::Read(path_.string());
  ASSERT_TRUE(file.ok()) << file.status();
  ASSERT_EQ(file->tensors().size(), 2u);
  EXPECT_EQ(*file->Float32("a", {2, 3}), tensors["a"].values);
  EXPECT_EQ(*file->Float32("b.bias", {1}), tensors["b.bias"].values);
  auto wrong = file->Float32("a", {3, 2});
  EXPECT_EQ(wrong.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(wrong.status().message().find("(2, 3)"), std::string::npos);
  EXPECT_EQ(file->Float32("c", {1}).status().code(), absl::StatusCode::kNotFound);
}

TEST_F(SafetensorsTest, ReadsMetadataAndRejectsOtherDtypesByName) {
  WriteRaw(R"({"__metadata__":{"k":"v"},"x":{"dtype":"F16","shape":[2],"data_offsets":[0,4]}})",
           std::string(4, '\0'));
  auto file = SafetensorsFile::Read(path_.string());
  ASSERT_TRUE(file.ok()) << file.status();
  auto s = file->Float32("x", {2}).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("F16"), std::string::npos);
}

TEST_F(SafetensorsTest, CorruptFilesAreDataLoss) {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"not json", ""},
      {R"({"x":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}})", std::string(8, '\0')},  // truncated
      {R"({"x":{"dtype":"F32","shape":[3],"data_offsets":[0,16]}})", std::string(16, '\0')},  // size mismatch
      {R"({"x":{"dtype":"F32","shape":[4]}})", std::string(16, '\0')},                       // no offsets
      {R"({"x":{"dtype":"Q7","shape":[4],"data_offsets":[0,16]}})", std::string(16, '\0')},  // unknown dtype
  };
  for (const auto& [header, data] : cases) {
    WriteRaw(header, data);
    EXPECT_EQ(SafetensorsFile::Read(path_.string()).status().code(), absl::StatusCode::kDataLoss) << header;
  }
  std::ofstream(path_, std::ios::binary | std::ios::trunc) << "abc";
  EXPECT_EQ(SafetensorsFile::Read(path_.string()).status().code(), absl::StatusCode::kDataLoss);
  std::ofstream(path_, std::ios::binary | std::ios::trunc) << std::string("\xff\xff\xff\xff\xff\xff\xff\x7f", 8);
  EXPECT_EQ(SafetensorsFile::Read(path_.string()).status().code(), absl::StatusCode::kDataLoss);
  fs::remove(path_);
  EXPECT_EQ(SafetensorsFile::Read(path_.string()).status().code(), absl::StatusCode::kNotFound);
}

}  // namespace
}  // namespace scanserve
