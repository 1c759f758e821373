// The order in which an epoch visits the training captions: a pure function of (seed, epoch), so
// that a resumed run sees the batches the uninterrupted one would. Checkpoints depend on it: a
// change to it changes what every existing checkpoint resumes into.
#pragma once

#include <cstdint>
#include <vector>

namespace scanserve {

// A permutation of 0..n-1: Fisher-Yates over a SplitMix64 stream with rejection sampling (no modulo
// bias, and nothing from the standard library's distributions, whose output differs between
// implementations).
std::vector<int64_t> EpochOrder(int64_t n, uint64_t seed, int epoch);

}  // namespace scanserve
