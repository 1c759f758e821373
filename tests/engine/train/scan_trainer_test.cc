// scan_train's library: the training-time attention against the serving scorer, bit-for-bit resume,
// the model directory it writes, and the data checks that run before training. Gradient parity with
// an independent PyTorch reference is tests/python/test_train_parity.py.
#include "engine/train/scan_trainer.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <unistd.h>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <random>
#include <string>
#include <vector>

#include "engine/common/npy.h"
#include "engine/common/safetensors.h"
#include "engine/eval/similarity.h"
#include "engine/model/scan_model.h"
#include "engine/train/training_data.h"
#include "nlohmann/json.hpp"

namespace scanserve {
namespace {

namespace fs = std::filesystem;

class TempDir {
 public:
  TempDir() {
    path_ = fs::temp_directory_path() /
            ("scan_train_test_" + std::to_string(::getpid()) + "_" + std::to_string(counter_++));
    fs::remove_all(path_);
    fs::create_directories(path_);
  }
  ~TempDir() { fs::remove_all(path_); }
  std::string str(const std::string& sub = "") const { return sub.empty() ? path_.string() : (path_ / sub).string(); }

 private:
  static inline int counter_ = 0;
  fs::path path_;
};

// ------------------------------------------------------------------------------------------------
// The training-time attention equals the serving scorer for every variant.

FloatMatrix RandomRows(int64_t rows, int64_t cols, std::mt19937& rng, bool normalise) {
  std::normal_distribution<float> dist(0.f, 1.f);
  FloatMatrix m(rows, cols);
  for (float& x : m.data) x = dist(rng);
  if (normalise) {
    for (int64_t r = 0; r < rows; ++r) {
      double sum = 0;
      for (int64_t c = 0; c < cols; ++c) sum += double(m.at(r, c)) * m.at(r, c);
      for (int64_t c = 0; c < cols; ++c) m.at(r, c) = float(m.at(r, c) / (std::sqrt(sum) + 1e-8));
    }
  }
  return m;
}

StackedItems Stack(const std::vector<FloatMatrix>& items, int64_t dim) {
  StackedItems out;
  out.offsets = {0};
  for (const FloatMatrix& m : items) out.offsets.push_back(out.offsets.back() + m.rows);
  out.rows = FloatMatrix(out.offsets.back(), dim);
  for (size_t i = 0; i < items.size(); ++i) {
    std::memcpy(out.rows.row(out.offsets[i]), items[i].data.data(), items[i].data.size() * sizeof(float));
  }
  return out;
}

TEST(TrainingSimilarityTest, EqualsTheServingScorerForEveryVariant) {
  std::mt19937 rng(3);
  const int64_t dim = 12, regions = 5;
  std::vector<FloatMatrix> images, captions;
  for (int i = 0; i < 4; ++i) images.push_back(RandomRows(regions, dim, rng, true));
  for (int j = 0; j < 6; ++j) captions.push_back(RandomRows(1 + (j * 3) % 8, dim, rng, true));  // 1..8 words
  ModelEmbeddings embeddings{Stack(images, dim), Stack(captions, dim)};

  for (CrossAttention cross : {CrossAttention::kTextToImage, CrossAttention::kImageToText}) {
    for (RawFeatureNorm norm : {RawFeatureNorm::kClippedL2Norm, RawFeatureNorm::kL2Norm, RawFeatureNorm::kClipped,
                                RawFeatureNorm::kNoNorm, RawFeatureNorm::kSoftmax}) {
      for (Pooling pooling : {Pooling::kLogSumExp, Pooling::kMean, Pooling::kMax, Pooling::kSum}) {
        AttentionParams p;
        p.cross_attn = cross;
        p.raw_feature_norm = norm;
        p.pooling = pooling;
        p.lambda_softmax = 4.f;
        p.lambda_lse = 5.f;
        SCOPED_TRACE(std::string(ToString(cross)) + " " + std::string(ToString(norm)) + " " +
                     std::string(ToString(pooling)));
        absl::StatusOr<FloatMatrix> trained = TrainingSimilarity(images, captions, p);
        ASSERT_TRUE(trained.ok()) << trained.status();
        SimilarityOptions options;
        options.num_threads = 1;
        absl::StatusOr<FloatMatrix> served = ScoreEmbeddings(embeddings, p, options);
        ASSERT_TRUE(served.ok()) << served.status();
        ASSERT_EQ(trained->rows, served->rows);
        ASSERT_EQ(trained->cols, served->cols);
        float scale = 1e-3f;
        for (float x : served->data) scale = std::max(scale, std::abs(x));
        for (size_t k = 0; k < served->data.size(); ++k) {
          EXPECT_NEAR(trained->data[k], served->data[k], 1e-5f * scale) << "pair " << k;
        }
      }
    }
  }
}

// ------------------------------------------------------------------------------------------------
// A tiny learnable data set: image i shows objects (i % 6) and (i / 6 % 4) + 6 as region features.

const std::vector<std::string> kObjects = {"dog", "cat", "car", "tree", "boat", "chair",
                                           "red", "blue", "green", "small"};

void WriteSplit(const std::string& dir, const std::string& split, int64_t images, int64_t regions,
                int64_t img_dim, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> noise(0.f, 0.3f);
  std::vector<float> prototypes(kObjects.size() * img_dim);
  std::mt19937 fixed(99);
  std::normal_distribution<float> unit(0.f, 1.f);
  for (float& x : prototypes) x = unit(fixed);
  std::vector<float> features(static_cast<size_t>(images * regions * img_dim));
  std::ofstream caps(dir + "/" + split + "_caps.txt");
  for (int64_t i = 0; i < images; ++i) {
    const int64_t a = (i + seed) % 6, b = 6 + (i / 6 + seed) % 4;
    for (int64_t r = 0; r < regions; ++r) {
      const int64_t obj = r % 2 == 0 ? a : b;
      for (int64_t d = 0; d < img_dim; ++d) {
        features[static_cast<size_t>((i * regions + r) * img_dim + d)] = prototypes[obj * img_dim + d] + noise(rng);
      }
    }
    for (int c = 0; c < 5; ++c) {
      caps << (c % 2 ? "a " : "the ") << kObjects[b] << " " << kObjects[a] << (c == 3 ? " here ." : "") << "\n";
    }
  }
  ASSERT_TRUE(WriteNpyFloat32(dir + "/" + split + "_ims.npy", {images, regions, img_dim}, features.data()).ok());
}

TrainOptions TinyOptions(const TempDir& tmp, const std::string& name) {
  TrainOptions o;
  o.data_dir = tmp.str("data");
  o.out_dir = tmp.str(name);
  o.min_count = 1;
  o.model.embed_size = 16;
  o.model.word_dim = 8;
  o.loss.max_violation = false;
  o.learning_rate = 2e-3;
  o.lr_update = 2;  // the lr step happens inside the run
  o.epochs = 3;
  o.batch_size = 16;  // 120 captions: 7 full batches and one of 8
  o.threads = 1;
  o.intra_op_threads = 1;
  o.show_progress = false;
  o.print_epochs = false;
  return o;
}

void WriteTinyData(const TempDir& tmp) {
  fs::create_directories(tmp.str("data"));
  WriteSplit(tmp.str("data"), "train", 24, 4, 16, 0);
  WriteSplit(tmp.str("data"), "dev", 8, 4, 16, 1);
}

// Every tensor of a safetensors file, raw bytes.
std::map<std::string, std::vector<float>> ReadAll(const std::string& path) {
  std::map<std::string, std::vector<float>> out;
  absl::StatusOr<SafetensorsFile> file = SafetensorsFile::Read(path);
  EXPECT_TRUE(file.ok()) << file.status();
  if (!file.ok()) return out;
  for (const auto& [name, info] : file->tensors()) out[name] = *file->Float32(name, info.shape);
  return out;
}

std::string StateFile(const std::string& checkpoint_dir) {
  std::ifstream in(checkpoint_dir + "/checkpoint.json");
  nlohmann::json json = nlohmann::json::parse(in);
  return checkpoint_dir + "/" + json["state_file"].get<std::string>();
}

void ExpectBitIdentical(const std::string& a, const std::string& b) {
  auto ta = ReadAll(a), tb = ReadAll(b);
  ASSERT_FALSE(ta.empty());
  ASSERT_EQ(ta.size(), tb.size());
  for (const auto& [name, values] : ta) {
    ASSERT_TRUE(tb.count(name)) << name;
    ASSERT_EQ(values.size(), tb[name].size()) << name;
    EXPECT_EQ(std::memcmp(values.data(), tb[name].data(), values.size() * sizeof(float)), 0)
        << name << " differs between " << a << " and " << b;
  }
}

class ResumeTest : public ::testing::Test {
 protected:
  void SetUp() override {
    WriteTinyData(tmp_);
    TrainOptions o = TinyOptions(tmp_, "full");
    absl::StatusOr<TrainResult> full = TrainScan(o);
    ASSERT_TRUE(full.ok()) << full.status();
    ASSERT_FALSE(full->interrupted);
    ASSERT_EQ(full->epochs.size(), 3u);
    full_ = *full;
  }

