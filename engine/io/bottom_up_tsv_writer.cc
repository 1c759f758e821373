#include "engine/io/bottom_up_tsv_writer.h"

#include <cstring>

#include "absl/status/status.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"

namespace scanserve {
namespace {

template <typename T>
std::string Base64Of(const T* data, size_t count) {
  std::string bytes(count * sizeof(T), '\0');
  if (count > 0) std::memcpy(bytes.data(), data, bytes.size());  // x86/ARM are little-endian
  return absl::Base64Escape(bytes);
}

}  // namespace

absl::StatusOr<std::string> FormatBottomUpTsvLine(const BottomUpRecord& record, BottomUpLayout layout) {
  const int64_t n = record.num_boxes;
  if (record.image_id.empty() || record.image_id.find_first_of("\t\r\n") != std::string::npos) {
    return absl::InvalidArgumentError(
        absl::StrCat("image id '", record.image_id, "' is empty or contains a tab or newline"));
  }
  if (record.boxes.rows != n || (n > 0 && record.boxes.cols != 4)) {
    return absl::InvalidArgumentError(absl::StrCat(record.image_id, ": boxes are ", record.boxes.rows,
                                                   "x", record.boxes.cols, ", expected ", n, "x4"));
  }
  if (record.features.rows != n) {
    return absl::InvalidArgumentError(absl::StrCat(record.image_id, ": ", record.features.rows,
                                                   " feature rows for ", n, " boxes"));
  }
  const std::string boxes = Base64Of(record.boxes.data.data(), record.boxes.data.size());
  const std::string features = Base64Of(record.features.data.data(), record.features.data.size());
  if (layout == BottomUpLayout::kGenerateTsv6) {
    return absl::StrCat(record.image_id, "\t", record.image_w, "\t", record.image_h, "\t", n, "\t",
                        boxes, "\t", features, "\n");
  }
  const auto n_size = static_cast<size_t>(n);
  if (record.object_ids.size() != n_size || record.object_conf.size() != n_size ||
      record.attribute_ids.size() != n_size || record.attribute_conf.size() != n_size) {
    return absl::InvalidArgumentError(absl::StrCat(
        record.image_id, ": the LXMERT layout needs one object and attribute id and confidence per box"));
  }
  return absl::StrCat(record.image_id, "\t", record.image_h, "\t", record.image_w, "\t",
                      Base64Of(record.object_ids.data(), n_size), "\t",
                      Base64Of(record.object_conf.data(), n_size), "\t",
                      Base64Of(record.attribute_ids.data(), n_size), "\t",
                      Base64Of(record.attribute_conf.data(), n_size), "\t", n, "\t", boxes, "\t",
                      features, "\n");
}

}  // namespace scanserve
