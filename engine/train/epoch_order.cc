#include "engine/train/epoch_order.h"

#include <cstddef>
#include <limits>
#include <numeric>
#include <utility>

namespace scanserve {
namespace {

// SplitMix64's output function applied to x + the golden gamma: each call is one step of the
// stream when fed its own output.
uint64_t MixSplitMix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ULL;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ULL;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBULL;
  return x ^ (x >> 31);
}

}  // namespace

std::vector<int64_t> EpochOrder(int64_t n, uint64_t seed, int epoch) {
  std::vector<int64_t> order(static_cast<size_t>(n));
  std::iota(order.begin(), order.end(), 0);
  uint64_t state = MixSplitMix64(seed ^ MixSplitMix64(0x5CA1AB1EULL + static_cast<uint64_t>(epoch)));
  auto next = [&state]() { return state = MixSplitMix64(state); };
  for (int64_t i = n - 1; i > 0; --i) {
    const uint64_t bound = static_cast<uint64_t>(i) + 1;
    const uint64_t limit = std::numeric_limits<uint64_t>::max() - std::numeric_limits<uint64_t>::max() % bound;
    uint64_t r = next();
    while (r >= limit) r = next();
    std::swap(order[static_cast<size_t>(i)], order[static_cast<size_t>(r % bound)]);
  }
  return order;
}

}  // namespace scanserve