  // Trains with interruptions after the given iteration counts (each run resumes the previous one),
  // then to the end, and checks the result equals the uninterrupted run bit for bit.
  void InterruptAndResume(const std::string& name, const std::vector<int64_t>& stops,
                          int64_t checkpoint_every = 0) {
    TrainOptions o = TinyOptions(tmp_, name);
    o.checkpoint_every = checkpoint_every;
    for (size_t k = 0; k <= stops.size(); ++k) {
      o.resume = k > 0;
      o.stop_after_iterations = k < stops.size() ? stops[k] : 0;
      absl::StatusOr<TrainResult> run = TrainScan(o);
      ASSERT_TRUE(run.ok()) << run.status();
      EXPECT_EQ(run->interrupted, k < stops.size());
      if (k == stops.size()) {
        EXPECT_EQ(run->iterations, full_.iterations);
        EXPECT_EQ(run->best_epoch, full_.best_epoch);
        EXPECT_EQ(run->best_rsum, full_.best_rsum);
        ASSERT_EQ(run->epochs.size(), full_.epochs.size());
        for (size_t e = 0; e < run->epochs.size(); ++e) {
          EXPECT_EQ(run->epochs[e].mean_loss, full_.epochs[e].mean_loss) << "epoch " << e + 1;
          EXPECT_EQ(run->epochs[e].dev.rsum, full_.epochs[e].dev.rsum) << "epoch " << e + 1;
        }
      }
    }
    // Weights and Adam state of the last checkpoint, and the best model, bit for bit.
    ExpectBitIdentical(StateFile(tmp_.str(name + "-checkpoint")), StateFile(tmp_.str("full-checkpoint")));
    ExpectBitIdentical(tmp_.str(name + "/weights.safetensors"), tmp_.str("full/weights.safetensors"));
  }

