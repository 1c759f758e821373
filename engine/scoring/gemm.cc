// LibTorch stays inside this file: its headers leak glog-style macros into whoever includes them.
#include "engine/scoring/gemm.h"

#include <dlfcn.h>

#include <exception>
#include <mutex>
#include <string>
#include <thread>

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/from_blob.h>
#include <ATen/ops/mm.h>
#include <c10/core/InferenceMode.h>
#include <c10/util/Exception.h>
#include <torch/version.h>

#include "absl/strings/str_cat.h"
#include "engine/common/torch_status.h"

namespace scanserve {
namespace {

int HardwareThreads() {
  const unsigned n = std::thread::hardware_concurrency();
  return n == 0 ? 1 : static_cast<int>(n);
}

// The BLAS library's thread controls, looked up in the process (LibTorch links the library).
struct BlasControls {
  using SetFn = void (*)(int);
  using SetLocalFn = int (*)(int);
  SetFn openblas_set = nullptr;            // openblas_set_num_threads: process-wide
  SetLocalFn openblas_set_local = nullptr;  // openblas_set_num_threads_local (>= 0.3.27)
  SetLocalFn mkl_set_local = nullptr;       // mkl_set_num_threads_local

  BlasControls() {
    openblas_set = reinterpret_cast<SetFn>(dlsym(RTLD_DEFAULT, "openblas_set_num_threads"));
    openblas_set_local =
        reinterpret_cast<SetLocalFn>(dlsym(RTLD_DEFAULT, "openblas_set_num_threads_local"));
    mkl_set_local = reinterpret_cast<SetLocalFn>(dlsym(RTLD_DEFAULT, "mkl_set_num_threads_local"));
  }
};

const BlasControls& Controls() {
  static const BlasControls controls;
  return controls;
}

std::once_flag g_init_once;
std::mutex g_threads_mu;  // guards the three below and every process-wide BLAS thread change
int g_threads = 0;        // the configured compute threads (0 until initialised)
int g_blas_threads = 0;   // the configured BLAS library threads
int g_caller_only = 0;    // kCaller calls in flight that rely on the process-wide setting

void ApplyBlasThreadsLocked(int n) {
  g_blas_threads = n;
  if (Controls().openblas_set != nullptr && g_caller_only == 0) Controls().openblas_set(n);
  using MklSetFn = void (*)(int);
  if (auto mkl = reinterpret_cast<MklSetFn>(dlsym(RTLD_DEFAULT, "mkl_set_num_threads"))) mkl(n);
}

void ApplyThreadsLocked(int n) {
  // LibTorch's set_num_threads reaches OpenMP and MKL but not a pthreads OpenBLAS.
  at::set_num_threads(n);
  g_threads = n;
  ApplyBlasThreadsLocked(n);
}

void InitOnce() {
  std::call_once(g_init_once, [] {
    std::lock_guard<std::mutex> lock(g_threads_mu);
    if (g_threads == 0) ApplyThreadsLocked(HardwareThreads());
  });
}

// Runs `fn` with the BLAS library restricted to the calling thread.
template <typename Fn>
void WithCallerOnlyBlas(Fn fn) {
  const BlasControls& c = Controls();
  if (c.mkl_set_local != nullptr || c.openblas_set_local != nullptr) {
    auto set_local = c.mkl_set_local != nullptr ? c.mkl_set_local : c.openblas_set_local;
    const int previous = set_local(1);
    fn();
    set_local(previous);
    return;
  }
  if (c.openblas_set == nullptr) {  // a BLAS we cannot steer: run as configured
    fn();
    return;
  }
  {
    std::lock_guard<std::mutex> lock(g_threads_mu);
    if (g_caller_only++ == 0) c.openblas_set(1);
  }
  fn();
  std::lock_guard<std::mutex> lock(g_threads_mu);
  if (--g_caller_only == 0) c.openblas_set(g_blas_threads);
}

}  // namespace

void SetComputeThreads(int n) {
  if (n < 1) n = HardwareThreads();
  std::call_once(g_init_once, [] {});  // a later GemmNT must not reset it
  std::lock_guard<std::mutex> lock(g_threads_mu);
  ApplyThreadsLocked(n);
}

void SetBlasThreads(int n) {
  InitOnce();
  std::lock_guard<std::mutex> lock(g_threads_mu);
  ApplyBlasThreadsLocked(n < 1 ? g_threads : n);
}

bool CallerOnlyGemmSupported() {
  const BlasControls& c = Controls();
  return c.mkl_set_local != nullptr || c.openblas_set_local != nullptr || c.openblas_set != nullptr;
}

int ComputeThreads() {
  std::lock_guard<std::mutex> lock(g_threads_mu);
  return g_threads;
}

const char* BlasDescription() {
  static const std::string desc = [] {
    std::string s = "LibTorch " TORCH_VERSION;
    using ConfigFn = char* (*)();
    if (auto fn = reinterpret_cast<ConfigFn>(dlsym(RTLD_DEFAULT, "openblas_get_config"))) {
      absl::StrAppend(&s, ", ", fn());
    } else if (dlsym(RTLD_DEFAULT, "mkl_get_max_threads") != nullptr) {
      absl::StrAppend(&s, ", MKL");
    }
    return s;
  }();
  return desc.c_str();
}

absl::Status GemmNT(int64_t m, int64_t n, int64_t k, const float* a, int64_t lda, const float* b,
                    int64_t ldb, float* c, int64_t ldc, GemmThreading threading) {
  if (m < 0 || n < 0 || k < 0 || lda < k || ldb < k || ldc < n) {
    return absl::InvalidArgumentError(absl::StrCat("GemmNT: bad shape m=", m, " n=", n, " k=", k,
                                                   " lda=", lda, " ldb=", ldb, " ldc=", ldc));
  }
  if (m == 0 || n == 0) return absl::OkStatus();
  InitOnce();
  absl::Status status;
  auto run = [&] {
    try {
      c10::InferenceMode guard;
      const auto opts = at::TensorOptions().dtype(at::kFloat);
      // from_blob never frees; const_cast is safe because A and B are only read.
      at::Tensor ta = at::from_blob(const_cast<float*>(a), {m, k}, {lda, 1}, opts);
      at::Tensor tb = at::from_blob(const_cast<float*>(b), {n, k}, {ldb, 1}, opts);
      at::Tensor tc = at::from_blob(c, {m, n}, {ldc, 1}, opts);
      at::mm_out(tc, ta, tb.t());
    } catch (const std::exception& e) {
      status = TorchErrorStatus("GemmNT", e);
    }
  };
  if (threading == GemmThreading::kCaller) {
    WithCallerOnlyBlas(run);
  } else {
    run();
  }
  return status;
}

}  // namespace scanserve
