// What the benchmark tools (scan_bench, scan_bench_encoder) share: wall time, percentiles and
// integer flag values.
#pragma once

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"

namespace scanserve {
namespace bench {

inline double NowMs() {
  return std::chrono::duration<double, std::milli>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

// The nearest-rank p-th percentile (0 < p <= 100) of a non-empty sample.
inline double Percentile(std::vector<double> v, double p) {
  std::sort(v.begin(), v.end());
  const size_t i = static_cast<size_t>(std::ceil(p / 100.0 * v.size()));
  return v[std::min(v.size() - 1, i == 0 ? 0 : i - 1)];
}

inline std::optional<int64_t> ParseInt64(const std::string& v) {
  int64_t x;
  if (!absl::SimpleAtoi(v, &x)) return std::nullopt;
  return x;
}

}  // namespace bench
}  // namespace scanserve
