// bfloat16 storage helpers: the upper 16 bits of an IEEE fp32 value (1 sign, 8 exponent, 7 mantissa
// bits). Narrowing rounds to nearest, ties to even (as torch.Tensor.bfloat16() does); NaN stays a
// quiet NaN. Widening is exact. The array forms are plain loops the compiler vectorises.
#pragma once

#include <cstdint>
#include <cstring>

namespace scanserve {

inline uint16_t FloatToBFloat16(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, sizeof(bits));
  if ((bits & 0x7fffffffu) > 0x7f800000u) {  // NaN: keep the sign, force a quiet payload
    return static_cast<uint16_t>((bits >> 16) | 0x0040u);
  }
  // Round to nearest even: add 0x7fff plus the lowest kept bit, then truncate. Overflow rounds to
  // infinity, which is the correctly rounded result.
  const uint32_t lsb = (bits >> 16) & 1u;
  bits += 0x7fffu + lsb;
  return static_cast<uint16_t>(bits >> 16);
}

inline float BFloat16ToFloat(uint16_t h) {
  const uint32_t bits = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof(f));
  return f;
}

// n values, any alignment; src and dst must not overlap.
inline void FloatToBFloat16(const float* src, uint16_t* dst, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dst[i] = FloatToBFloat16(src[i]);
}

inline void BFloat16ToFloat(const uint16_t* src, float* dst, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dst[i] = BFloat16ToFloat(src[i]);
}

// The fp32 value a float becomes after a round trip through bfloat16.
inline float RoundToBFloat16(float f) { return BFloat16ToFloat(FloatToBFloat16(f)); }

}  // namespace scanserve
