// A dense row-major fp32 matrix: the engine's currency for embeddings (rows = regions or words,
// cols = embedding width) and score tables (rows = queries, cols = candidates).
#pragma once

#include <cstdint>
#include <vector>

#include "absl/types/span.h"

namespace scanserve {

struct FloatMatrix {
  int64_t rows = 0;
  int64_t cols = 0;
  std::vector<float> data;  // rows * cols, row-major

  FloatMatrix() = default;
  FloatMatrix(int64_t r, int64_t c) : rows(r), cols(c), data(static_cast<size_t>(r * c)) {}

  float* row(int64_t r) { return data.data() + r * cols; }
  const float* row(int64_t r) const { return data.data() + r * cols; }
  float& at(int64_t r, int64_t c) { return data[static_cast<size_t>(r * cols + c)]; }
  float at(int64_t r, int64_t c) const { return data[static_cast<size_t>(r * cols + c)]; }
};

// A borrowed view of `rows` contiguous row vectors of the embedding width (rows x dim floats).
struct ItemView {
  const float* data = nullptr;
  int64_t rows = 0;

  ItemView() = default;
  ItemView(const float* d, int64_t r) : data(d), rows(r) {}
  explicit ItemView(const FloatMatrix& m) : data(m.data.data()), rows(m.rows) {}
};

}  // namespace scanserve
