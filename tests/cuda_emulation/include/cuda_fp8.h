// CUDA emulation (tests only): fp8 -> fp16 conversion as cvt.rn.f16x2.e4m3x2 does it on sm_89+.
// Every e4m3 value is an fp16 value (2^-9 .. 448), so the conversion is exact; NaN becomes fp16's
// canonical NaN. Only e4m3 is emulated.
#pragma once

#include <cstdio>
#include <cstdlib>

#include "cuda_fp16.h"

typedef unsigned char __nv_fp8_storage_t;
typedef unsigned short __nv_fp8x2_storage_t;
enum __nv_fp8_interpretation_t { __NV_E4M3, __NV_E5M2 };

namespace scanserve_emu {
// sign | exponent (bias 7) | 3 mantissa bits -> fp16 bits (bias 15, 10 mantissa bits).
inline unsigned short E4m3ToHalfBits(unsigned char code) {
  const unsigned sign = (code & 0x80u) << 8;
  const unsigned exp = (code >> 3) & 0xfu;
  const unsigned mant = code & 0x7u;
  if (exp == 0xfu && mant == 0x7u) return 0x7fffu;
  if (exp != 0) return static_cast<unsigned short>(sign | ((exp + 8u) << 10) | (mant << 7));
  if (mant == 0) return static_cast<unsigned short>(sign);
  // mant * 2^-9 with mant in 1..7: normalise to 1.f * 2^(top - 9), top = mant's highest bit.
  const unsigned top = mant >= 4u ? 2u : (mant >= 2u ? 1u : 0u);
  const unsigned fraction = (mant - (1u << top)) << (10u - top);
  return static_cast<unsigned short>(sign | ((top + 6u) << 10) | fraction);
}
}  // namespace scanserve_emu

inline __half2_raw __nv_cvt_fp8x2_to_halfraw2(__nv_fp8x2_storage_t x,
                                              __nv_fp8_interpretation_t kind) {
  if (kind != __NV_E4M3) {
    std::fprintf(stderr, "CUDA emulation: only e4m3 fp8 conversions are emulated\n");
    std::abort();
  }
  return __half2_raw{scanserve_emu::E4m3ToHalfBits(static_cast<unsigned char>(x & 0xffu)),
                     scanserve_emu::E4m3ToHalfBits(static_cast<unsigned char>(x >> 8))};
}
