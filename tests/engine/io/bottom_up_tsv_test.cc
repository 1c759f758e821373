// The bottom-up TSV reader on the real LXMERT file (skipped when the shared data is absent) and on
// generated 6- and 10-column files, including every error class.
#include "engine/io/bottom_up_tsv.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace scanserve {
namespace {

namespace fs = std::filesystem;

const fs::path kGoldenDir = fs::path(SCANSERVE_SHARED_DATA_DIR) / "bottom-up-golden";

template <typename T>
std::string B64(const std::vector<T>& values) {
  return absl::Base64Escape(
      absl::string_view(reinterpret_cast<const char*>(values.data()), values.size() * sizeof(T)));
}

// One synthetic image: box b is (b, 2b, b+10, 2b+10); feature (b, j) = b * 100 + j.
struct FakeImage {
  std::string id;
  int64_t w, h, boxes, dim;

  std::vector<float> Boxes() const {
    std::vector<float> v;
    for (int64_t b = 0; b < boxes; ++b) {
      for (float x : {float(b), float(2 * b), float(b + 10), float(2 * b + 10)}) v.push_back(x);
    }
    return v;
  }
  std::vector<float> Features() const {
    std::vector<float> v;
    for (int64_t b = 0; b < boxes; ++b) {
      for (int64_t j = 0; j < dim; ++j) v.push_back(float(b * 100 + j));
    }
    return v;
  }
  std::string SixColumns() const {
    return absl::StrJoin({id, std::to_string(w), std::to_string(h), std::to_string(boxes),
                          B64(Boxes()), B64(Features())},
                         "\t");
  }
  std::string TenColumns() const {
    std::vector<int64_t> objects, attrs;
    std::vector<float> object_conf, attr_conf;
    for (int64_t b = 0; b < boxes; ++b) {
      objects.push_back(b % 3);
      attrs.push_back(b % 2);
      object_conf.push_back(0.9f);
      attr_conf.push_back(b % 2 ? 0.05f : 0.5f);  // odd boxes fall under the 0.1 threshold
    }
    return absl::StrJoin(
        {id, std::to_string(h), std::to_string(w), B64(objects), B64(object_conf), B64(attrs),
         B64(attr_conf), std::to_string(boxes), B64(Boxes()), B64(Features())},
        "\t");
  }
};

void ExpectMatches(const BottomUpRecord& r, const FakeImage& image) {
  EXPECT_EQ(r.image_id, image.id);
  EXPECT_EQ(r.image_w, image.w);
  EXPECT_EQ(r.image_h, image.h);
  EXPECT_EQ(r.num_boxes, image.boxes);
  EXPECT_EQ(r.boxes.rows, image.boxes);
  EXPECT_EQ(r.boxes.data, image.Boxes());
  EXPECT_EQ(r.features.rows, image.boxes);
  EXPECT_EQ(r.features.cols, image.dim);
  EXPECT_EQ(r.features.data, image.Features());
}

class BottomUpTsvTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() /
           ("bottom_up_tsv_test_" + std::to_string(::getpid()) + "_" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  std::string Write(const std::string& content) {
    const fs::path path = dir_ / "data.tsv";
    std::ofstream(path, std::ios::binary) << content;
    return path.string();
  }
  // Reads to the end; returns the first error, or OK.
  absl::Status ReadAll(const std::string& path, const BottomUpTsvOptions& options,
                       std::vector<BottomUpRecord>* out = nullptr) {
    auto reader = BottomUpTsvReader::Open(path, options);
    if (!reader.ok()) return reader.status();
    while (true) {
      auto next = (*reader)->Next();
      if (!next.ok()) return next.status();
      if (!next->has_value()) return absl::OkStatus();
      if (out) out->push_back(**next);
    }
  }

  fs::path dir_;
};

TEST_F(BottomUpTsvTest, RealLxmertFile) {
  const fs::path tsv = kGoldenDir / "train2014_obj36.tsv";
  if (!fs::exists(tsv)) GTEST_SKIP() << "shared data absent: " << tsv;
  BottomUpTsvOptions options;
  auto vocab = GenomeVocabulary::Load((kGoldenDir / "genome-vocab/objects_vocab.txt").string(),
                                      (kGoldenDir / "genome-vocab/attributes_vocab.txt").string());
  ASSERT_TRUE(vocab.ok()) << vocab.status();
  EXPECT_EQ(vocab->num_objects(), 1600);
  EXPECT_EQ(vocab->num_attributes(), 400);
  options.vocabulary = std::make_shared<GenomeVocabulary>(*std::move(vocab));
  auto reader = BottomUpTsvReader::Open(tsv.string(), options);
  ASSERT_TRUE(reader.ok()) << reader.status();

  int count = 0;
  while (true) {
    auto next = (*reader)->Next();
    ASSERT_TRUE(next.ok()) << next.status();
    if (!next->has_value()) break;
    const BottomUpRecord& r = **next;
    ++count;
    EXPECT_EQ((*reader)->line_number(), count);
    EXPECT_EQ(r.num_boxes, 36) << r.image_id;
    EXPECT_EQ(r.features.rows, 36);
    EXPECT_EQ(r.features.cols, 2048);
    EXPECT_EQ(r.object_ids.size(), 36u);
    EXPECT_EQ(r.labels.size(), 36u);
    for (float v : r.features.data) {
      ASSERT_TRUE(std::isfinite(v) && v >= 0.0f) << r.image_id;  // pool5 after ReLU
    }
    for (int64_t b = 0; b < r.num_boxes; ++b) {
      const float* box = r.boxes.row(b);
      // Boxes lie inside the image: this checks the LXMERT h/w order.
      EXPECT_GE(box[0], 0.0f);
      EXPECT_LE(box[0], box[2]);
      EXPECT_LE(box[1], box[3]);
      EXPECT_LE(box[2], float(r.image_w) + 1) << r.image_id;
      EXPECT_LE(box[3], float(r.image_h) + 1) << r.image_id;
    }
    if (count == 1) {
      EXPECT_EQ(r.image_id, "COCO_train2014_000000132417");
      EXPECT_EQ(r.image_h, 333);
      EXPECT_EQ(r.image_w, 500);
      EXPECT_NEAR(r.boxes.at(0, 2), 361.8466f, 1e-3f);
      EXPECT_NEAR(r.boxes.at(0, 3), 216.9805f, 1e-3f);
      // A landscape: ids are 0-based vocabulary lines, synonyms cut at the comma.
      EXPECT_EQ(r.labels[0], "blue sky");
      EXPECT_EQ(r.labels[2], "green tree");
      EXPECT_EQ(r.labels[4], "field");
      EXPECT_EQ(r.labels[8], "gray sky");
    }
  }
  EXPECT_EQ(count, 10);
  EXPECT_EQ((*reader)->layout(), BottomUpLayout::kLxmert10);
  auto layout = DetectBottomUpLayout(tsv.string());
  ASSERT_TRUE(layout.ok());
  EXPECT_EQ(*layout, BottomUpLayout::kLxmert10);
}

TEST_F(BottomUpTsvTest, GeneratedSixColumnsWithCrlfBlankLinesAndNoFinalNewline) {
  const FakeImage a{"1", 640, 480, 3, 5}, b{"COCO_2", 300, 200, 1, 5}, c{"x", 10, 20, 2, 5};
  const std::string path =
      Write(a.SixColumns() + "\r\n\n" + b.SixColumns() + "\n" + c.SixColumns());
  std::vector<BottomUpRecord> records;
  BottomUpTsvOptions options;
  options.feature_dim = 5;
  ASSERT_TRUE(ReadAll(path, options, &records).ok());
  ASSERT_EQ(records.size(), 3u);
  ExpectMatches(records[0], a);
  ExpectMatches(records[1], b);
  ExpectMatches(records[2], c);
  EXPECT_TRUE(records[0].object_ids.empty());
  EXPECT_TRUE(records[0].labels.empty());
  EXPECT_EQ(*DetectBottomUpLayout(path), BottomUpLayout::kGenerateTsv6);
}

TEST_F(BottomUpTsvTest, GeneratedTenColumnsWithLabelsAndInferredDim) {
  const FakeImage a{"img", 640, 480, 4, 7};
  const std::string path = Write(a.TenColumns() + "\n");
  BottomUpTsvOptions options;
  options.feature_dim = 0;
  options.vocabulary = std::make_shared<GenomeVocabulary>(
      std::vector<std::string>{"dog", "cat", "tree"}, std::vector<std::string>{"red", "small"});
  std::vector<BottomUpRecord> records;
  ASSERT_TRUE(ReadAll(path, options, &records).ok());
  ASSERT_EQ(records.size(), 1u);
  ExpectMatches(records[0], a);
  EXPECT_EQ(records[0].object_ids, (std::vector<int64_t>{0, 1, 2, 0}));
  EXPECT_EQ(records[0].labels, (std::vector<std::string>{"red dog", "cat", "red tree", "dog"}));
}

TEST_F(BottomUpTsvTest, LongLines) {
  // 100 boxes x 2048: a ~1.1 MB line, longer than the reader's chunk.
  const FakeImage big{"big", 1, 1, 100, 2048};
  const std::string path = Write(big.SixColumns() + "\n" + big.SixColumns() + "\n");
  std::vector<BottomUpRecord> records;
  ASSERT_TRUE(ReadAll(path, {}, &records).ok());
  ASSERT_EQ(records.size(), 2u);
  ExpectMatches(records[1], big);

  BottomUpTsvOptions small;
  small.max_line_bytes = 1000;
  const absl::Status status = ReadAll(path, small);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
  EXPECT_NE(status.message().find(":1:"), std::string::npos) << status;
}

TEST_F(BottomUpTsvTest, ErrorsNameTheLine) {
  const FakeImage good{"ok", 5, 5, 2, 3};
  BottomUpTsvOptions options;
  options.feature_dim = 3;
  struct Case {
    std::string name, content;
    absl::StatusCode code;
    std::string where;
  };
  std::string bad_count = good.SixColumns();
  bad_count.replace(bad_count.find("\t2\t"), 3, "\tzz\t");
  std::string wrong_boxes = good.SixColumns();
  wrong_boxes.replace(wrong_boxes.find("\t2\t"), 3, "\t3\t");
  std::string bad_b64 = good.SixColumns();
  bad_b64.back() = '!';
  const std::string truncated = good.SixColumns().substr(0, good.SixColumns().size() - 10);
  const std::vector<Case> cases = {
      {"seven columns", good.SixColumns() + "\n" + good.SixColumns() + "\textra\n",
       absl::StatusCode::kInvalidArgument, ":2:"},
      {"unknown layout", "a\tb\tc\n", absl::StatusCode::kInvalidArgument, ":1:"},
      {"mixed layouts", good.SixColumns() + "\n" + good.TenColumns() + "\n",
       absl::StatusCode::kInvalidArgument, ":2:"},
      {"non-numeric num_boxes", "\n" + bad_count + "\n", absl::StatusCode::kInvalidArgument, ":2:"},
      {"num_boxes disagrees with the arrays", wrong_boxes + "\n", absl::StatusCode::kDataLoss,
       ":1:"},
      {"invalid base64", bad_b64 + "\n", absl::StatusCode::kInvalidArgument, ":1:"},
      {"truncated last line", good.SixColumns() + "\n" + truncated, absl::StatusCode::kDataLoss,
       ":2:"},
  };
  for (const Case& c : cases) {
    const absl::Status status = ReadAll(Write(c.content), options);
    EXPECT_EQ(status.code(), c.code) << c.name << ": " << status;
    EXPECT_NE(status.message().find(c.where), std::string::npos) << c.name << ": " << status;
  }
  // A wrong feature width is the arrays disagreeing with the expectation.
  options.feature_dim = 2048;
  EXPECT_EQ(ReadAll(Write(good.SixColumns() + "\n"), options).code(), absl::StatusCode::kDataLoss);
}

TEST_F(BottomUpTsvTest, ErrorsAreSticky) {
  const FakeImage good{"ok", 5, 5, 2, 3};
  const std::string path = Write("broken line\n" + good.SixColumns() + "\n");
  auto reader = BottomUpTsvReader::Open(path, {.feature_dim = 3});
  ASSERT_TRUE(reader.ok());
  EXPECT_FALSE((*reader)->Next().ok());
  EXPECT_FALSE((*reader)->Next().ok());
}

TEST_F(BottomUpTsvTest, MissingFileAndEmptyFile) {
  EXPECT_EQ(BottomUpTsvReader::Open((dir_ / "absent.tsv").string()).status().code(),
            absl::StatusCode::kNotFound);
  std::vector<BottomUpRecord> records;
  EXPECT_TRUE(ReadAll(Write(""), {}, &records).ok());
  EXPECT_TRUE(records.empty());
  EXPECT_EQ(DetectBottomUpLayout(Write("\n\n")).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(GenomeVocabularyTest, LabelsAndRanges) {
  const GenomeVocabulary vocab({"dog", "cat"}, {"red"});
  EXPECT_EQ(*vocab.Label(1, 0, 0.2f, 0.1f), "red cat");
  EXPECT_EQ(*vocab.Label(1, 0, 0.05f, 0.1f), "cat");
  EXPECT_EQ(vocab.Label(2, 0, 0.5f, 0.1f).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(vocab.Label(0, 1, 0.5f, 0.1f).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(*vocab.Label(0, 7, 0.0f, 0.1f), "dog");  // attribute unused below the threshold
  EXPECT_EQ(GenomeVocabulary::Load("/nonexistent/o.txt", "/nonexistent/a.txt").status().code(),
            absl::StatusCode::kNotFound);
}

}  // namespace
}  // namespace scanserve
