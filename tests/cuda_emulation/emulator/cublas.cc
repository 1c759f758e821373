// CUDA emulation (tests only): cublasGemmEx on the CPU. Column-major, as cuBLAS documents it:
// C (m x n, leading dimension ldc) = alpha op(A) op(B) + beta C, with op(A) m x k and op(B) k x n;
// A is stored m x k (lda >= m) when transa is N and k x m (lda >= k) when it is T, B likewise
// (ldb >= k for N, >= n for T). Products accumulate in fp32 from bf16 or fp32 inputs.
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "cublas_v2.h"
#include "scanserve_emu/faults.h"
#include "streams.h"

struct cublasContext {
  cudaStream_t stream = nullptr;
  cublasMath_t math = CUBLAS_DEFAULT_MATH;
};

namespace {

size_t ElementBytes(cudaDataType t) {
  switch (t) {
    case CUDA_R_32F:
      return 4;
    case CUDA_R_16F:
    case CUDA_R_16BF:
      return 2;
  }
  return 0;
}

float Element(const void* base, cudaDataType t, int64_t i) {
  if (t == CUDA_R_32F) return static_cast<const float*>(base)[i];
  const uint32_t bits = static_cast<uint32_t>(static_cast<const uint16_t*>(base)[i]) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof(f));
  return f;
}

[[noreturn]] void Fail(const std::string& what) {
  std::fprintf(stderr, "CUDA emulation: cublasGemmEx: %s\n", what.c_str());
  std::abort();
}

// A stored rows x cols (column-major, leading dimension ld) must lie inside device memory.
void CheckOperand(const char* name, const void* p, cudaDataType t, int rows, int cols, int ld) {
  if (rows == 0 || cols == 0) return;
  const size_t elements = static_cast<size_t>(cols - 1) * static_cast<size_t>(ld) + rows;
  if (!scanserve_emu::IsDeviceRange(p, elements * ElementBytes(t))) {
    Fail(std::string(name) + " (" + std::to_string(rows) + " x " + std::to_string(cols) + ", ld " +
         std::to_string(ld) + ") is not inside one device allocation");
  }
}

}  // namespace

