// GrowTo: resize a std::vector, growing its capacity geometrically, so that many small appends
// (a scorer's Adds) stay linear overall.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <vector>

namespace scanserve {

// Resizes to n. Throws std::bad_alloc like std::vector (callers turn it into a status).
template <typename T>
void GrowTo(std::vector<T>& v, int64_t n) {
  const size_t want = static_cast<size_t>(n);
  if (want > v.capacity()) v.reserve(std::max(want, v.capacity() + v.capacity() / 2));
  v.resize(want);
}

}  // namespace scanserve
