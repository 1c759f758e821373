// ScanModel loading and encoding. Numerical parity with the reference SCAN code is checked by
// tests/python/test_engine_parity.py; these tests cover the model directory contract, errors and
// properties that must hold whatever the weights.
#include "engine/model/scan_model.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "engine/common/safetensors.h"
#include "tests/engine/test_util/tiny_model.h"

namespace scanserve {
namespace {

namespace fs = std::filesystem;

constexpr float kTol = 1e-5f;

using test_util::RandomValues;
using test_util::WriteTinyModel;

class ScanModelTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() /
           ("scan_model_test_" + std::to_string(::getpid()) + "_" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  fs::path dir_;
};

float RowNorm(const FloatMatrix& m, int64_t r) {
  double s = 0;
  for (int64_t c = 0; c < m.cols; ++c) s += double(m.at(r, c)) * m.at(r, c);
  return static_cast<float>(std::sqrt(s));
}

TEST_F(ScanModelTest, LoadsAndEncodesCaptionsWithUnitNormWords) {
  WriteTinyModel(dir_, {});
  auto model = ScanModel::Load(dir_.string());
  ASSERT_TRUE(model.ok()) << model.status();
  auto ids = (*model)->CaptionToIds("A dog runs on the grass.");
  ASSERT_TRUE(ids.ok()) << ids.status();
  ASSERT_EQ(ids->size(), 9u);  // <start> 6 words + "." <end>
  EXPECT_EQ(ids->front(), Vocabulary::kStart);
  EXPECT_EQ(ids->back(), Vocabulary::kEnd);
  auto emb = (*model)->EncodeCaption(*ids);
  ASSERT_TRUE(emb.ok()) << emb.status();
  ASSERT_EQ(emb->rows, 9);
  ASSERT_EQ(emb->cols, 8);
  for (int64_t r = 0; r < emb->rows; ++r) EXPECT_NEAR(RowNorm(*emb, r), 1.0f, 1e-5f);
}

TEST_F(ScanModelTest, BatchedEncodingEqualsOneAtATime) {
  for (bool bi : {true, false}) {
    for (int layers : {1, 2}) {
      fs::remove_all(dir_);
      WriteTinyModel(dir_, {.bi_gru = bi, .num_layers = layers});
      auto model = ScanModel::Load(dir_.string());
      ASSERT_TRUE(model.ok()) << model.status();
      // Lengths 1..9 and out of order: padding must not leak into any caption.
      std::vector<std::vector<int64_t>> batch = {{1, 4, 5, 2}, {1, 2}, {5}, {1, 4, 5, 6, 7, 8, 9, 10, 2}};
      auto together = (*model)->EncodeCaptions(batch);
      ASSERT_TRUE(together.ok()) << together.status();
      for (size_t i = 0; i < batch.size(); ++i) {
        auto alone = (*model)->EncodeCaption(batch[i]);
        ASSERT_TRUE(alone.ok());
        ASSERT_EQ((*together)[i].rows, static_cast<int64_t>(batch[i].size()));
        for (size_t j = 0; j < alone->data.size(); ++j) {
          EXPECT_NEAR((*together)[i].data[j], alone->data[j], kTol) << "bi=" << bi << " layers=" << layers;
        }
      }
    }
  }
}

TEST_F(ScanModelTest, RegionEncoderIsFcThenL2Norm) {
  for (bool no_imgnorm : {false, true}) {
    fs::remove_all(dir_);
    WriteTinyModel(dir_, {.no_imgnorm = no_imgnorm});
    auto model = ScanModel::Load(dir_.string());
    ASSERT_TRUE(model.ok()) << model.status();
    auto weights = SafetensorsFile::Read((dir_ / "weights.safetensors").string());
    ASSERT_TRUE(weights.ok());
    std::vector<float> w = *weights->Float32("img_enc.fc.weight", {8, 10});
    std::vector<float> b = *weights->Float32("img_enc.fc.bias", {8});
    std::mt19937 rng(3);
    FloatMatrix features(3, 10);
    features.data = RandomValues(30, rng);
    auto emb = (*model)->EncodeRegions(features);
    ASSERT_TRUE(emb.ok()) << emb.status();
    for (int64_t r = 0; r < 3; ++r) {
      std::vector<double> y(8);
      double norm = 0;
      for (int e = 0; e < 8; ++e) {
        y[e] = b[e];
        for (int c = 0; c < 10; ++c) y[e] += double(w[e * 10 + c]) * features.at(r, c);
        norm += y[e] * y[e];
      }
      const double scale = no_imgnorm ? 1.0 : 1.0 / (std::sqrt(norm) + 1e-8);
      for (int e = 0; e < 8; ++e) EXPECT_NEAR(emb->at(r, e), y[e] * scale, kTol);
    }
  }
}

TEST_F(ScanModelTest, RejectsBadInputs) {
  WriteTinyModel(dir_, {});
  auto model = ScanModel::Load(dir_.string());
  ASSERT_TRUE(model.ok()) << model.status();
  EXPECT_EQ((*model)->CaptionToIds("   ").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ((*model)->CaptionToIds("").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ((*model)->EncodeCaption(std::vector<int64_t>{1, 999, 2}).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ((*model)->EncodeCaption(std::vector<int64_t>{}).status().code(),
            absl::StatusCode::kInvalidArgument);
  FloatMatrix wrong_dim(2, 11);
  auto s = (*model)->EncodeRegions(wrong_dim).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("11-d"), std::string::npos) << s;
  FloatMatrix none(0, 10);
  EXPECT_EQ((*model)->EncodeRegions(none).status().code(), absl::StatusCode::kInvalidArgument);
  FloatMatrix nan(1, 10);
  nan.data[3] = std::nanf("");
  EXPECT_EQ((*model)->EncodeRegions(nan).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(ScanModelTest, BadModelDirectoriesNameWhatIsWrong) {
  EXPECT_EQ(ScanModel::Load((dir_ / "absent").string()).status().code(), absl::StatusCode::kNotFound);

  WriteTinyModel(dir_, {});
  // A tensor with the wrong shape.
  auto file = SafetensorsFile::Read((dir_ / "weights.safetensors").string());
  ASSERT_TRUE(file.ok());
  std::map<std::string, Float32Tensor> tensors;
  for (const auto& [name, info] : file->tensors()) {
    tensors[name] = Float32Tensor{info.shape, *file->Float32(name, info.shape)};
  }
  auto broken = tensors;
  broken["img_enc.fc.weight"] = Float32Tensor{{8, 9}, std::vector<float>(72)};
  ASSERT_TRUE(WriteSafetensors((dir_ / "weights.safetensors").string(), broken).ok());
  auto s = ScanModel::Load(dir_.string()).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("img_enc.fc.weight"), std::string::npos) << s;
  EXPECT_NE(s.message().find("(8, 9)"), std::string::npos) << s;

  // A missing tensor.
  broken = tensors;
  broken.erase("txt_enc.rnn.weight_hh_l0_reverse");
  ASSERT_TRUE(WriteSafetensors((dir_ / "weights.safetensors").string(), broken).ok());
  s = ScanModel::Load(dir_.string()).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kNotFound);
  EXPECT_NE(s.message().find("weight_hh_l0_reverse"), std::string::npos) << s;

  // A truncated weight file.
  ASSERT_TRUE(WriteSafetensors((dir_ / "weights.safetensors").string(), tensors).ok());
  const auto size = fs::file_size(dir_ / "weights.safetensors");
  fs::resize_file(dir_ / "weights.safetensors", size - 100);
  s = ScanModel::Load(dir_.string()).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss);
  EXPECT_NE(s.message().find("truncated"), std::string::npos) << s;

  // A config that names an unsupported attention norm, and one that is not JSON.
  ASSERT_TRUE(WriteSafetensors((dir_ / "weights.safetensors").string(), tensors).ok());
  std::ifstream in(dir_ / "config.json");
  std::string config((std::istreambuf_iterator<char>(in)), {});
  std::string l1 = config;
  l1.replace(l1.find("clipped_l2norm"), 14, "clipped_l1norm");
  std::ofstream(dir_ / "config.json") << l1;
  s = ScanModel::Load(dir_.string()).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("clipped_l1norm"), std::string::npos) << s;
  std::ofstream(dir_ / "config.json") << "{not json";
  EXPECT_EQ(ScanModel::Load(dir_.string()).status().code(), absl::StatusCode::kInvalidArgument);

  // A vocabulary that disagrees with the embedding.
  std::ofstream(dir_ / "config.json") << config;
  std::ofstream(dir_ / "vocab.json") << R"({"word2idx": {"<pad>": 0, "<start>": 1, "<end>": 2, "<unk>": 3},
    "idx2word": {"0": "<pad>", "1": "<start>", "2": "<end>", "3": "<unk>"}, "idx": 4})";
  s = ScanModel::Load(dir_.string()).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("vocab_size"), std::string::npos) << s;
}

