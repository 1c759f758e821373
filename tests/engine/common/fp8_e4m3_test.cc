// The fp8 e4m3 codec against a brute-force model of the format: all 256 codes, rounding of random
// and tie values, saturation, and the per-row scale rule.
#include "engine/common/fp8_e4m3.h"

#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <vector>

#include "engine/common/bfloat16.h"
#include "gtest/gtest.h"

namespace scanserve {
namespace {

// The value of a code from the format's definition (bias 7, 3 mantissa bits, S.1111.111 = NaN).
double ModelValue(int code) {
  const int sign = code & 0x80 ? -1 : 1;
  const int e = (code >> 3) & 0xf, m = code & 7;
  if (e == 0) return sign * std::ldexp(m, -9);
  return sign * std::ldexp(8 + m, e - 10);
}

bool IsNanCode(int code) { return (code & 0x7f) == 0x7f; }

// Nearest finite e4m3 value, ties to the even code (even mantissa), saturating at 448.
uint8_t ModelEncode(float x) {
  if (std::isnan(x)) return std::signbit(x) ? 0xff : 0x7f;
  int best = -1;
  double best_err = 0;
  for (int code = 0; code < 256; ++code) {
    if (IsNanCode(code)) continue;
    if (std::signbit(x) != static_cast<bool>(code & 0x80)) continue;
    const double err = std::fabs(ModelValue(code) - static_cast<double>(x));
    if (best < 0 || err < best_err || (err == best_err && (code & 1) == 0)) {
      best = code;
      best_err = err;
    }
  }
  return static_cast<uint8_t>(best);
}

TEST(Fp8E4M3, EveryCodeDecodesToItsValueAndBack) {
  for (int code = 0; code < 256; ++code) {
    const float v = Fp8E4M3ToFloat(static_cast<uint8_t>(code));
    if (IsNanCode(code)) {
      EXPECT_TRUE(std::isnan(v)) << code;
      EXPECT_EQ(FloatToFp8E4M3(v) & 0x7f, 0x7f) << code;
      continue;
    }
    EXPECT_EQ(static_cast<double>(v), ModelValue(code)) << code;
    EXPECT_EQ(FloatToFp8E4M3(v), code) << code << " value " << v;
  }
  EXPECT_EQ(Fp8E4M3ToFloat(0x7e), 448.0f);
  EXPECT_EQ(Fp8E4M3ToFloat(0x01), std::ldexp(1.0f, -9));
  EXPECT_EQ(Fp8E4M3ToFloat(0x08), std::ldexp(1.0f, -6));
}

TEST(Fp8E4M3, RoundsToNearestEvenLikeTheModel) {
  std::mt19937 rng(7);
  std::uniform_real_distribution<float> log2_mag(-12.0f, 9.5f);
  std::bernoulli_distribution negative(0.5);
  for (int i = 0; i < 200000; ++i) {
    float x = std::exp2(log2_mag(rng));
    if (negative(rng)) x = -x;
    ASSERT_EQ(FloatToFp8E4M3(x), ModelEncode(x)) << "x = " << x;
  }
  // Exact midpoints between neighbouring codes (normal and subnormal): ties go to the even code.
  for (int code = 0; code < 0x7e; ++code) {
    const float mid = static_cast<float>((ModelValue(code) + ModelValue(code + 1)) / 2);
    EXPECT_EQ(FloatToFp8E4M3(mid), ModelEncode(mid)) << "midpoint above code " << code;
    EXPECT_EQ(FloatToFp8E4M3(mid) & 1, 0) << "midpoint above code " << code;
  }
  EXPECT_EQ(FloatToFp8E4M3(std::ldexp(1.0f, -10)), 0);  // half the smallest subnormal: to 0
  EXPECT_EQ(FloatToFp8E4M3(std::nextafter(std::ldexp(1.0f, -10), 1.0f)), 1);
  EXPECT_EQ(FloatToFp8E4M3(-0.0f), 0x80);
}

TEST(Fp8E4M3, SaturatesAtTheLargestFiniteValue) {
  for (float x : {448.0f, 460.0f, 464.0f, 1e6f, std::numeric_limits<float>::infinity()}) {
    EXPECT_EQ(FloatToFp8E4M3(x), 0x7e) << x;
    EXPECT_EQ(FloatToFp8E4M3(-x), 0xfe) << x;
  }
}

TEST(Fp8E4M3, RowScalePutsTheLargestValueInTheTopBinades) {
  std::mt19937 rng(11);
  std::uniform_real_distribution<float> log2_mag(-30.0f, 30.0f);
  for (int i = 0; i < 10000; ++i) {
    const float max_abs = std::exp2(log2_mag(rng));
    const int s = Fp8RowScaleExponent(max_abs);
    const double scaled = std::ldexp(static_cast<double>(max_abs), -s);
    EXPECT_LE(scaled, 448.0) << max_abs;
    EXPECT_GT(scaled, 224.0) << max_abs;
  }
  EXPECT_EQ(Fp8RowScaleExponent(0.0f), 0);
  EXPECT_EQ(Fp8RowScaleExponent(448.0f), 0);
  EXPECT_EQ(Fp8RowScaleExponent(449.0f), 1);
  EXPECT_EQ(Fp8RowScaleExponent(std::numeric_limits<float>::infinity()), 0);
}

TEST(Fp8E4M3, StoredRowsAreExactBf16ValuesWithinFourPercent) {
  // A stored value is code * 2^s: exactly representable in bf16 (what the CUDA path widens to),
  // and within half an e4m3 step (2^-4 relative) of the input for values near the row maximum.
  std::mt19937 rng(3);
  std::normal_distribution<float> normal(0.0f, 0.03f);
  const int64_t n = 1024;
  std::vector<float> row(n), back(n);
  std::vector<uint8_t> codes(n);
  for (int trial = 0; trial < 50; ++trial) {
    for (float& x : row) x = normal(rng);
    float scale = 0;
    FloatRowToFp8E4M3(row.data(), n, codes.data(), &scale);
    Fp8E4M3RowsToFloat(codes.data(), &scale, 1, n, back.data());
    float max_abs = 0;
    for (float x : row) max_abs = std::max(max_abs, std::fabs(x));
    for (int64_t i = 0; i < n; ++i) {
      EXPECT_EQ(RoundToBFloat16(back[i]), back[i]) << i;
      EXPECT_LE(std::fabs(back[i] - row[i]),
                std::max(std::fabs(row[i]) / 16.0f, max_abs * std::ldexp(1.0f, -9) / 448.0f * 2))
          << i;
    }
  }
}

}  // namespace
}  // namespace scanserve
