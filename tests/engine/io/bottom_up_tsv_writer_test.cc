// The TSV writer round-trips through the reader in both layouts.
#include "engine/io/bottom_up_tsv_writer.h"

#include <cstdio>
#include <filesystem>
#include <fstream>

#include <gtest/gtest.h>

namespace scanserve {
namespace {

BottomUpRecord MakeRecord(int64_t n) {
  BottomUpRecord r;
  r.image_id = "COCO_val2014_000000000042";
  r.image_w = 640;
  r.image_h = 480;
  r.num_boxes = n;
  r.boxes = FloatMatrix(n, 4);
  r.features = FloatMatrix(n, 2048);
  for (int64_t i = 0; i < n; ++i) {
    for (int k = 0; k < 4; ++k) r.boxes.at(i, k) = 10.5f * i + k;
    for (int64_t d = 0; d < 2048; ++d) r.features.at(i, d) = 0.001f * (i * 2048 + d);
    r.object_ids.push_back(1599 - i);
    r.object_conf.push_back(0.5f + 0.01f * i);
    r.attribute_ids.push_back(i);
    r.attribute_conf.push_back(0.25f);
  }
  return r;
}

TEST(BottomUpTsvWriterTest, RoundTripsBothLayouts) {
  const std::string path =
      (std::filesystem::temp_directory_path() / "scanserve_tsv_writer_test.tsv").string();
  for (BottomUpLayout layout : {BottomUpLayout::kLxmert10, BottomUpLayout::kGenerateTsv6}) {
    const BottomUpRecord record = MakeRecord(3);
    absl::StatusOr<std::string> line = FormatBottomUpTsvLine(record, layout);
    ASSERT_TRUE(line.ok()) << line.status();
    {
      std::ofstream out(path, std::ios::binary);
      out << *line << *line;
    }
    absl::StatusOr<std::unique_ptr<BottomUpTsvReader>> reader = BottomUpTsvReader::Open(path);
    ASSERT_TRUE(reader.ok()) << reader.status();
    for (int i = 0; i < 2; ++i) {
      absl::StatusOr<std::optional<BottomUpRecord>> got = (*reader)->Next();
      ASSERT_TRUE(got.ok() && got->has_value()) << got.status();
      const BottomUpRecord& r = **got;
      EXPECT_EQ(r.image_id, record.image_id);
      EXPECT_EQ(r.image_w, 640);
      EXPECT_EQ(r.image_h, 480);
      EXPECT_EQ(r.num_boxes, 3);
      EXPECT_EQ(r.boxes.data, record.boxes.data);
      EXPECT_EQ(r.features.data, record.features.data);
      if (layout == BottomUpLayout::kLxmert10) {
        EXPECT_EQ(r.object_ids, record.object_ids);
        EXPECT_EQ(r.object_conf, record.object_conf);
        EXPECT_EQ(r.attribute_ids, record.attribute_ids);
        EXPECT_EQ(r.attribute_conf, record.attribute_conf);
      }
    }
    EXPECT_EQ((*reader)->layout(), layout);
  }
  std::remove(path.c_str());
}

TEST(BottomUpTsvWriterTest, RefusesInconsistentRecords) {
  BottomUpRecord r = MakeRecord(2);
  r.image_id = "bad\tid";
  EXPECT_EQ(FormatBottomUpTsvLine(r, BottomUpLayout::kGenerateTsv6).status().code(),
            absl::StatusCode::kInvalidArgument);
  r = MakeRecord(2);
  r.num_boxes = 3;
  EXPECT_FALSE(FormatBottomUpTsvLine(r, BottomUpLayout::kGenerateTsv6).ok());
  r = MakeRecord(2);
  r.object_ids.pop_back();
  EXPECT_TRUE(FormatBottomUpTsvLine(r, BottomUpLayout::kGenerateTsv6).ok());  // ids unused there
  EXPECT_FALSE(FormatBottomUpTsvLine(r, BottomUpLayout::kLxmert10).ok());
}

}  // namespace
}  // namespace scanserve