  TempDir tmp_;
  TrainResult full_;
};

TEST_F(ResumeTest, AtAnEpochBoundary) { InterruptAndResume("boundary", {8}); }

TEST_F(ResumeTest, MidEpochTwice) { InterruptAndResume("mid", {11, 5}); }

TEST_F(ResumeTest, WithPeriodicCheckpoints) { InterruptAndResume("periodic", {13}, /*checkpoint_every=*/3); }

TEST_F(ResumeTest, TheBestModelLoadsAndTheRunIsReproducible) {
  absl::StatusOr<std::unique_ptr<ScanModel>> model = ScanModel::Load(tmp_.str("full"));
  ASSERT_TRUE(model.ok()) << model.status();
  EXPECT_EQ((*model)->config().embed_size, 16);
  EXPECT_EQ((*model)->config().img_dim, 16);
  EXPECT_EQ((*model)->vocabulary().IdOf("dog") > 3, true);
  std::ifstream in(tmp_.str("full/config.json"));
  nlohmann::json config = nlohmann::json::parse(in);
  EXPECT_EQ(config["source"]["trainer"], "scan_train");
  EXPECT_EQ(config["source"]["epoch"], full_.best_epoch);
  EXPECT_EQ(config["source"]["best_rsum"], full_.best_rsum);
  // The data is learnable: the run ends well above chance (8 dev images: chance rsum ~ 6 x 12.5 x 3).
  EXPECT_GT(full_.best_rsum, 300.0);

  // A second uninterrupted run is identical.
  TrainOptions again = TinyOptions(tmp_, "again");
  absl::StatusOr<TrainResult> run = TrainScan(again);
  ASSERT_TRUE(run.ok()) << run.status();
  ExpectBitIdentical(tmp_.str("again/weights.safetensors"), tmp_.str("full/weights.safetensors"));

  // ... and the comparison can fail: another seed gives other weights.
  TrainOptions other = TinyOptions(tmp_, "other-seed");
  other.seed = 1;
  ASSERT_TRUE(TrainScan(other).ok());
  auto a = ReadAll(tmp_.str("other-seed/weights.safetensors"));
  auto b = ReadAll(tmp_.str("full/weights.safetensors"));
  EXPECT_NE(a["img_enc.fc.weight"], b["img_enc.fc.weight"]);
}

TEST_F(ResumeTest, ResumeRefusesOtherSettingsAndFreshRunsRefuseAnExistingCheckpoint) {
  TrainOptions o = TinyOptions(tmp_, "full");
  absl::StatusOr<TrainResult> fresh = TrainScan(o);
  EXPECT_EQ(fresh.status().code(), absl::StatusCode::kFailedPrecondition) << fresh.status();
  EXPECT_NE(fresh.status().message().find("--resume"), std::string::npos);

  o.resume = true;
  o.learning_rate = 1e-3;
  absl::StatusOr<TrainResult> other = TrainScan(o);
  EXPECT_EQ(other.status().code(), absl::StatusCode::kFailedPrecondition) << other.status();
  EXPECT_NE(other.status().message().find("learning_rate"), std::string::npos) << other.status();

  // More epochs are allowed: the run continues.
  o.learning_rate = 2e-3;
  o.epochs = 4;
  absl::StatusOr<TrainResult> longer = TrainScan(o);
  ASSERT_TRUE(longer.ok()) << longer.status();
  EXPECT_EQ(longer->epochs.size(), 4u);

  TrainOptions missing = TinyOptions(tmp_, "never-trained");
  missing.resume = true;
  EXPECT_EQ(TrainScan(missing).status().code(), absl::StatusCode::kNotFound);
}

TEST_F(ResumeTest, ADamagedCheckpointIsRefusedNamingWhatIsWrong) {
  const std::string path = tmp_.str("full-checkpoint/checkpoint.json");
  std::string text;
  {
    std::ifstream in(path);
    text.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  }
  TrainOptions o = TinyOptions(tmp_, "full");
  o.resume = true;
  o.epochs = 4;
  const auto resume_with = [&](const std::string& contents) {
    std::ofstream(path, std::ios::trunc) << contents;
    return TrainScan(o).status();
  };
  absl::Status truncated = resume_with(text.substr(0, text.size() / 2));
  EXPECT_EQ(truncated.code(), absl::StatusCode::kDataLoss) << truncated;
  EXPECT_NE(truncated.message().find(path), std::string::npos) << truncated;

  nlohmann::json json = nlohmann::json::parse(text);
  json["history"][0]["dev"]["rsum"] = "high";
  absl::Status wrong_type = resume_with(json.dump());
  EXPECT_EQ(wrong_type.code(), absl::StatusCode::kDataLoss) << wrong_type;
  EXPECT_NE(wrong_type.message().find("history[0].dev.rsum"), std::string::npos) << wrong_type;

  // The original text resumes: the refusals changed nothing.
  absl::Status resumed = resume_with(text);
  EXPECT_TRUE(resumed.ok()) << resumed;
}

// ------------------------------------------------------------------------------------------------
// Bad data is refused before anything is trained or written.

class BadDataTest : public ::testing::Test {
 protected:
  void SetUp() override { WriteTinyData(tmp_); }

