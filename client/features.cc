#include "client/features.h"

#include <cstring>

#include "absl/strings/str_cat.h"
#include "engine/common/npy.h"

namespace scanserve {
namespace cli {

absl::StatusOr<FloatMatrix> ReadMatrixNpy(const std::string& path, const char* what) {
  absl::StatusOr<NpyTensor<float>> tensor = ReadNpyAsFloat32(path);
  if (!tensor.ok()) return tensor.status();
  std::vector<int64_t> shape = tensor->shape;
  if (shape.size() == 3 && shape[0] == 1) shape.erase(shape.begin());
  if (shape.size() != 2 || shape[0] < 1 || shape[1] < 1) {
    std::string shown = "(";
    for (size_t i = 0; i < tensor->shape.size(); ++i) absl::StrAppend(&shown, i ? ", " : "", tensor->shape[i]);
    return absl::InvalidArgumentError(
        absl::StrCat(what, " ", path, ": expected a (rows, dim) array, got shape ", shown, ")"));
  }
  FloatMatrix matrix;
  matrix.rows = shape[0];
  matrix.cols = shape[1];
  matrix.data = std::move(tensor->data);
  return matrix;
}

void SetRegionFeatures(const float* data, int64_t rows, int64_t dim, v1::RegionFeatures* out) {
  static_assert(sizeof(float) == 4, "float32 wire format");
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
#error "scanctl packs features in host order; add a byte swap for big-endian hosts"
#endif
  out->set_num_regions(static_cast<int32_t>(rows));
  out->set_dim(static_cast<int32_t>(dim));
  out->mutable_values()->assign(reinterpret_cast<const char*>(data), static_cast<size_t>(rows * dim) * sizeof(float));
}

}  // namespace cli
}  // namespace scanserve
