// The data a SCAN training run reads, loaded and checked before any training starts: the precomputed
// train and dev splits (engine/eval/precomp_split.h) and the vocabulary (built from the training
// captions like SCAN's vocab.py, or read from a JSON file). Torch-free.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/eval/precomp_split.h"
#include "engine/text/vocabulary.h"

namespace scanserve {

// One split ready for training or evaluation: features, captions and their token ids.
struct TrainingSplit {
  std::string name;  // "train", "dev", ...
  PrecompSplit data;
  std::vector<std::vector<int64_t>> caption_ids;  // <start> w1 .. wn <end>, the training vocabulary
};

// Loads `{data_dir}/{split}_ims.npy` + `{split}_caps.txt` and checks, with errors that name the file
// (INVALID_ARGUMENT unless the file is missing or truncated):
//  - 5 captions per image (LoadPrecompSplit's layouts), no empty caption (1-based line number);
//  - region features `expected_img_dim` wide (0: any width);
//  - every feature finite (the image and region of the first NaN / infinity).
absl::StatusOr<PrecompSplit> LoadAndCheckSplit(const std::string& data_dir, const std::string& split,
                                               int64_t expected_img_dim);

// NaN / infinity check of a loaded split; `source` names it in the error.
absl::Status CheckFeaturesFinite(const PrecompSplit& split, const std::string& source);

// The training vocabulary: `vocab_path` when given, else built from the captions as SCAN's
// vocab.py does (words seen at least `min_count` times, after the four special tokens).
absl::StatusOr<Vocabulary> MakeTrainingVocabulary(const std::vector<std::string>& captions,
                                                  const std::string& vocab_path, int min_count);

// Token ids of every caption. A caption without a single token is INVALID_ARGUMENT naming
// `captions_path` and its 1-based line.
absl::StatusOr<std::vector<std::vector<int64_t>>> CaptionIds(const Vocabulary& vocabulary,
                                                             const std::vector<std::string>& captions,
                                                             const std::string& captions_path);

// The path of a split's captions file, for messages.
std::string CaptionsPath(const std::string& data_dir, const std::string& split);

}  // namespace scanserve
