// A weights.safetensors holding every tensor BottomUpNetwork loads, with values from the test's
// fill function: zeros for tests that only need a directory that loads, random ones for tests of
// the network's arithmetic.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "engine/common/safetensors.h"
#include "engine/detector/bottom_up_network.h"

namespace scanserve {

// fill(name, shape, values) sets the tensor's values (already sized, zero) in place.
using WeightFill = std::function<void(const std::string& name, const std::vector<int64_t>& shape,
                                      std::vector<float>* values)>;

inline absl::Status WriteBottomUpWeights(const std::string& path, const WeightFill& fill = nullptr) {
  std::map<std::string, Float32Tensor> tensors;
  for (const auto& [name, shape] : BottomUpNetwork::TensorShapes()) {
    int64_t count = 1;
    for (int64_t d : shape) count *= d;
    Float32Tensor tensor{shape, std::vector<float>(static_cast<size_t>(count), 0.0f)};
    if (fill) fill(name, shape, &tensor.values);
    tensors[name] = std::move(tensor);
  }
  return WriteSafetensors(path, tensors);
}

}  // namespace scanserve
