#include "engine/detector/detector_config.h"

#include "absl/strings/str_cat.h"
#include "engine/common/file_read.h"
#include "engine/common/json_fields.h"
#include "engine/common/status_macros.h"
#include "engine/detector/region_selection.h"
#include "nlohmann/json.hpp"

namespace scanserve {

absl::StatusOr<BottomUpDetectorConfig> BottomUpDetectorConfig::Load(const std::string& detector_dir) {
  const std::string path = detector_dir + "/detector.json";
  SCANSERVE_ASSIGN_OR_RETURN(const std::string text, ReadWholeFile(path, "detector config"));
  SCANSERVE_ASSIGN_OR_RETURN(const nlohmann::json j,
                             ParseJsonObject(text, path, absl::StatusCode::kInvalidArgument));
  // (Compared as JSON: nlohmann's value() would throw for a "format" that is not a string.)
  if (!j.contains("format") || j["format"] != "scanserve.bottom_up_detector") {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": format is not \"scanserve.bottom_up_detector\" (convert the caffemodel "
                           "with tools/convert_bottom_up_caffemodel.py)"));
  }
  const JsonFields fields(j, path, absl::StatusCode::kInvalidArgument);
  int version = 0;
  SCANSERVE_RETURN_IF_ERROR(fields.Required("format_version", &version));
  if (version != 1) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": unsupported format_version ", version, " (expected 1)"));
  }
  BottomUpDetectorConfig config;
  for (auto [key, field] : {std::pair{"num_classes", &config.num_classes},
                            std::pair{"num_attributes", &config.num_attributes},
                            std::pair{"min_boxes", &config.min_boxes},
                            std::pair{"max_boxes", &config.max_boxes}}) {
    SCANSERVE_RETURN_IF_ERROR(fields.Optional(key, field));
  }
  SCANSERVE_RETURN_IF_ERROR(fields.Optional("conf_threshold", &config.conf_threshold));
  if (!IsConfidenceThreshold(config.conf_threshold)) {
    return fields.Error("conf_threshold", absl::StrCat("is ", config.conf_threshold, "; a confidence is in [0, 1]"));
  }
  if (config.num_classes != 1601 || config.num_attributes != 401) {
    return absl::InvalidArgumentError(absl::StrCat(
        path, ": num_classes/num_attributes are ", config.num_classes, "/", config.num_attributes,
        "; the bottom-up-attention network has 1601/401"));
  }
  if (config.min_boxes < 1 || config.min_boxes > config.max_boxes || config.max_boxes > 300) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": box policy ", config.min_boxes, "..",
                                                   config.max_boxes,
                                                   " must satisfy 1 <= min_boxes <= max_boxes <= 300"));
  }
  SCANSERVE_ASSIGN_OR_RETURN(const nlohmann::json* source, fields.OptionalObject("source"));
  if (source != nullptr) {
    SCANSERVE_RETURN_IF_ERROR(fields.Nested(*source, "source").Optional("caffemodel", &config.source));
  }
  return config;
}

}  // namespace scanserve