cublasStatus_t cublasCreate(cublasHandle_t* handle) {
  *handle = new cublasContext;
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasDestroy(cublasHandle_t handle) {
  if (handle == nullptr) return CUBLAS_STATUS_NOT_INITIALIZED;
  delete handle;
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasSetStream(cublasHandle_t handle, cudaStream_t stream) {
  if (handle == nullptr) return CUBLAS_STATUS_NOT_INITIALIZED;
  handle->stream = stream;
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasSetMathMode(cublasHandle_t handle, cublasMath_t mode) {
  if (handle == nullptr) return CUBLAS_STATUS_NOT_INITIALIZED;
  handle->math = mode;
  return CUBLAS_STATUS_SUCCESS;
}
const char* cublasGetStatusString(cublasStatus_t status) {
  switch (status) {
    case CUBLAS_STATUS_SUCCESS: return "CUBLAS_STATUS_SUCCESS";
    case CUBLAS_STATUS_NOT_INITIALIZED: return "CUBLAS_STATUS_NOT_INITIALIZED";
    case CUBLAS_STATUS_ALLOC_FAILED: return "CUBLAS_STATUS_ALLOC_FAILED";
    case CUBLAS_STATUS_INVALID_VALUE: return "CUBLAS_STATUS_INVALID_VALUE";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "CUBLAS_STATUS_NOT_SUPPORTED";
    default: return "CUBLAS_STATUS_INTERNAL_ERROR";
  }
}

cublasStatus_t cublasGemmEx(cublasHandle_t handle, cublasOperation_t transa,
                            cublasOperation_t transb, int m, int n, int k, const void* alpha,
                            const void* A, cudaDataType Atype, int lda, const void* B,
                            cudaDataType Btype, int ldb, const void* beta, void* C,
                            cudaDataType Ctype, int ldc, cublasComputeType_t computeType,
                            cublasGemmAlgo_t /*algo*/) {
  if (handle == nullptr) return CUBLAS_STATUS_NOT_INITIALIZED;
  if (transa == CUBLAS_OP_C || transb == CUBLAS_OP_C) return CUBLAS_STATUS_NOT_SUPPORTED;
  const bool ta = transa == CUBLAS_OP_T, tb = transb == CUBLAS_OP_T;
  if (m < 0 || n < 0 || k < 0) return CUBLAS_STATUS_INVALID_VALUE;
  if (lda < std::max(1, ta ? k : m) || ldb < std::max(1, tb ? n : k) || ldc < std::max(1, m)) {
    return CUBLAS_STATUS_INVALID_VALUE;
  }
  if (Atype != Btype || Ctype != CUDA_R_32F || Atype == CUDA_R_16F ||
      (computeType != CUBLAS_COMPUTE_32F && computeType != CUBLAS_COMPUTE_32F_PEDANTIC &&
       computeType != CUBLAS_COMPUTE_32F_FAST_TF32 && computeType != CUBLAS_COMPUTE_32F_FAST_16BF)) {
    return CUBLAS_STATUS_NOT_SUPPORTED;  // the only combinations scanserve uses
  }
  if (m == 0 || n == 0) return CUBLAS_STATUS_SUCCESS;
  if (scanserve_emu::ShouldFail(scanserve_emu::FaultPoint::kGemm)) return CUBLAS_STATUS_EXECUTION_FAILED;
  const float a = *static_cast<const float*>(alpha);
  const float b = *static_cast<const float*>(beta);
  if (k > 0) {
    CheckOperand("A", A, Atype, ta ? k : m, ta ? m : k, lda);
    CheckOperand("B", B, Btype, tb ? n : k, tb ? k : n, ldb);
  }
  CheckOperand("C", C, Ctype, m, n, ldc);
  float* c = static_cast<float*>(C);
  // Queued on the handle's stream, as cuBLAS enqueues its kernels; alpha and beta are host
  // values (CUBLAS_POINTER_MODE_HOST), read now.
  scanserve_emu::Enqueue(handle->stream, [=] {
    // op(A) row i and op(B) column j as contiguous fp32 vectors, then 8 partial sums per dot.
    std::vector<float> rows_a(static_cast<size_t>(m) * k), cols_b(static_cast<size_t>(n) * k);
    for (int i = 0; i < m; ++i) {
      for (int p = 0; p < k; ++p) {
        rows_a[static_cast<size_t>(i) * k + p] =
            Element(A, Atype, ta ? int64_t{i} * lda + p : int64_t{p} * lda + i);
      }
    }
    for (int j = 0; j < n; ++j) {
      for (int p = 0; p < k; ++p) {
        cols_b[static_cast<size_t>(j) * k + p] =
            Element(B, Btype, tb ? int64_t{p} * ldb + j : int64_t{j} * ldb + p);
      }
    }
    for (int j = 0; j < n; ++j) {
      const float* y = cols_b.data() + static_cast<size_t>(j) * k;
      for (int i = 0; i < m; ++i) {
        const float* x = rows_a.data() + static_cast<size_t>(i) * k;
        float part[8] = {0, 0, 0, 0, 0, 0, 0, 0};
        int p = 0;
        for (; p + 8 <= k; p += 8) {
          for (int u = 0; u < 8; ++u) part[u] += x[p + u] * y[p + u];
        }
        float dot = 0.0f;
        for (; p < k; ++p) dot += x[p] * y[p];
        for (float v : part) dot += v;
        float& out = c[static_cast<size_t>(j) * ldc + i];
        out = b == 0.0f ? a * dot : a * dot + b * out;  // beta == 0: C is not read
      }
    }
  });
  return CUBLAS_STATUS_SUCCESS;
}
