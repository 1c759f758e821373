// Reads the safetensors format (8-byte little-endian header length, JSON header, raw tensor bytes),
// the weight format of scanserve model directories.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace scanserve {

struct TensorInfo {
  std::string dtype;            // "F32", "I64", ... as the format spells it
  std::vector<int64_t> shape;
  size_t offset = 0;            // into SafetensorsFile::data()
  size_t num_bytes = 0;

  int64_t num_elements() const;
};

class SafetensorsFile {
 public:
  // Reads and validates the whole file: header well-formed, every tensor's byte range inside the
  // data section, sizes consistent with dtype and shape. Errors name the file and the tensor.
  static absl::StatusOr<SafetensorsFile> Read(const std::string& path);

  const std::map<std::string, TensorInfo>& tensors() const { return tensors_; }
  const std::string& path() const { return path_; }

  // A float32 tensor's values, checking the dtype and the expected shape (NOT_FOUND when absent,
  // INVALID_ARGUMENT naming actual and expected shapes otherwise).
  absl::StatusOr<std::vector<float>> Float32(const std::string& name,
                                             const std::vector<int64_t>& expected_shape) const;

 private:
  std::string path_;
  std::vector<char> data_;  // the bytes after the header
  std::map<std::string, TensorInfo> tensors_;
};

struct Float32Tensor {
  std::vector<int64_t> shape;
  std::vector<float> values;  // row-major, product(shape) values
};

// Writes float32 tensors (sorted by name, as the format's header is a JSON object) to `path`
// atomically and durably (engine/common/atomic_file.h): a crash or a power loss leaves the old
// file or the new one, never a half-written one.
absl::Status WriteSafetensors(const std::string& path,
                              const std::map<std::string, Float32Tensor>& tensors);

std::string ShapeToString(const std::vector<int64_t>& shape);

}  // namespace scanserve
