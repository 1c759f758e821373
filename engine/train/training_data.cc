#include "engine/train/training_data.h"

#include <cmath>

#include "absl/strings/str_cat.h"
#include "engine/common/status_macros.h"
#include "engine/text/tokenizer.h"

namespace scanserve {

std::string CaptionsPath(const std::string& data_dir, const std::string& split) {
  return absl::StrCat(data_dir, data_dir.empty() || data_dir.back() == '/' ? "" : "/", split,
                      "_caps.txt");
}

absl::Status CheckFeaturesFinite(const PrecompSplit& split, const std::string& source) {
  const int64_t per_image = split.regions_per_image * split.img_dim;
  for (int64_t i = 0; i < split.num_images; ++i) {
    const float* image = split.image_features(i);
    for (int64_t j = 0; j < per_image; ++j) {
      if (!std::isfinite(image[j])) {
        return absl::InvalidArgumentError(absl::StrCat(
            source, ": image ", i, " region ", j / split.img_dim, " feature ", j % split.img_dim,
            " is ", std::isnan(image[j]) ? "NaN" : "infinite", "; training needs finite features"));
      }
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<PrecompSplit> LoadAndCheckSplit(const std::string& data_dir, const std::string& split,
                                               int64_t expected_img_dim) {
  SCANSERVE_ASSIGN_OR_RETURN(PrecompSplit data, LoadPrecompSplit(data_dir, split));
  const std::string ims_path = absl::StrCat(
      data_dir, data_dir.empty() || data_dir.back() == '/' ? "" : "/", split, "_ims.npy");
  if (expected_img_dim > 0 && data.img_dim != expected_img_dim) {
    return absl::InvalidArgumentError(absl::StrCat(ims_path, ": region features are ", data.img_dim,
                                                   "-d but ", expected_img_dim,
                                                   "-d are expected (the model's img_dim / the "
                                                   "training split's width)"));
  }
  SCANSERVE_RETURN_IF_ERROR(CheckFeaturesFinite(data, ims_path));
  return data;
}

absl::StatusOr<Vocabulary> MakeTrainingVocabulary(const std::vector<std::string>& captions,
                                                  const std::string& vocab_path, int min_count) {
  if (!vocab_path.empty()) return Vocabulary::FromFile(vocab_path);
  if (min_count < 1) return absl::InvalidArgumentError("--min-count must be >= 1");
  std::vector<std::vector<std::string>> tokenised;
  tokenised.reserve(captions.size());
  for (const std::string& caption : captions) tokenised.push_back(TokenizeCaption(caption));
  return Vocabulary::FromCounts(tokenised, min_count);
}

absl::StatusOr<std::vector<std::vector<int64_t>>> CaptionIds(const Vocabulary& vocabulary,
                                                             const std::vector<std::string>& captions,
                                                             const std::string& captions_path) {
  std::vector<std::vector<int64_t>> ids;
  ids.reserve(captions.size());
  for (size_t i = 0; i < captions.size(); ++i) {
    ids.push_back(vocabulary.EncodeCaption(captions[i]));
    if (ids.back().size() <= 2) {  // only <start> <end>
      return absl::InvalidArgumentError(absl::StrCat(captions_path, ":", i + 1,
                                                     ": the caption has no words after tokenisation"));
    }
  }
  return ids;
}

}  // namespace scanserve
