// splitmix64 and l2-normalised random rows: fast, deterministic data for benchmarks and synthetic
// items, whose only job is to cost what real embeddings cost (not to look like them).
#pragma once

#include <cmath>
#include <cstdint>

namespace scanserve {

class SplitMix64 {
 public:
  explicit SplitMix64(uint64_t seed) : state_(seed) {}
  uint64_t Next() {
    uint64_t z = (state_ += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
  }
  // Uniform in [-1, 1), 24 random bits.
  float NextSigned() { return static_cast<float>(Next() >> 40) * (2.0f / 16777216.0f) - 1.0f; }
  // Uniform in [lo, hi].
  int64_t Between(int64_t lo, int64_t hi) {
    return lo + static_cast<int64_t>(Next() % static_cast<uint64_t>(hi - lo + 1));
  }

 private:
  uint64_t state_;
};

// rows x dim (row-major) uniform entries in [-1, 1), every row then l2-normalised.
inline void FillUnitRows(SplitMix64& rng, float* x, int64_t rows, int64_t dim) {
  for (int64_t r = 0; r < rows; ++r) {
    float* row = x + r * dim;
    double norm2 = 0;
    for (int64_t c = 0; c < dim; ++c) {
      row[c] = rng.NextSigned();
      norm2 += static_cast<double>(row[c]) * row[c];
    }
    const float inv = norm2 > 0 ? static_cast<float>(1.0 / std::sqrt(norm2)) : 0.0f;
    for (int64_t c = 0; c < dim; ++c) row[c] *= inv;
  }
}

}  // namespace scanserve
