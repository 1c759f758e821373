#include "engine/scoring/pass_kernel_chooser.h"

#include <algorithm>

namespace scanserve {
namespace {

PassKernel Other(PassKernel k) {
  return k == PassKernel::kGemm ? PassKernel::kFused : PassKernel::kGemm;
}
int Index(PassKernel k) { return static_cast<int>(k); }

}  // namespace

const char* PassKernelName(PassKernel kernel) {
  return kernel == PassKernel::kFused ? "fused" : "gemm";
}

PassKernelChooser::PassKernelChooser(PassKernelChooserOptions options) : options_(options) {
  options_.timed_passes = std::max(1, options_.timed_passes);
  options_.reprobe_every = std::max<int64_t>(1, options_.reprobe_every);
  options_.switch_margin = std::clamp(options_.switch_margin, 0.0, 0.9);
}

int PassKernelChooser::BucketIndex(int64_t query_rows) {
  int index = 0;
  while (index < 62 && (int64_t{1} << index) < query_rows) ++index;
  return index;
}

double PassKernelChooser::Median(const State& s, PassKernel kernel) const {
  std::vector<double> v(s.seconds_per_row[Index(kernel)].begin(),
                        s.seconds_per_row[Index(kernel)].end());
  if (v.empty()) return 0;
  std::nth_element(v.begin(), v.begin() + v.size() / 2, v.end());
  return v[v.size() / 2];
}

PassKernelChooser::State& PassKernelChooser::StateFor(int64_t query_rows) {
  const int b = BucketIndex(query_rows);
  if (static_cast<int>(buckets_.size()) <= b) buckets_.resize(b + 1);
  return buckets_[b];
}

PassKernel PassKernelChooser::Choose(int64_t query_rows, int64_t stored_rows) {
  stored_rows = std::max<int64_t>(1, stored_rows);
  std::lock_guard<std::mutex> lock(mu_);
  State& s = StateFor(query_rows);
  if (s.failed[0] || s.failed[1]) {
    const PassKernel k = s.failed[Index(PassKernel::kGemm)] && !s.failed[Index(PassKernel::kFused)]
                             ? PassKernel::kFused
                             : PassKernel::kGemm;
    ++s.passes[Index(k)];
    return k;
  }
  if (s.stored_rows == 0 || stored_rows > 2 * s.stored_rows || 2 * stored_rows < s.stored_rows) {
    // Per-row times from another store size would compare launch overheads, not kernels.
    s.stored_rows = stored_rows;
    s.settled = false;
    for (auto& times : s.seconds_per_row) times.clear();
    s.since_probe = 0;
  }
  PassKernel kernel = s.choice;
  if (!s.settled) {
    const auto done = [&](PassKernel k) {
      return static_cast<int>(s.warmed[Index(k)]) +
             static_cast<int>(s.seconds_per_row[Index(k)].size());
    };
    const auto needs = [&](PassKernel k) {
      return !s.warmed[Index(k)] ||
             static_cast<int>(s.seconds_per_row[Index(k)].size()) < options_.timed_passes;
    };
    const bool gemm = needs(PassKernel::kGemm), fused = needs(PassKernel::kFused);
    if (gemm && fused) {
      kernel = done(PassKernel::kFused) < done(PassKernel::kGemm) ? PassKernel::kFused
                                                                  : PassKernel::kGemm;
    } else if (gemm || fused) {
      kernel = gemm ? PassKernel::kGemm : PassKernel::kFused;
    }
  } else if (++s.since_probe >= options_.reprobe_every) {
    s.since_probe = 0;
    kernel = Other(s.choice);
  }
  ++s.passes[Index(kernel)];
  return kernel;
}

void PassKernelChooser::Record(int64_t query_rows, int64_t stored_rows, PassKernel kernel,
                               double seconds) {
  stored_rows = std::max<int64_t>(1, stored_rows);
  std::lock_guard<std::mutex> lock(mu_);
  const int b = BucketIndex(query_rows);
  if (static_cast<int>(buckets_.size()) <= b) return;  // never chosen
  State& s = buckets_[b];
  const int k = Index(kernel);
  if (!s.warmed[k]) {
    s.warmed[k] = true;
    return;
  }
  // A pass from before the bucket re-explored at another store size.
  if (stored_rows > 2 * s.stored_rows || 2 * stored_rows < s.stored_rows) return;
  auto& times = s.seconds_per_row[k];
  times.push_back(seconds / static_cast<double>(stored_rows));
  while (static_cast<int>(times.size()) > options_.timed_passes) times.pop_front();
  if (s.failed[0] || s.failed[1]) return;  // the kernel that did not fail stays chosen
  const int full = options_.timed_passes;
  if (static_cast<int>(s.seconds_per_row[0].size()) < full ||
      static_cast<int>(s.seconds_per_row[1].size()) < full) {
    return;
  }
  const double gemm = Median(s, PassKernel::kGemm), fused = Median(s, PassKernel::kFused);
  if (!s.settled) {
    s.settled = true;
    s.choice = fused < gemm ? PassKernel::kFused : PassKernel::kGemm;
    s.since_probe = 0;
    return;
  }
  const double current = s.choice == PassKernel::kFused ? fused : gemm;
  const double other = s.choice == PassKernel::kFused ? gemm : fused;
  if (other < (1.0 - options_.switch_margin) * current) s.choice = Other(s.choice);
}

void PassKernelChooser::RecordFailure(int64_t query_rows, PassKernel kernel) {
  std::lock_guard<std::mutex> lock(mu_);
  State& s = StateFor(query_rows);
  s.failed[Index(kernel)] = true;
  s.choice = Other(kernel);
}

void PassKernelChooser::Reset() {
  std::lock_guard<std::mutex> lock(mu_);
  buckets_.clear();
}

std::vector<PassKernelChooser::Bucket> PassKernelChooser::Buckets() const {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<Bucket> out;
  for (size_t b = 0; b < buckets_.size(); ++b) {
    const State& s = buckets_[b];
    if (s.passes[0] + s.passes[1] == 0 && !s.failed[0] && !s.failed[1]) continue;
    Bucket bucket;
    bucket.max_query_rows = int64_t{1} << b;
    bucket.min_query_rows = b == 0 ? 1 : (int64_t{1} << (b - 1)) + 1;
    bucket.stored_rows = s.stored_rows;
    bucket.settled = s.settled;
    bucket.choice = s.choice;
    for (PassKernel k : {PassKernel::kGemm, PassKernel::kFused}) {
      bucket.median_seconds[Index(k)] = Median(s, k) * static_cast<double>(s.stored_rows);
    }
    bucket.passes = s.passes;
    bucket.failed = s.failed;
    out.push_back(bucket);
  }
  return out;
}

}  // namespace scanserve
