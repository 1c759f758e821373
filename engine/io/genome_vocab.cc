#include "engine/io/genome_vocab.h"

#include <fstream>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "engine/common/status_macros.h"

namespace scanserve {
namespace {

// One name per line (the first of its comma-separated synonyms); '\r' endings tolerated, a
// missing final newline too.
absl::StatusOr<std::vector<std::string>> ReadNames(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open the vocabulary file ", path));
  std::vector<std::string> names;
  std::string line;
  int64_t line_number = 0;
  while (std::getline(in, line)) {
    ++line_number;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    const size_t comma = line.find(',');
    std::string name = line.substr(0, comma);
    if (name.empty()) {
      return absl::InvalidArgumentError(absl::StrCat(path, ":", line_number, ": empty class name"));
    }
    names.push_back(std::move(name));
  }
  if (in.bad()) return absl::DataLossError(absl::StrCat("error reading ", path));
  if (names.empty()) return absl::InvalidArgumentError(absl::StrCat(path, " has no class names"));
  return names;
}

absl::StatusOr<std::string> Name(const std::vector<std::string>& names, int64_t id,
                                 absl::string_view what) {
  if (id < 0 || id >= static_cast<int64_t>(names.size())) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, " id ", id, " is outside the vocabulary (0..", names.size() - 1, ")"));
  }
  return names[static_cast<size_t>(id)];
}

}  // namespace

absl::StatusOr<GenomeVocabulary> GenomeVocabulary::Load(const std::string& objects_path,
                                                        const std::string& attributes_path) {
  SCANSERVE_ASSIGN_OR_RETURN(std::vector<std::string> objects, ReadNames(objects_path));
  SCANSERVE_ASSIGN_OR_RETURN(std::vector<std::string> attributes, ReadNames(attributes_path));
  return GenomeVocabulary(std::move(objects), std::move(attributes));
}

absl::StatusOr<std::string> GenomeVocabulary::ObjectName(int64_t id) const {
  return Name(objects_, id, "object");
}

absl::StatusOr<std::string> GenomeVocabulary::AttributeName(int64_t id) const {
  return Name(attributes_, id, "attribute");
}

absl::StatusOr<std::string> GenomeVocabulary::Label(int64_t object_id, int64_t attribute_id,
                                                    float attribute_conf,
                                                    float min_attribute_conf) const {
  SCANSERVE_ASSIGN_OR_RETURN(std::string object, ObjectName(object_id));
  if (!(attribute_conf >= min_attribute_conf)) return object;
  SCANSERVE_ASSIGN_OR_RETURN(std::string attribute, AttributeName(attribute_id));
  return absl::StrCat(attribute, " ", object);
}

}  // namespace scanserve
