// The Visual Genome class names of the bottom-up-attention detector
// (genome-vocab/objects_vocab.txt, 1600 lines, and attributes_vocab.txt, 400 lines), to turn its
// object / attribute ids into labels.
//
// Id conventions differ between the detector's raw head and the TSV files it wrote:
//  - TSV `objects_id` / `attrs_id` (LXMERT layout) are already 0-based line indices: id j names
//    line j. This is what ObjectName / AttributeName take.
//  - The raw 1601-way (401-way) classifier has background at index 0, so its class i + 1 is line i:
//    subtract one first.
// A line may list synonyms ("gray,grey"); the first one is the name.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace scanserve {

class GenomeVocabulary {
 public:
  // NOT_FOUND for a missing file; INVALID_ARGUMENT for an empty file or an empty line (with its
  // line number).
  static absl::StatusOr<GenomeVocabulary> Load(const std::string& objects_path,
                                               const std::string& attributes_path);
  GenomeVocabulary(std::vector<std::string> objects, std::vector<std::string> attributes)
      : objects_(std::move(objects)), attributes_(std::move(attributes)) {}

  int64_t num_objects() const { return static_cast<int64_t>(objects_.size()); }
  int64_t num_attributes() const { return static_cast<int64_t>(attributes_.size()); }

  // The name of 0-based id `id`; INVALID_ARGUMENT when out of range.
  absl::StatusOr<std::string> ObjectName(int64_t id) const;
  absl::StatusOr<std::string> AttributeName(int64_t id) const;

  // "attribute object" when attribute_conf >= min_attribute_conf, else "object" (the rule of the
  // bottom-up-attention demos, which use a threshold of 0.1).
  absl::StatusOr<std::string> Label(int64_t object_id, int64_t attribute_id, float attribute_conf,
                                    float min_attribute_conf) const;

 private:
  std::vector<std::string> objects_;
  std::vector<std::string> attributes_;
};

}  // namespace scanserve
