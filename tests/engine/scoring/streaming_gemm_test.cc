// The streaming GEMM against a double-precision product and against GemmNT (the BLAS), on random
// data: every kernel this CPU runs in both forms (dot, outer), fp32 and bf16 stored rows, tile and
// block remainders in every direction.
#include "engine/scoring/streaming_gemm.h"

#include <algorithm>
#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "engine/common/bfloat16.h"
#include "engine/scoring/gemm.h"
#include "gtest/gtest.h"

namespace scanserve {
namespace {

std::vector<StreamingGemmIsa> IsasThisCpuRuns() {
  std::vector<StreamingGemmIsa> out;
  const StreamingGemmIsa best = BestStreamingGemmIsa();
  if (best == StreamingGemmIsa::kAvx2 || best == StreamingGemmIsa::kAvx512) {
    out.push_back(StreamingGemmIsa::kAvx2);
  }
  if (best == StreamingGemmIsa::kAvx512) out.push_back(StreamingGemmIsa::kAvx512);
  return out;
}

std::vector<StreamingGemmForm> FormsOf(StreamingGemmIsa isa) {
  if (isa == StreamingGemmIsa::kAvx512) return {StreamingGemmForm::kDot, StreamingGemmForm::kOuter};
  return {StreamingGemmForm::kDot};
}

struct Problem {
  int64_t m, n, k, lda, ldb, ldc;
  std::vector<float> a;        // m x lda, bf16-representable when bf16 rows are tested
  std::vector<uint16_t> a16;   // the same values as bf16
  std::vector<float> b;        // n x ldb
};

Problem MakeProblem(int64_t m, int64_t n, int64_t k, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> g(0.0f, 1.0f);
  Problem p{m, n, k, k + 7, k + 3, n + 5, {}, {}, {}};
  p.a.resize(m * p.lda);
  p.a16.resize(m * p.lda);
  for (size_t i = 0; i < p.a.size(); ++i) {
    p.a16[i] = FloatToBFloat16(g(rng));
    p.a[i] = BFloat16ToFloat(p.a16[i]);
  }
  p.b.resize(n * p.ldb);
  for (float& v : p.b) v = g(rng);
  return p;
}

// |c - exact| against the sum of |a||b| (the product's own rounding scale).
void ExpectMatchesExact(const Problem& p, const std::vector<float>& c, const char* what) {
  for (int64_t i = 0; i < p.m; ++i) {
    for (int64_t j = 0; j < p.n; ++j) {
      double exact = 0.0, scale = 0.0;
      for (int64_t t = 0; t < p.k; ++t) {
        const double x = p.a[i * p.lda + t], y = p.b[j * p.ldb + t];
        exact += x * y;
        scale += std::abs(x * y);
      }
      ASSERT_NEAR(c[i * p.ldc + j], exact, 2e-6 * scale + 1e-30)
          << what << " m=" << p.m << " n=" << p.n << " k=" << p.k << " at (" << i << ", " << j
          << ")";
    }
    for (int64_t j = p.n; j < p.ldc; ++j) {
      ASSERT_EQ(c[i * p.ldc + j], -7.0f) << what << ": wrote past n at row " << i;
    }
  }
}

TEST(StreamingGemmTest, MatchesExactProductsForEveryTileShape) {
  const std::vector<StreamingGemmIsa> isas = IsasThisCpuRuns();
  if (isas.empty()) GTEST_SKIP() << "this CPU has neither AVX2 + FMA nor AVX-512";
  uint32_t seed = 1;
  for (StreamingGemmIsa isa : isas) {
    // k: within one packed block (128), a block and a part, many blocks. m: panels of 24, 12,
    // 8 and 6 rows and what is left of them. n: one to five column panels, whole or partial,
    // and 1 to 4 rows past whole vectors (the outer form's dot-product remainder).
    for (int64_t k : {32, 64, 96, 160, 1024}) {
      for (int64_t m : {1, 2, 3, 5, 6, 7, 11, 13, 25, 50}) {
        for (int64_t n : {1, 2, 3, 7, 8, 9, 16, 19, 20, 33, 36, 50, 52, 64, 70}) {
          if (k == 1024 && m > 13 && n > 9) continue;  // the large case once per ISA below
          const Problem p = MakeProblem(m, n, k, seed++);
          for (StreamingGemmForm form : FormsOf(isa)) {
            for (StreamedRowType type : {StreamedRowType::kFloat32, StreamedRowType::kBFloat16}) {
              absl::StatusOr<StreamingGemmQueries> q =
                  StreamingGemmQueries::Pack(isa, type, form, p.b.data(), n, k, p.ldb);
              ASSERT_TRUE(q.ok()) << q.status();
              std::vector<float> c(m * p.ldc, -7.0f);
              const absl::Status st =
                  type == StreamedRowType::kFloat32
                      ? StreamingGemmNT(*q, m, p.a.data(), p.lda, c.data(), p.ldc)
                      : StreamingGemmNT(*q, m, p.a16.data(), p.lda, c.data(), p.ldc);
              ASSERT_TRUE(st.ok()) << st;
              const std::string what =
                  absl::StrCat(StreamingGemmIsaName(isa), " ", StreamingGemmFormName(form), " ",
                               type == StreamedRowType::kFloat32 ? "fp32" : "bf16");
              ExpectMatchesExact(p, c, what.c_str());
            }
          }
        }
      }
    }
  }
}

// The shape of a scoring pass (a block of stored rows, a caption or a few), against the BLAS.
TEST(StreamingGemmTest, AgreesWithGemmNTOnAScoringBlock) {
  const std::vector<StreamingGemmIsa> isas = IsasThisCpuRuns();
  if (isas.empty()) GTEST_SKIP() << "this CPU has neither AVX2 + FMA nor AVX-512";
  for (StreamingGemmIsa isa : isas) {
    for (int64_t n : {16, 40, 61}) {
      const Problem p = MakeProblem(1021, n, 1024, 99 + static_cast<uint32_t>(n));
      std::vector<float> blas(p.m * p.ldc, -7.0f);
      ASSERT_TRUE(GemmNT(p.m, n, p.k, p.a.data(), p.lda, p.b.data(), p.ldb, blas.data(), p.ldc).ok());
      for (StreamedRowType type : {StreamedRowType::kFloat32, StreamedRowType::kBFloat16}) {
        // The form the scorer would choose for this pass.
        absl::StatusOr<StreamingGemmQueries> q =
            StreamingGemmQueries::Pack(isa, type, p.b.data(), n, p.k, p.ldb);
        ASSERT_TRUE(q.ok()) << q.status();
        std::vector<float> c(p.m * p.ldc, -7.0f);
        ASSERT_TRUE((type == StreamedRowType::kFloat32
                         ? StreamingGemmNT(*q, p.m, p.a.data(), p.lda, c.data(), p.ldc)
                         : StreamingGemmNT(*q, p.m, p.a16.data(), p.lda, c.data(), p.ldc))
                        .ok());
        // Both are within rounding of the exact product, summed in different orders: measured
        // against the sum of |a||b|, as in the test above.
        double worst = 0.0;
        for (int64_t i = 0; i < p.m; ++i) {
          for (int64_t j = 0; j < n; ++j) {
            double scale = 0.0;
            for (int64_t t = 0; t < p.k; ++t) {
              scale += std::abs(double{p.a[i * p.lda + t]} * p.b[j * p.ldb + t]);
            }
            worst = std::max(worst, std::abs(c[i * p.ldc + j] - blas[i * p.ldc + j]) / scale);
          }
        }
        EXPECT_LT(worst, 4e-6) << StreamingGemmIsaName(isa) << " "
                               << StreamingGemmFormName(q->form()) << " n=" << n;
      }
    }
  }
}

TEST(StreamingGemmTest, ChoosesTheOuterFormOnAvx512ForFp32RowsAndWideBf16Passes) {
  for (int64_t n : {1, 16, 64}) {
    EXPECT_EQ(ChooseStreamingGemmForm(StreamingGemmIsa::kAvx512, StreamedRowType::kFloat32, n),
              StreamingGemmForm::kOuter);
    EXPECT_EQ(ChooseStreamingGemmForm(StreamingGemmIsa::kAvx2, StreamedRowType::kFloat32, n),
              StreamingGemmForm::kDot);
    EXPECT_EQ(ChooseStreamingGemmForm(StreamingGemmIsa::kAvx2, StreamedRowType::kBFloat16, n),
              StreamingGemmForm::kDot);
  }
  EXPECT_EQ(ChooseStreamingGemmForm(StreamingGemmIsa::kAvx512, StreamedRowType::kBFloat16, 19),
            StreamingGemmForm::kDot);
  EXPECT_EQ(ChooseStreamingGemmForm(StreamingGemmIsa::kAvx512, StreamedRowType::kBFloat16, 32),
            StreamingGemmForm::kOuter);
}

TEST(StreamingGemmTest, RefusesWhatItCannotRun) {
  std::vector<float> b(4 * 64, 1.0f);
  EXPECT_EQ(StreamingGemmQueries::Pack(StreamingGemmIsa::kNone, StreamedRowType::kFloat32,
                                       b.data(), 4, 64, 64)
                .status()
                .code(),
            absl::StatusCode::kFailedPrecondition);
  const StreamingGemmIsa best = BestStreamingGemmIsa();
  if (best == StreamingGemmIsa::kNone) GTEST_SKIP() << "no streaming kernel on this CPU";
  for (int64_t k : {0, 16, 48, 100}) {
    EXPECT_EQ(StreamingGemmQueries::Pack(best, StreamedRowType::kFloat32, b.data(), 2, k, 64)
                  .status()
                  .code(),
              absl::StatusCode::kInvalidArgument)
        << k;
  }
  if (best == StreamingGemmIsa::kAvx512) {  // AVX2 kernels exist wherever AVX-512 ones do
    EXPECT_EQ(StreamingGemmQueries::Pack(StreamingGemmIsa::kAvx2, StreamedRowType::kFloat32,
                                         StreamingGemmForm::kOuter, b.data(), 4, 64, 64)
                  .status()
                  .code(),
              absl::StatusCode::kFailedPrecondition);
  }
  absl::StatusOr<StreamingGemmQueries> q =
      StreamingGemmQueries::Pack(best, StreamedRowType::kBFloat16, b.data(), 4, 64, 64);
  ASSERT_TRUE(q.ok()) << q.status();
  std::vector<float> a(64), c(4);
  // Packed for bf16 rows, given fp32 ones.
  EXPECT_EQ(StreamingGemmNT(*q, 1, a.data(), 64, c.data(), 4).code(),
            absl::StatusCode::kInvalidArgument);
  std::vector<uint16_t> a16(64);
  EXPECT_EQ(StreamingGemmNT(*q, 1, a16.data(), 32, c.data(), 4).code(),
            absl::StatusCode::kInvalidArgument);  // lda < dim
  EXPECT_EQ(StreamingGemmNT(*q, 1, a16.data(), 64, c.data(), 3).code(),
            absl::StatusCode::kInvalidArgument);  // ldc < rows
}

}  // namespace
}  // namespace scanserve