  absl::Status Train() {
    TrainOptions o = TinyOptions(tmp_, "model");
    o.epochs = 1;
    absl::Status status = TrainScan(o).status();
    EXPECT_FALSE(fs::exists(tmp_.str("model"))) << "nothing may be written for bad data";
    EXPECT_FALSE(fs::exists(tmp_.str("model-checkpoint")));
    return status;
  }

  void WriteCaptions(const std::string& split, const std::vector<std::string>& lines) {
    std::ofstream out(tmp_.str("data/" + split + "_caps.txt"));
    for (const std::string& line : lines) out << line << "\n";
  }

  TempDir tmp_;
};

TEST_F(BadDataTest, CaptionCountNotFiveTimesTheImages) {
  std::vector<std::string> lines(119, "a red dog");
  WriteCaptions("train", lines);
  absl::Status status = Train();
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(status.message().find("119 captions"), std::string::npos) << status;
  EXPECT_NE(status.message().find("24 images"), std::string::npos) << status;
}

TEST_F(BadDataTest, EmptyCaptionWithItsLineNumber) {
  std::vector<std::string> lines(120, "a red dog");
  lines[41] = "  ";
  WriteCaptions("train", lines);
  absl::Status status = Train();
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(status.message().find("train_caps.txt:42"), std::string::npos) << status;
}

TEST_F(BadDataTest, FeatureWidthDiffersBetweenSplits) {
  WriteSplit(tmp_.str("data"), "dev", 8, 4, 17, 1);
  absl::Status status = Train();
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(status.message().find("dev_ims.npy"), std::string::npos) << status;
  EXPECT_NE(status.message().find("17-d"), std::string::npos) << status;
}

TEST_F(BadDataTest, NanFeature) {
  std::vector<float> features(static_cast<size_t>(24 * 4 * 16), 0.5f);
  features[static_cast<size_t>((5 * 4 + 2) * 16 + 3)] = std::nanf("");
  ASSERT_TRUE(WriteNpyFloat32(tmp_.str("data/train_ims.npy"), {24, 4, 16}, features.data()).ok());
  absl::Status status = Train();
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(status.message().find("image 5 region 2"), std::string::npos) << status;
  EXPECT_NE(status.message().find("NaN"), std::string::npos) << status;
}

TEST_F(BadDataTest, MissingSplit) {
  fs::remove(tmp_.str("data/dev_ims.npy"));
  EXPECT_EQ(Train().code(), absl::StatusCode::kNotFound);
}

TEST(TrainingDataTest, CaptionIdsNameTheLineOfACaptionWithoutWords) {
  Vocabulary vocab = Vocabulary::FromCounts({{"a", "dog"}}, 1);
  absl::StatusOr<std::vector<std::vector<int64_t>>> ids = CaptionIds(vocab, {"a dog", "\t", "dog"}, "x_caps.txt");
  EXPECT_EQ(ids.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(ids.status().message().find("x_caps.txt:2"), std::string::npos) << ids.status();
}

}  // namespace
}  // namespace scanserve
