// What the CPU's vector units can run, as the OS lets programs use them: picks the scorer's
// streaming GEMM kernels and OpenBLAS's kernel set, and tells whether bf16 arithmetic is native.
#pragma once

namespace scanserve {

// All false on other architectures than x86-64.
struct CpuVectorFeatures {
  bool avx2_fma = false;  // AVX2 and FMA: the Haswell kernels
  bool avx512f = false;   // AVX-512 F: the streaming GEMM's AVX-512 kernels
  bool avx512 = false;    // AVX-512 F, BW, DQ, VL and CD: the SkylakeX kernels
  // AVX512-BF16 or AMX-BF16: bf16 products in hardware. Without them LibTorch's CPU bf16
  // convolutions run emulated, several times slower than fp32.
  bool bf16 = false;
};

CpuVectorFeatures DetectCpuVectorFeatures();

}  // namespace scanserve
