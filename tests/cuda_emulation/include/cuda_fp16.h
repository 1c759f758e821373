// CUDA emulation (tests only): the fp16 storage types and the one conversion the kernels use.
#pragma once

#include <cstdint>
#include <cstring>

struct __half_raw {
  unsigned short x;
};
struct __half2_raw {
  unsigned short x, y;
};
struct __half {
  unsigned short __x;
};

inline __half __ushort_as_half(unsigned short bits) { return __half{bits}; }

// Exact, as cvt.f32.f16: every fp16 value (subnormals, infinities, NaN) is an fp32 value.
inline float __half2float(__half h) {
  const uint32_t sign = static_cast<uint32_t>(h.__x & 0x8000u) << 16;
  const uint32_t exp = (h.__x >> 10) & 0x1fu;
  const uint32_t mant = h.__x & 0x3ffu;
  uint32_t bits;
  if (exp == 0x1fu) {
    bits = sign | 0x7f800000u | (mant << 13);
  } else if (exp != 0) {
    bits = sign | ((exp + 112u) << 23) | (mant << 13);
  } else {  // zero or subnormal: mant * 2^-24, exact in fp32
    float f = static_cast<float>(mant) * (1.0f / 16777216.0f);
    std::memcpy(&bits, &f, sizeof(bits));
    bits |= sign;
  }
  float out;
  std::memcpy(&out, &bits, sizeof(out));
  return out;
}
