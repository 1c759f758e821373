#include "engine/eval/precomp_split.h"

#include <string_view>
#include <utility>

#include "absl/strings/str_cat.h"
#include "engine/common/file_read.h"
#include "engine/common/npy.h"
#include "engine/common/status_macros.h"
#include "engine/eval/retrieval_metrics.h"

namespace scanserve {
namespace {

// Python's bytes.strip() set: space, \t, \n, \r, \v, \f.
bool IsPythonSpace(char c) {
  return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f';
}

std::string_view StripPythonSpace(std::string_view s) {
  while (!s.empty() && IsPythonSpace(s.front())) s.remove_prefix(1);
  while (!s.empty() && IsPythonSpace(s.back())) s.remove_suffix(1);
  return s;
}

}  // namespace

absl::StatusOr<std::vector<std::string>> ReadCaptionLines(const std::string& path) {
  SCANSERVE_ASSIGN_OR_RETURN(const std::string text, ReadWholeFile(path, "captions file"));

  std::vector<std::string> captions;
  size_t start = 0;
  int64_t line_number = 0;
  while (start < text.size()) {
    size_t end = text.find('\n', start);
    if (end == std::string::npos) end = text.size();
    ++line_number;
    const std::string_view caption = StripPythonSpace(std::string_view(text).substr(start, end - start));
    if (caption.empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ":", line_number, ": empty caption (every line must hold one caption)"));
    }
    captions.emplace_back(caption);
    start = end + 1;
  }
  return captions;
}

absl::StatusOr<PrecompSplit> LoadPrecompSplit(const std::string& data_dir, const std::string& split) {
  const std::string prefix = absl::StrCat(data_dir, data_dir.empty() || data_dir.back() == '/' ? "" : "/", split);
  const std::string ims_path = prefix + "_ims.npy";
  const std::string caps_path = prefix + "_caps.txt";

  PrecompSplit result;
  SCANSERVE_ASSIGN_OR_RETURN(result.captions, ReadCaptionLines(caps_path));
  const int64_t num_captions = static_cast<int64_t>(result.captions.size());
  if (num_captions == 0) {
    return absl::InvalidArgumentError(absl::StrCat(caps_path, ": no captions"));
  }

  SCANSERVE_ASSIGN_OR_RETURN(NpyFile ims, NpyFile::Open(ims_path));
  const NpyHeader& header = ims.header();
  if (header.shape.size() != 3) {
    return absl::InvalidArgumentError(absl::StrCat(
        ims_path, ": expected a 3-D array (images, regions, img_dim), got shape ", header.ShapeString()));
  }
  if (header.dtype != NpyDtype::kFloat32 && header.dtype != NpyDtype::kFloat64) {
    return absl::InvalidArgumentError(absl::StrCat(ims_path, ": expected float32 features, got dtype '",
                                                   NpyDescr(header.dtype), "'"));
  }
  const int64_t rows = header.shape[0];
  result.regions_per_image = header.shape[1];
  result.img_dim = header.shape[2];
  if (result.regions_per_image < 1 || result.img_dim < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat(ims_path, ": empty regions or features in shape ", header.ShapeString()));
  }

  // Which layout: one row per image (the released files) or one per caption (im_div = 1).
  int64_t row_stride = 0;
  if (num_captions == kCaptionsPerImage * rows) {
    row_stride = 1;
  } else if (rows == num_captions && num_captions % kCaptionsPerImage == 0) {
    row_stride = kCaptionsPerImage;
  } else {
    return absl::InvalidArgumentError(absl::StrCat(
        caps_path, " has ", num_captions, " captions but ", ims_path, " has ", rows,
        " images: expected 5 captions per image (", kCaptionsPerImage * rows,
        " captions), or one image row per caption"));
  }
  result.num_images = num_captions / kCaptionsPerImage;

  const int64_t image_floats = result.regions_per_image * result.img_dim;
  result.features.resize(static_cast<size_t>(result.num_images * image_floats));
  if (row_stride == 1) {
    SCANSERVE_RETURN_IF_ERROR(ims.ReadAllAsFloat32(result.features.data()));
  } else {
    for (int64_t i = 0; i < result.num_images; ++i) {
      SCANSERVE_RETURN_IF_ERROR(
          ims.ReadRowsAsFloat32(i * row_stride, 1, result.features.data() + i * image_floats));
    }
  }
  return result;
}

}  // namespace scanserve
