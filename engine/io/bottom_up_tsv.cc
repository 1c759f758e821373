#include "engine/io/bottom_up_tsv.h"

#include <cerrno>
#include <cmath>
#include <cstring>
#include <type_traits>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "engine/common/status_macros.h"

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "the TSV arrays are little-endian");

namespace scanserve {
namespace {

constexpr size_t kChunkBytes = 1 << 20;

// Column positions of one layout.
struct Columns {
  int count;
  int image_id, image_w, image_h, num_boxes, boxes, features;
  int objects_id = -1, objects_conf = -1, attrs_id = -1, attrs_conf = -1;
};
constexpr Columns kGenerateTsv{6, 0, 1, 2, 3, 4, 5};
constexpr Columns kLxmert{10, 0, 2, 1, 7, 8, 9, 3, 4, 5, 6};

const Columns& ColumnsOf(BottomUpLayout layout) {
  return layout == BottomUpLayout::kLxmert10 ? kLxmert : kGenerateTsv;
}

absl::StatusOr<BottomUpLayout> LayoutFromColumnCount(size_t count) {
  if (count == 6) return BottomUpLayout::kGenerateTsv6;
  if (count == 10) return BottomUpLayout::kLxmert10;
  return absl::InvalidArgumentError(absl::StrCat(
      count,
      " tab-separated columns; expected 6 (image_id, image_w, image_h, num_boxes, boxes, "
      "features) or 10 (LXMERT: img_id, img_h, img_w, objects_id, objects_conf, attrs_id, "
      "attrs_conf, num_boxes, boxes, features)"));
}

// A whole number, written as an integer or as an integral float ("640.0").
bool ParseCount(absl::string_view text, int64_t* out) {
  if (absl::SimpleAtoi(text, out)) return true;
  double d = 0;
  if (!absl::SimpleAtod(text, &d) || !std::isfinite(d) || d != std::floor(d) ||
      std::fabs(d) > 1e15) {
    return false;
  }
  *out = static_cast<int64_t>(d);
  return true;
}

}  // namespace

const char* ToString(BottomUpLayout layout) {
  return layout == BottomUpLayout::kLxmert10 ? "LXMERT 10-column" : "generate_tsv 6-column";
}

absl::StatusOr<std::unique_ptr<BottomUpTsvReader>> BottomUpTsvReader::Open(
    const std::string& path, const BottomUpTsvOptions& options) {
  if (options.feature_dim < 0 || options.max_line_bytes < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("BottomUpTsvOptions: feature_dim ", options.feature_dim,
                     " must be >= 0 and max_line_bytes ", options.max_line_bytes, " >= 1"));
  }
  std::FILE* file = std::fopen(path.c_str(), "rb");
  if (file == nullptr) {
    const int err = errno;
    const std::string why = std::strerror(err);
    if (err == ENOENT) return absl::NotFoundError(absl::StrCat("cannot open ", path, ": ", why));
    return absl::InvalidArgumentError(absl::StrCat("cannot open ", path, ": ", why));
  }
  return std::unique_ptr<BottomUpTsvReader>(new BottomUpTsvReader(path, file, options));
}

BottomUpTsvReader::BottomUpTsvReader(std::string path, std::FILE* file,
                                     const BottomUpTsvOptions& options)
    : path_(std::move(path)), file_(file), options_(options), buffer_(kChunkBytes) {}

BottomUpTsvReader::~BottomUpTsvReader() {
  if (file_ != nullptr) std::fclose(file_);
}

