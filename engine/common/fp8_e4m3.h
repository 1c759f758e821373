// fp8 e4m3 storage with one power-of-two scale per row, shared bit for bit by the CPU scorer and
// the CUDA kernels (every function here is also a device function under nvcc).
//
// Format: OCP / CUDA "e4m3fn": 1 sign, 4 exponent (bias 7), 3 mantissa bits; no infinities, NaN
// is S.1111.111, largest finite 448, smallest subnormal 2^-9. Narrowing rounds to nearest, ties to
// even, and saturates at ±448 (as __nv_cvt_float_to_fp8 with __NV_SATFINITE).
//
// Why a per-row scale: SCAN features are l2-normalised (|x| ~ 0.03), far below e4m3's normal range
// (>= 2^-6), so unscaled they would all be subnormal. Why a power of two: x * 2^s is exact, so a
// stored value c * 2^s (c an e4m3 value, at most 4 significant bits) is also exactly a bf16 and an
// fp32 value; the CUDA backend can then widen it to bf16 for the tensor cores without rounding and
// score exactly what the CPU scores.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define SCANSERVE_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define SCANSERVE_HOST_DEVICE inline
#endif

namespace scanserve {

SCANSERVE_HOST_DEVICE uint32_t Fp8FloatBits(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(f);
#else
  uint32_t bits;
  std::memcpy(&bits, &f, sizeof(bits));
  return bits;
#endif
}

SCANSERVE_HOST_DEVICE float Fp8BitsToFloat(uint32_t bits) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(bits);
#else
  float f;
  std::memcpy(&f, &bits, sizeof(f));
  return f;
#endif
}

// x -> e4m3 code: integer arithmetic only, so host and device agree exactly.
SCANSERVE_HOST_DEVICE uint8_t FloatToFp8E4M3(float x) {
  const uint32_t bits = Fp8FloatBits(x);
  const uint8_t sign = static_cast<uint8_t>((bits >> 24) & 0x80u);
  const uint32_t mag = bits & 0x7fffffffu;
  if (mag > 0x7f800000u) return sign | 0x7f;  // NaN
  if (mag >= 0x43e00000u) return sign | 0x7e;  // >= 448 (and inf): saturate
  const int exp = static_cast<int>(mag >> 23) - 127;
  if (exp < -10) return sign;  // below half the smallest subnormal (2^-10 itself ties to 0)
  // The value's quantum in e4m3: 2^(exp - 3) for normals, 2^-9 below 2^-6.
  const int quantum_exp = (exp < -6 ? -6 : exp) - 3;
  const uint32_t significand = (mag & 0x7fffffu) | 0x800000u;  // value = significand * 2^(exp-23)
  const int shift = 23 + quantum_exp - exp;                     // 20..24
  uint32_t n = significand >> shift;
  const uint32_t rest = significand & ((1u << shift) - 1u);
  const uint32_t half = 1u << (shift - 1);
  if (rest > half || (rest == half && (n & 1u))) ++n;
  if (exp < -6) return sign | static_cast<uint8_t>(n);  // subnormal; n == 8 is 2^-6 (code 0x08)
  uint32_t exp_field = static_cast<uint32_t>(exp + 7);
  if (n == 16) {  // rounded up into the next binade
    n = 8;
    ++exp_field;
  }
  uint32_t code = (exp_field << 3) | (n - 8);
  if (code > 0x7eu) code = 0x7eu;
  return sign | static_cast<uint8_t>(code);
}

// e4m3 code -> its exact fp32 value.
SCANSERVE_HOST_DEVICE float Fp8E4M3ToFloat(uint8_t code) {
  const uint32_t sign = static_cast<uint32_t>(code & 0x80u) << 24;
  const uint32_t exp_field = (code >> 3) & 0xfu;
  const uint32_t mantissa = code & 0x7u;
  if (exp_field == 0xfu && mantissa == 0x7u) return Fp8BitsToFloat(sign | 0x7fc00000u);
  if (exp_field == 0) {  // mantissa * 2^-9: an exact small product
    return Fp8BitsToFloat(sign | Fp8FloatBits(static_cast<float>(mantissa) * (1.0f / 512.0f)));
  }
  return Fp8BitsToFloat(sign | ((exp_field + 120u) << 23) | (mantissa << 20));
}

// Row scale exponents stay in [-kFp8MaxScaleExponent, kFp8MaxScaleExponent], so that 2^s and 2^-s
// are normal floats and code * 2^s (code >= 2^-9) never becomes an fp32 subnormal.
constexpr int kFp8MaxScaleExponent = 117;

// The smallest s with max_abs * 2^-s <= 448, so the row's largest value lands in (224, 448]
// (clamped as above); 0 for an all-zero, fp32-subnormal or non-finite row. max_abs >= 0.
SCANSERVE_HOST_DEVICE int Fp8RowScaleExponent(float max_abs) {
  const uint32_t mag = Fp8FloatBits(max_abs) & 0x7fffffffu;
  if (mag < 0x00800000u || mag >= 0x7f800000u) return 0;
  // max_abs = m * 2^e, m in [1, 2); m * 2^(e - s) <= 448 = 1.75 * 2^8.
  const int e = static_cast<int>(mag >> 23) - 127;
  int s = e - 8;
  if ((mag & 0x7fffffu) > 0x600000u) ++s;  // m > 1.75
  if (s < -kFp8MaxScaleExponent) s = -kFp8MaxScaleExponent;
  if (s > kFp8MaxScaleExponent) s = kFp8MaxScaleExponent;
  return s;
}

// 2^s as a float, |s| <= kFp8MaxScaleExponent.
SCANSERVE_HOST_DEVICE float Fp8ScaleOf(int s) {
  return Fp8BitsToFloat(static_cast<uint32_t>(s + 127) << 23);
}

// One row of n floats -> n codes and the row's scale 2^s (x ~= code * scale).
inline void FloatRowToFp8E4M3(const float* x, int64_t n, uint8_t* codes, float* scale) {
  float max_abs = 0.0f;
  for (int64_t i = 0; i < n; ++i) max_abs = std::fmax(max_abs, std::fabs(x[i]));
  const int s = Fp8RowScaleExponent(max_abs);
  const float inverse = Fp8ScaleOf(-s);
  for (int64_t i = 0; i < n; ++i) codes[i] = FloatToFp8E4M3(x[i] * inverse);
  *scale = Fp8ScaleOf(s);
}

// rows x n codes (row-major) with their per-row scales -> floats, exactly. A 256-entry table:
// the CPU scorer widens every stored block this way on each pass.
inline void Fp8E4M3RowsToFloat(const uint8_t* codes, const float* scales, int64_t rows, int64_t n,
                               float* out) {
  struct Table {
    float value[256];
    Table() {
      for (int c = 0; c < 256; ++c) value[c] = Fp8E4M3ToFloat(static_cast<uint8_t>(c));
    }
  };
  static const Table table;
  for (int64_t r = 0; r < rows; ++r) {
    const float scale = scales[r];
    const uint8_t* row = codes + r * n;
    float* dst = out + r * n;
    for (int64_t i = 0; i < n; ++i) dst[i] = table.value[row[i]] * scale;
  }
}

}  // namespace scanserve
