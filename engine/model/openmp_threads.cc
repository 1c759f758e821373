#include "engine/model/openmp_threads.h"

#include <dlfcn.h>

#include <ATen/Parallel.h>

namespace scanserve {
namespace {

// Looked up in the process rather than linked: LibTorch brings its own OpenMP runtime (a wheel's
// is a renamed libgomp), and this call must reach that one.
using SetNumThreadsFn = void (*)(int);

SetNumThreadsFn OpenMpSetNumThreads() {
  static const auto fn = reinterpret_cast<SetNumThreadsFn>(dlsym(RTLD_DEFAULT, "omp_set_num_threads"));
  return fn;
}

}  // namespace

ScopedOpenMpThreads::ScopedOpenMpThreads(int n) {
  if (OpenMpSetNumThreads() == nullptr) return;
  // Also LibTorch's first-use setup of this thread's team size, which would otherwise undo ours at
  // the first parallel op.
  previous_ = at::get_num_threads();
  OpenMpSetNumThreads()(n < 1 ? 1 : n);
}

ScopedOpenMpThreads::~ScopedOpenMpThreads() {
  if (previous_ > 0) OpenMpSetNumThreads()(previous_);
}

int ScopedOpenMpThreads::Current() { return at::get_num_threads(); }

}  // namespace scanserve