TEST_F(ScanModelTest, UnusableCudaDeviceIsFailedPrecondition) {
  WriteTinyModel(dir_, {});
  std::string why;
  const bool cuda = ScanModel::CudaAvailable(&why);
  if (!cuda) EXPECT_FALSE(why.empty()) << "CudaAvailable says why not";
  // No machine has device 1023; without CUDA, device 0 fails as well.
  std::vector<int> ordinals = {1023};
  if (!cuda) ordinals.push_back(0);
  for (int ordinal : ordinals) {
    ModelLoadOptions options;
    options.device = EncoderDevice::Cuda(ordinal);
    const absl::Status s = ScanModel::Load(dir_.string(), options).status();
    EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
    EXPECT_NE(s.message().find("cuda:" + std::to_string(ordinal)), std::string::npos) << s;
    if (!cuda) EXPECT_NE(s.message().find("CUDA"), std::string::npos) << s;
  }
}

TEST_F(ScanModelTest, CpuDeviceIsTheDefault) {
  WriteTinyModel(dir_, {});
  auto model = ScanModel::Load(dir_.string());
  ASSERT_TRUE(model.ok()) << model.status();
  EXPECT_EQ((*model)->device().ToString(), "cpu");
  EXPECT_EQ(EncoderDevice::Cuda(3).ToString(), "cuda:3");
}

