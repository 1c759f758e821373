#include "engine/detector/detector_config.h"

#include <fstream>

#include "absl/strings/str_cat.h"
#include "nlohmann/json.hpp"

namespace scanserve {

absl::StatusOr<BottomUpDetectorConfig> BottomUpDetectorConfig::Load(const std::string& detector_dir) {
  const std::string path = detector_dir + "/detector.json";
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat("detector config not found: ", path));
  nlohmann::json j = nlohmann::json::parse(in, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": not a JSON object"));
  }
  // (Compared as JSON: nlohmann's value() would throw for a "format" that is not a string.)
  if (!j.contains("format") || j["format"] != "scanserve.bottom_up_detector") {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": format is not \"scanserve.bottom_up_detector\" (convert the caffemodel "
                           "with tools/convert_bottom_up_caffemodel.py)"));
  }
  if (!j.contains("format_version") || !j["format_version"].is_number_integer() ||
      j["format_version"].get<int>() != 1) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": unsupported format_version (expected 1)"));
  }
  BottomUpDetectorConfig config;
  auto read_int = [&](const char* key, int* out) -> absl::Status {
    if (!j.contains(key)) return absl::OkStatus();
    if (!j[key].is_number_integer()) {
      return absl::InvalidArgumentError(absl::StrCat(path, ": '", key, "' must be an integer"));
    }
    *out = j[key].get<int>();
    return absl::OkStatus();
  };
  for (auto [key, field] : {std::pair{"num_classes", &config.num_classes},
                            std::pair{"num_attributes", &config.num_attributes},
                            std::pair{"min_boxes", &config.min_boxes},
                            std::pair{"max_boxes", &config.max_boxes}}) {
    if (absl::Status s = read_int(key, field); !s.ok()) return s;
  }
  if (j.contains("conf_threshold")) {
    if (!j["conf_threshold"].is_number()) {
      return absl::InvalidArgumentError(absl::StrCat(path, ": 'conf_threshold' must be a number"));
    }
    config.conf_threshold = j["conf_threshold"].get<float>();
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
  if (j.contains("source")) {
    const nlohmann::json& source = j["source"];
    if (!source.is_object() || (source.contains("caffemodel") && !source["caffemodel"].is_string())) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ": 'source' must be an object whose 'caffemodel' is a string"));
    }
    if (source.contains("caffemodel")) config.source = source["caffemodel"].get<std::string>();
  }
  return config;
}

}  // namespace scanserve