absl::StatusOr<bool> BottomUpTsvReader::ReadLine(bool* complete) {
  line_.clear();
  *complete = false;
  while (true) {
    if (buffer_pos_ == buffer_end_) {
      if (eof_) return !line_.empty();
      buffer_pos_ = 0;
      buffer_end_ = std::fread(buffer_.data(), 1, buffer_.size(), file_);
      if (buffer_end_ == 0) {
        if (std::ferror(file_)) {
          return absl::DataLossError(
              absl::StrCat(path_, ":", line_number_ + 1, ": read error: ", std::strerror(errno)));
        }
        eof_ = true;
        return !line_.empty();
      }
    }
    const char* begin = buffer_.data() + buffer_pos_;
    const size_t available = buffer_end_ - buffer_pos_;
    const void* newline = std::memchr(begin, '\n', available);
    const size_t take =
        newline ? static_cast<size_t>(static_cast<const char*>(newline) - begin) : available;
    if (static_cast<int64_t>(line_.size() + take) > options_.max_line_bytes) {
      return absl::InvalidArgumentError(
          absl::StrCat(path_, ":", line_number_ + 1, ": line longer than ", options_.max_line_bytes,
                       " bytes (BottomUpTsvOptions::max_line_bytes)"));
    }
    line_.append(begin, take);
    buffer_pos_ += take;
    if (newline) {
      ++buffer_pos_;
      if (!line_.empty() && line_.back() == '\r') line_.pop_back();
      *complete = true;
      return true;
    }
  }
}

absl::StatusOr<std::optional<BottomUpRecord>> BottomUpTsvReader::Next() {
  if (!failed_.ok()) return failed_;
  while (true) {
    bool complete = false;
    absl::StatusOr<bool> got = ReadLine(&complete);
    if (!got.ok()) {
      failed_ = got.status();
      return failed_;
    }
    if (!*got) return std::optional<BottomUpRecord>();
    ++line_number_;
    if (absl::StripAsciiWhitespace(line_).empty()) continue;
    absl::StatusOr<BottomUpRecord> record = ParseLine(complete);
    if (!record.ok()) {
      failed_ = record.status();
      return failed_;
    }
    return std::optional<BottomUpRecord>(*std::move(record));
  }
}

