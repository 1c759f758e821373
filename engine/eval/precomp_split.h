// A SCAN precomputed split (data/{f30k,coco}_precomp): `{data_dir}/{split}_ims.npy`, float32
// (N, k, img_dim) bottom-up region features, and `{split}_caps.txt`, five captions per image
// (captions 5i .. 5i+4 belong to image i), loaded as the reference's PrecompDataset reads them.
//
// Two image layouts exist: one row per image (N rows for 5N captions, the released files) and one
// row per caption (5N rows, each image repeated five times, the reference's im_div = 1); the
// second keeps every fifth row, reading only those rows from disk.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace scanserve {

struct PrecompSplit {
  int64_t num_images = 0;
  int64_t regions_per_image = 0;  // k (36 in the released features)
  int64_t img_dim = 0;            // 2048
  // num_images x regions_per_image x img_dim floats in one buffer, image-major.
  std::vector<float> features;
  std::vector<std::string> captions;  // 5 * num_images

  const float* image_features(int64_t image) const {
    return features.data() + image * regions_per_image * img_dim;
  }
};

// Loads `{data_dir}/{split}_ims.npy` and `{data_dir}/{split}_caps.txt`. Errors name the file:
// NOT_FOUND for a missing file, INVALID_ARGUMENT for a wrong rank or dtype, a caption count that
// fits neither layout, or an empty caption (with its 1-based line number), DATA_LOSS for a
// truncated .npy.
absl::StatusOr<PrecompSplit> LoadPrecompSplit(const std::string& data_dir, const std::string& split);

// One caption per line, each stripped of surrounding ASCII whitespace as Python's bytes.strip()
// does; lines are split on '\n' only, and a final line needs no newline. An empty line (after
// stripping) is INVALID_ARGUMENT naming the file and its line number.
absl::StatusOr<std::vector<std::string>> ReadCaptionLines(const std::string& path);

}  // namespace scanserve
