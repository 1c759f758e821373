// The calling thread's OpenMP team size, for LibTorch's CPU kernels, set for a scope.
//
// LibTorch splits its elementwise work over OpenMP threads while its matrix products run on
// OpenBLAS's own pthreads, and both pools spin while they wait. On a few cores they take the cores
// from each other: on 2 cores (OpenBLAS on 2 threads) a BiGRU over 4 captions took ~150 ms with 2
// OpenMP threads and ~43 ms with 1; 128 captions ~700 ms and ~370 ms. OpenMP's team size belongs to
// the calling thread, so an encoder can run its small ops on the caller alone while the rest of the
// process (the detector's oneDNN convolutions) keeps the pool.
#pragma once

namespace scanserve {

class ScopedOpenMpThreads {
 public:
  // n >= 1. Does nothing where no OpenMP runtime is loaded (a LibTorch with its native pool).
  explicit ScopedOpenMpThreads(int n);
  ~ScopedOpenMpThreads();
  ScopedOpenMpThreads(const ScopedOpenMpThreads&) = delete;
  ScopedOpenMpThreads& operator=(const ScopedOpenMpThreads&) = delete;

  // The threads LibTorch's parallel loops started on the calling thread now use.
  static int Current();

 private:
  int previous_ = 0;
};

}  // namespace scanserve