absl::StatusOr<BottomUpRecord> BottomUpTsvReader::ParseLine(bool complete) {
  const std::string where = absl::StrCat(path_, ":", line_number_, ": ");
  // A last line without its newline that does not parse was most likely cut off.
  const auto broken = [&](absl::Status status) {
    if (complete) return status;
    return absl::DataLossError(
        absl::StrCat(status.message(), " (the file ends inside this line: truncated?)"));
  };
  const std::vector<absl::string_view> fields = absl::StrSplit(line_, '\t');
  if (!layout_.has_value()) {
    absl::StatusOr<BottomUpLayout> layout = LayoutFromColumnCount(fields.size());
    if (!layout.ok())
      return broken(absl::InvalidArgumentError(absl::StrCat(where, layout.status().message())));
    layout_ = *layout;
  }
  const Columns& c = ColumnsOf(*layout_);
  if (static_cast<int>(fields.size()) != c.count) {
    return broken(absl::InvalidArgumentError(
        absl::StrCat(where, fields.size(), " columns, but the file is in the ", ToString(*layout_),
                     " layout (", c.count, " columns)")));
  }

  BottomUpRecord record;
  record.image_id = std::string(fields[c.image_id]);
  if (record.image_id.empty())
    return broken(absl::InvalidArgumentError(absl::StrCat(where, "empty image id")));
  const auto count = [&](int column, const char* name, int64_t* out) -> absl::Status {
    if (!ParseCount(fields[column], out) || *out < 0) {
      return broken(absl::InvalidArgumentError(absl::StrCat(
          where, name, " (column ", column + 1, ") is '",
          absl::CEscape(fields[column].substr(0, 32)), "', not a non-negative integer")));
    }
    return absl::OkStatus();
  };
  SCANSERVE_RETURN_IF_ERROR(count(c.image_w, "image_w", &record.image_w));
  SCANSERVE_RETURN_IF_ERROR(count(c.image_h, "image_h", &record.image_h));
  SCANSERVE_RETURN_IF_ERROR(count(c.num_boxes, "num_boxes", &record.num_boxes));
  const int64_t n = record.num_boxes;

  std::string bytes;  // reused for every array
  // Decodes base64 column `column` into `out` (num_boxes x per_box elements of T).
  const auto decode = [&](int column, const char* name, int64_t per_box,
                          auto* out) -> absl::Status {
    using T = typename std::remove_reference_t<decltype(*out)>::value_type;
    if (!absl::Base64Unescape(fields[column], &bytes)) {
      return broken(absl::InvalidArgumentError(
          absl::StrCat(where, name, " (column ", column + 1, ") is not valid base64")));
    }
    const uint64_t expected = static_cast<uint64_t>(n) * static_cast<uint64_t>(per_box) * sizeof(T);
    if (bytes.size() != expected) {
      return absl::DataLossError(absl::StrCat(where, name, " (column ", column + 1, ") holds ",
                                              bytes.size(), " bytes; num_boxes ", n, " x ", per_box,
                                              " x ", sizeof(T), " needs ", expected));
    }
    out->resize(static_cast<size_t>(n * per_box));
    if (!bytes.empty()) std::memcpy(out->data(), bytes.data(), bytes.size());
    return absl::OkStatus();
  };

  record.boxes = FloatMatrix(n, 4);
  SCANSERVE_RETURN_IF_ERROR(decode(c.boxes, "boxes", 4, &record.boxes.data));

  int64_t dim = options_.feature_dim;
  if (dim == 0) {
    // Inferred: the decoded size must split evenly into num_boxes rows.
    if (!absl::Base64Unescape(fields[c.features], &bytes)) {
      return broken(absl::InvalidArgumentError(
          absl::StrCat(where, "features (column ", c.features + 1, ") is not valid base64")));
    }
    const uint64_t per_row = n > 0 ? bytes.size() / static_cast<uint64_t>(n) : 0;
    if (n == 0 && bytes.empty()) {
      // No boxes: nothing to infer from.
    } else if (n == 0 || per_row == 0 || per_row % sizeof(float) != 0 ||
               per_row * static_cast<uint64_t>(n) != bytes.size()) {
      return absl::DataLossError(absl::StrCat(where, "features hold ", bytes.size(),
                                              " bytes, not num_boxes ", n, " rows of float32"));
    } else {
      dim = static_cast<int64_t>(per_row / sizeof(float));
    }
  }
  record.features = FloatMatrix(n, dim);
  SCANSERVE_RETURN_IF_ERROR(decode(c.features, "features", dim, &record.features.data));

  if (*layout_ == BottomUpLayout::kLxmert10) {
    SCANSERVE_RETURN_IF_ERROR(decode(c.objects_id, "objects_id", 1, &record.object_ids));
    SCANSERVE_RETURN_IF_ERROR(decode(c.objects_conf, "objects_conf", 1, &record.object_conf));
    SCANSERVE_RETURN_IF_ERROR(decode(c.attrs_id, "attrs_id", 1, &record.attribute_ids));
    SCANSERVE_RETURN_IF_ERROR(decode(c.attrs_conf, "attrs_conf", 1, &record.attribute_conf));
    if (options_.vocabulary != nullptr) {
      record.labels.reserve(static_cast<size_t>(n));
      for (int64_t b = 0; b < n; ++b) {
        absl::StatusOr<std::string> label =
            options_.vocabulary->Label(record.object_ids[b], record.attribute_ids[b],
                                       record.attribute_conf[b], options_.min_attribute_conf);
        if (!label.ok()) {
          return absl::InvalidArgumentError(
              absl::StrCat(where, "box ", b, ": ", label.status().message()));
        }
        record.labels.push_back(*std::move(label));
      }
    }
  }
  return record;
}

absl::StatusOr<BottomUpLayout> DetectBottomUpLayout(const std::string& path) {
  BottomUpTsvOptions options;
  options.feature_dim = 0;
  SCANSERVE_ASSIGN_OR_RETURN(std::unique_ptr<BottomUpTsvReader> reader,
                             BottomUpTsvReader::Open(path, options));
  SCANSERVE_ASSIGN_OR_RETURN(std::optional<BottomUpRecord> first, reader->Next());
  if (!first.has_value()) return absl::InvalidArgumentError(absl::StrCat(path, " has no records"));
  return *reader->layout();
}

}  // namespace scanserve
