// PassKernelChooser: for each shape of scoring pass, runs whichever of two kernels that compute the
// same scores has been faster on this machine, by timing the passes it serves.
//
// Why: the CUDA backend's two passes (cuBLAS products + the epilogue kernel, or the one fused
// kernel) give the same scores to rounding, and which is faster depends on the GPU, the storage
// type, the query rows per pass and the store's size. A fixed default is right on one GPU and
// wrong on the next; timing the live passes is right on each (CudaPassKernels::kAuto).
//
// How, per bucket of passes (query rows in powers of two: 1, 2, 3-4, 5-8, ...; a lone caption and
// a batch of 64 land in different buckets):
//  - explore: the kernel with fewer timed passes runs (the GEMM path first) until each has
//    `timed_passes` of them. Each kernel's first pass in a bucket is not timed: it pays for lazy
//    module loading, cuBLAS's heuristics and buffers growing to the new shape.
//  - exploit: the kernel with the lower median of its last `timed_passes` times runs. Once chosen,
//    a kernel stays until the other is faster by more than `switch_margin`, so that noise does not
//    flip the choice back and forth.
//  - re-probe: every `reprobe_every` passes the other kernel runs once, so that a change (another
//    process on the GPU, the store's rows moving into more slabs) can turn the choice.
//  - re-explore: times are per stored row, compared only within a factor of two of the store size
//    at which the bucket was explored; beyond that the bucket explores again.
//  - failure: a kernel whose pass failed is not chosen again in that bucket (the other one is),
//    so that one fault costs one request, not every later one.
// Thread-safe.
#pragma once

#include <array>
#include <cstdint>
#include <deque>
#include <mutex>
#include <vector>

namespace scanserve {

enum class PassKernel { kGemm = 0, kFused = 1 };
const char* PassKernelName(PassKernel kernel);

struct PassKernelChooserOptions {
  int timed_passes = 3;         // timed passes per kernel before (and between) choices, >= 1
  int64_t reprobe_every = 200;  // passes in a bucket between runs of the other kernel, >= 1
  double switch_margin = 0.05;  // the other kernel must be this much faster to take over
};

class PassKernelChooser {
 public:
  explicit PassKernelChooser(PassKernelChooserOptions options = {});

  // The kernel for a pass of `query_rows` stacked query rows over `stored_rows` stored rows, when
  // both kernels can run it.
  PassKernel Choose(int64_t query_rows, int64_t stored_rows);
  // A finished pass that Choose gave `kernel`: its wall time, first byte in to last result out.
  void Record(int64_t query_rows, int64_t stored_rows, PassKernel kernel, double seconds);
  // A pass that Choose gave `kernel` failed.
  void RecordFailure(int64_t query_rows, PassKernel kernel);
  // Forgets every bucket: the passes timed so far no longer describe the next ones (the queries'
  // precision changed, and with it the work per pass). Failures are forgotten too.
  void Reset();

  struct Bucket {
    int64_t min_query_rows = 0;
    int64_t max_query_rows = 0;
    // Store size the times were taken at (the bucket explores again beyond 2x either way).
    int64_t stored_rows = 0;
    bool settled = false;  // both kernels timed: `choice` is the faster
    PassKernel choice = PassKernel::kGemm;
    // Median seconds per pass at stored_rows (0 until timed), indexed by PassKernel.
    std::array<double, 2> median_seconds{};
    std::array<int64_t, 2> passes{};  // passes run with each kernel in this bucket
    std::array<bool, 2> failed{};     // kernels that failed a pass here (no longer chosen)
    // `choice` stands: both kernels timed, or one failed (leaving the other).
    bool decided() const { return settled || failed[0] || failed[1]; }
  };
  // The buckets passes have reached so far, smallest query rows first.
  std::vector<Bucket> Buckets() const;

 private:
  struct State {
    int64_t stored_rows = 0;
    bool settled = false;
    PassKernel choice = PassKernel::kGemm;
    std::array<bool, 2> warmed{};
    std::array<std::deque<double>, 2> seconds_per_row;  // the last timed_passes, oldest first
    std::array<int64_t, 2> passes{};
    std::array<bool, 2> failed{};
    int64_t since_probe = 0;
  };
  static int BucketIndex(int64_t query_rows);
  State& StateFor(int64_t query_rows);  // mu_ held
  double Median(const State& s, PassKernel kernel) const;

  PassKernelChooserOptions options_;
  mutable std::mutex mu_;
  std::vector<State> buckets_;  // by BucketIndex; guarded by mu_
};

}  // namespace scanserve
