// A streaming reader of bottom-up-attention TSV files, one image per line, in both layouts:
//  - generate_tsv (6 columns): image_id, image_w, image_h, num_boxes, boxes, features
//  - LXMERT (10 columns):      img_id, img_h, img_w, objects_id, objects_conf, attrs_id,
//                              attrs_conf, num_boxes, boxes, features
// (note: width and height swap places). boxes and features are base64 of little-endian float32
// arrays (num_boxes x 4 as x1, y1, x2, y2 in original pixels; num_boxes x feature_dim), objects_id
// / attrs_id base64 int64 (0-based genome-vocab line indices), *_conf base64 float32, one per box.
//
// The layout is detected from the first line's column count; every later line must match it.
// Lines are read in bounded chunks (real lines are ~400 KB), '\r\n' endings are accepted and blank
// lines skipped. Errors name the file and the 1-based line: INVALID_ARGUMENT for a malformed line
// (column count, a non-numeric field, invalid base64), DATA_LOSS when decoded arrays do not match
// num_boxes or the file ends inside a line, NOT_FOUND when the file does not exist.
#pragma once

#include <cstdint>
#include <cstdio>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/common/matrix.h"
#include "engine/io/genome_vocab.h"

namespace scanserve {

enum class BottomUpLayout { kGenerateTsv6, kLxmert10 };

// One image of the file.
struct BottomUpRecord {
  std::string image_id;
  int64_t image_w = 0;
  int64_t image_h = 0;
  int64_t num_boxes = 0;
  FloatMatrix boxes;     // num_boxes x 4: x1, y1, x2, y2
  FloatMatrix features;  // num_boxes x feature_dim
  // LXMERT layout only (empty for generate_tsv): one entry per box.
  std::vector<int64_t> object_ids;
  std::vector<float> object_conf;
  std::vector<int64_t> attribute_ids;
  std::vector<float> attribute_conf;
  // With BottomUpTsvOptions::vocabulary and the LXMERT layout: "attribute object" per box.
  std::vector<std::string> labels;
};

struct BottomUpTsvOptions {
  // Expected feature width; 0 = infer it from each line (features bytes / num_boxes).
  int64_t feature_dim = 2048;
  // Longest accepted line, so a file without newlines cannot exhaust memory.
  int64_t max_line_bytes = 256LL << 20;
  // When set, LXMERT records get labels (see GenomeVocabulary::Label); an id outside it is
  // INVALID_ARGUMENT for that line.
  std::shared_ptr<const GenomeVocabulary> vocabulary;
  float min_attribute_conf = 0.1f;
};

class BottomUpTsvReader {
 public:
  static absl::StatusOr<std::unique_ptr<BottomUpTsvReader>> Open(
      const std::string& path, const BottomUpTsvOptions& options = {});
  ~BottomUpTsvReader();
  BottomUpTsvReader(const BottomUpTsvReader&) = delete;
  BottomUpTsvReader& operator=(const BottomUpTsvReader&) = delete;

  // The next image, or nullopt at the end of the file. After an error the reader stays failed.
  absl::StatusOr<std::optional<BottomUpRecord>> Next();

  // Known once the first line was read.
  std::optional<BottomUpLayout> layout() const { return layout_; }
  // The 1-based number of the line last returned (0 before the first).
  int64_t line_number() const { return line_number_; }
  const std::string& path() const { return path_; }

 private:
  BottomUpTsvReader(std::string path, std::FILE* file, const BottomUpTsvOptions& options);

  // Reads the next line (without its '\n' / '\r\n') into line_; false at the end of the file.
  // `complete` says whether it ended with a newline.
  absl::StatusOr<bool> ReadLine(bool* complete);
  absl::StatusOr<BottomUpRecord> ParseLine(bool complete);

  std::string path_;
  std::FILE* file_;
  BottomUpTsvOptions options_;
  std::optional<BottomUpLayout> layout_;
  int64_t line_number_ = 0;
  std::string line_;          // the current line
  std::vector<char> buffer_;  // file bytes not yet consumed: [buffer_pos_, buffer_end_)
  size_t buffer_pos_ = 0;
  size_t buffer_end_ = 0;
  bool eof_ = false;
  absl::Status failed_;  // sticky error
};

// Detects the layout of a TSV file from its first non-blank line (for tools that want to say
// what they are importing before they start).
absl::StatusOr<BottomUpLayout> DetectBottomUpLayout(const std::string& path);

const char* ToString(BottomUpLayout layout);

}  // namespace scanserve