// Elementwise equality up to float rounding: outputs are unit-norm rows (or raw FC outputs of a
// similar scale), so the tolerance is relative to max(1, |expected|).
void ExpectClose(const FloatMatrix& actual, const FloatMatrix& expected, const std::string& what) {
  ASSERT_EQ(actual.rows, expected.rows) << what;
  ASSERT_EQ(actual.cols, expected.cols) << what;
  for (size_t i = 0; i < expected.data.size(); ++i) {
    ASSERT_NEAR(actual.data[i], expected.data[i], kTol * std::max(1.0f, std::fabs(expected.data[i])))
        << what << " element " << i;
  }
}

TEST_F(ScanModelTest, CudaEncodersEqualTheCpu) {
  std::string why;
  if (!ScanModel::CudaAvailable(&why)) GTEST_SKIP() << "no CUDA here: " << why;
  for (bool bi : {true, false}) {
    for (int layers : {1, 2}) {
      const std::string variant = "bi=" + std::to_string(bi) + " layers=" + std::to_string(layers);
      fs::remove_all(dir_);
      WriteTinyModel(dir_, {.bi_gru = bi, .num_layers = layers});
      auto cpu = ScanModel::Load(dir_.string());
      ASSERT_TRUE(cpu.ok()) << cpu.status();
      ModelLoadOptions options;
      options.device = EncoderDevice::Cuda(0);
      auto cuda = ScanModel::Load(dir_.string(), options);
      ASSERT_TRUE(cuda.ok()) << cuda.status();
      EXPECT_EQ((*cuda)->device().ToString(), "cuda:0");

      // Lengths 1..40, unsorted, so that packing reorders the batch.
      std::mt19937 rng(5);
      std::uniform_int_distribution<int64_t> token(0, (*cpu)->config().vocab_size - 1);
      std::vector<std::vector<int64_t>> batch;
      for (int length : {7, 1, 40, 2, 13, 40, 3}) {
        std::vector<int64_t> ids(static_cast<size_t>(length));
        for (int64_t& id : ids) id = token(rng);
        batch.push_back(std::move(ids));
      }
      auto expected = (*cpu)->EncodeCaptions(batch);
      ASSERT_TRUE(expected.ok()) << expected.status();
      auto together = (*cuda)->EncodeCaptions(batch);
      ASSERT_TRUE(together.ok()) << together.status();
      ASSERT_EQ(together->size(), batch.size());
      for (size_t i = 0; i < batch.size(); ++i) {
        ExpectClose((*together)[i], (*expected)[i], variant + " batched caption " + std::to_string(i));
        auto alone = (*cuda)->EncodeCaption(batch[i]);
        ASSERT_TRUE(alone.ok()) << alone.status();
        ExpectClose(*alone, (*expected)[i], variant + " single caption " + std::to_string(i));
      }

      for (int64_t regions : {1, 36, 100}) {
        FloatMatrix features(regions, (*cpu)->config().img_dim);
        features.data = RandomValues(regions * features.cols, rng);
        auto want = (*cpu)->EncodeRegions(features);
        ASSERT_TRUE(want.ok()) << want.status();
        auto got = (*cuda)->EncodeRegions(features);
        ASSERT_TRUE(got.ok()) << got.status();
        ExpectClose(*got, *want, variant + " " + std::to_string(regions) + " regions");
      }

      // Several threads at once, as the engine's searches and ingests call it.
      std::vector<std::vector<FloatMatrix>> per_thread(4);
      std::vector<std::thread> threads;
      for (size_t t = 0; t < per_thread.size(); ++t) {
        threads.emplace_back([&, t] {
          for (int rep = 0; rep < 5; ++rep) {
            auto out = (*cuda)->EncodeCaptions(batch);
            if (out.ok()) per_thread[t] = *std::move(out);
          }
        });
      }
      for (std::thread& thread : threads) thread.join();
      for (size_t t = 0; t < per_thread.size(); ++t) {
        ASSERT_EQ(per_thread[t].size(), batch.size()) << variant << " thread " << t << " failed";
        for (size_t i = 0; i < batch.size(); ++i) {
          ExpectClose(per_thread[t][i], (*expected)[i], variant + " thread " + std::to_string(t));
        }
      }
    }
  }
}

}  // namespace
}  // namespace scanserve
