// Region features for scanctl: .npy files in, RegionFeatures messages out.
#pragma once

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "engine/common/matrix.h"
#include "scanserve/v1/scanserve.pb.h"

namespace scanserve {
namespace cli {

// A (k, d) float array, or (1, k, d); float32 or float64 on disk. Errors name the file and shape.
absl::StatusOr<FloatMatrix> ReadMatrixNpy(const std::string& path, const char* what);

// rows x dim float32, packed little-endian, as the API carries them.
void SetRegionFeatures(const float* data, int64_t rows, int64_t dim, v1::RegionFeatures* out);

}  // namespace cli
}  // namespace scanserve
