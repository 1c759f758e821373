#include "engine/scoring/cpu_scorer.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <limits>
#include <new>
#include <optional>
#include <utility>

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define SCANSERVE_CPU_SCORER_AVX2 1
#endif

#include "absl/strings/str_cat.h"
#include "engine/common/status_macros.h"
#include "engine/common/vector_growth.h"
#include "engine/scoring/gemm.h"
#include "engine/scoring/streaming_gemm.h"

namespace scanserve {
namespace {

// The reference code's constants (scan-model.md).
constexpr float kL2NormEps = 1e-8f;   // l2norm: ADDED to the norm
constexpr float kCosineEps = 1e-8f;   // cosine_similarity: CLAMPS |x||y| from below
constexpr float kLeakySlope = 0.1f;   // LeakyReLU in clipped_l2norm / clipped

// ---------------------------------------------------------------------------------------------
// 8-lane fp32 vectors: AVX2+FMA when compiled for it (the default x86-64-v3 build), else plain
// loops. Everything in the epilogue is written against this.
constexpr int kLanes = 8;

#if SCANSERVE_CPU_SCORER_AVX2
using V8 = __m256;
inline V8 Load(const float* p) { return _mm256_loadu_ps(p); }
inline void Store(float* p, V8 v) { _mm256_storeu_ps(p, v); }
inline V8 Set1(float x) { return _mm256_set1_ps(x); }
inline V8 Zero() { return _mm256_setzero_ps(); }
inline V8 Add(V8 a, V8 b) { return _mm256_add_ps(a, b); }
inline V8 Sub(V8 a, V8 b) { return _mm256_sub_ps(a, b); }
inline V8 Mul(V8 a, V8 b) { return _mm256_mul_ps(a, b); }
inline V8 Div(V8 a, V8 b) { return _mm256_div_ps(a, b); }
inline V8 Max(V8 a, V8 b) { return _mm256_max_ps(a, b); }
inline V8 Sqrt(V8 a) { return _mm256_sqrt_ps(a); }
inline V8 Fma(V8 a, V8 b, V8 c) { return _mm256_fmadd_ps(a, b, c); }  // a * b + c
// Lanes [0, n) keep v, the others become `fill`.
inline V8 KeepFirst(V8 v, int n, float fill) {
  const V8 iota = _mm256_setr_ps(0, 1, 2, 3, 4, 5, 6, 7);
  const V8 keep = _mm256_cmp_ps(iota, Set1(static_cast<float>(n)), _CMP_LT_OQ);
  return _mm256_blendv_ps(Set1(fill), v, keep);
}
inline float HSum(V8 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}
inline float HMax(V8 v) {
  __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_max_ps(s, _mm_movehl_ps(s, s));
  s = _mm_max_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}
// exp(x), Cephes' single-precision polynomial (about 1 ulp). Inputs below -88.37 give 0 (for the
// softmax and LogSumExp uses here the argument is always <= 0).
inline V8 Exp(V8 x) {
  x = _mm256_min_ps(x, Set1(88.3762626647949f));
  x = _mm256_max_ps(x, Set1(-88.3762626647949f));
  V8 fx = Fma(x, Set1(1.44269504088896341f), Set1(0.5f));
  fx = _mm256_floor_ps(fx);
  x = _mm256_fnmadd_ps(fx, Set1(0.693359375f), x);
  x = _mm256_fnmadd_ps(fx, Set1(-2.12194440e-4f), x);
  V8 y = Set1(1.9875691500e-4f);
  y = Fma(y, x, Set1(1.3981999507e-3f));
  y = Fma(y, x, Set1(8.3334519073e-3f));
  y = Fma(y, x, Set1(4.1665795894e-2f));
  y = Fma(y, x, Set1(1.6666665459e-1f));
  y = Fma(y, x, Set1(5.0000001201e-1f));
  y = Fma(y, Mul(x, x), Add(x, Set1(1.0f)));
  __m256i e = _mm256_add_epi32(_mm256_cvttps_epi32(fx), _mm256_set1_epi32(127));
  e = _mm256_slli_epi32(e, 23);
  return Mul(y, _mm256_castsi256_ps(e));
}
#else
struct V8 {
  float v[kLanes];
};
template <typename F>
inline V8 Map(F f) {
  V8 r;
  for (int i = 0; i < kLanes; ++i) r.v[i] = f(i);
  return r;
}
inline V8 Load(const float* p) { return Map([&](int i) { return p[i]; }); }
inline void Store(float* p, V8 a) { std::memcpy(p, a.v, sizeof(a.v)); }
inline V8 Set1(float x) { return Map([&](int) { return x; }); }
inline V8 Zero() { return Set1(0.0f); }
inline V8 Add(V8 a, V8 b) { return Map([&](int i) { return a.v[i] + b.v[i]; }); }
inline V8 Sub(V8 a, V8 b) { return Map([&](int i) { return a.v[i] - b.v[i]; }); }
inline V8 Mul(V8 a, V8 b) { return Map([&](int i) { return a.v[i] * b.v[i]; }); }
inline V8 Div(V8 a, V8 b) { return Map([&](int i) { return a.v[i] / b.v[i]; }); }
inline V8 Max(V8 a, V8 b) { return Map([&](int i) { return std::max(a.v[i], b.v[i]); }); }
inline V8 Sqrt(V8 a) { return Map([&](int i) { return std::sqrt(a.v[i]); }); }
inline V8 Fma(V8 a, V8 b, V8 c) { return Map([&](int i) { return std::fma(a.v[i], b.v[i], c.v[i]); }); }
inline V8 KeepFirst(V8 a, int n, float fill) { return Map([&](int i) { return i < n ? a.v[i] : fill; }); }
inline float HSum(V8 a) {
  float s = 0.0f;
  for (float x : a.v) s += x;
  return s;
}
inline float HMax(V8 a) { return *std::max_element(a.v, a.v + kLanes); }
inline V8 Exp(V8 a) { return Map([&](int i) { return std::exp(a.v[i]); }); }
#endif

inline V8 LeakyRelu(V8 x) { return Max(x, Mul(x, Set1(kLeakySlope))); }

// ---------------------------------------------------------------------------------------------
// The per-pair epilogue.
//
// Inputs, for one (query, stored item) pair, in the attention's own terms: nc context rows (t2i:
// the image's regions, i2t: the caption's words) and nq attending rows (the other item's rows).
//   m[c * ld + q]   raw products <context_c, attending_q>, q < nq; lanes nq..ld-1 are zero
//   gram[c * nc + c']  <context_c, context_c'>
//   ynorm[q]        |attending_q|, zero-padded to ld
// ld is nq rounded up to kLanes. Scratch: a (nc x ld), e (nc x kLanes), r (ld).
struct PairScratch {
  std::vector<float> m, a, e, ynorm, r;

  void Reserve(int64_t nc, int64_t nq) {
    const int64_t ld = (nq + kLanes - 1) / kLanes * kLanes;
    if (static_cast<int64_t>(m.size()) < nc * ld) {
      m.resize(nc * ld);
      a.resize(nc * ld);
    }
    if (static_cast<int64_t>(e.size()) < nc * kLanes) e.resize(nc * kLanes);
    if (static_cast<int64_t>(r.size()) < ld) {
      r.resize(ld);
      ynorm.resize(ld);
    }
  }
};

// Step 1: a = λ1 · raw_feature_norm(m), the norm taken over the attending (query) axis for each
// context row. Lanes past nq of `a` are left finite (zero or a finite function of zero).
void NormaliseRows(const AttentionParams& p, int64_t nc, int64_t nq, int64_t ld, const float* m,
                   float* a) {
  const V8 lambda = Set1(p.lambda_softmax);
  for (int64_t c = 0; c < nc; ++c) {
    const float* mr = m + c * ld;
    float* ar = a + c * ld;
    switch (p.raw_feature_norm) {
      case RawFeatureNorm::kClippedL2Norm:
      case RawFeatureNorm::kL2Norm: {
        const bool clip = p.raw_feature_norm == RawFeatureNorm::kClippedL2Norm;
        V8 ss = Zero();
        for (int64_t q = 0; q < ld; q += kLanes) {
          V8 t = Load(mr + q);
          if (clip) t = LeakyRelu(t);
          Store(ar + q, t);
          ss = Fma(t, t, ss);  // padding lanes are zero
        }
        const float scale = p.lambda_softmax / (std::sqrt(HSum(ss)) + kL2NormEps);
        const V8 s = Set1(scale);
        for (int64_t q = 0; q < ld; q += kLanes) Store(ar + q, Mul(Load(ar + q), s));
        break;
      }
      case RawFeatureNorm::kClipped:
        for (int64_t q = 0; q < ld; q += kLanes) Store(ar + q, Mul(LeakyRelu(Load(mr + q)), lambda));
        break;
      case RawFeatureNorm::kNoNorm:
        for (int64_t q = 0; q < ld; q += kLanes) Store(ar + q, Mul(Load(mr + q), lambda));
        break;
      case RawFeatureNorm::kSoftmax: {
        // softmax over the attending axis: only lanes < nq take part.
        const float neg_inf = -std::numeric_limits<float>::infinity();
        V8 mx = Set1(neg_inf);
        for (int64_t q = 0; q < ld; q += kLanes) {
          mx = Max(mx, KeepFirst(Load(mr + q), static_cast<int>(nq - q), neg_inf));
        }
        const V8 vmax = Set1(HMax(mx));
        V8 sum = Zero();
        for (int64_t q = 0; q < ld; q += kLanes) {
          const V8 ex = KeepFirst(Exp(Sub(Load(mr + q), vmax)), static_cast<int>(nq - q), 0.0f);
          Store(ar + q, ex);
          sum = Add(sum, ex);
        }
        const V8 s = Set1(p.lambda_softmax / HSum(sum));
        for (int64_t q = 0; q < ld; q += kLanes) Store(ar + q, Mul(Load(ar + q), s));
        break;
      }
    }
  }
}

// Rows [c0, c0 + R) of the quadratic form's upper triangle: Σ_c e_c (G_cc e_c / 2 +
// Σ_{c' > c} G_cc' e_c'), e's rows kLanes apart.
template <int R>
inline V8 QuadFormRows(int64_t nc, int64_t c0, const float* gram, const float* e) {
  V8 t[R];
  // The triangle inside the R rows.
#pragma GCC unroll 8
  for (int i = 0; i < R; ++i) {
    const float* g = gram + (c0 + i) * nc;
    t[i] = Mul(Set1(0.5f * g[c0 + i]), Load(e + (c0 + i) * kLanes));
#pragma GCC unroll 8
    for (int j = i + 1; j < R; ++j) t[i] = Fma(Set1(g[c0 + j]), Load(e + (c0 + j) * kLanes), t[i]);
  }
  // The columns past them, one load of e's row shared by the R sums.
  for (int64_t c2 = c0 + R; c2 < nc; ++c2) {
    const V8 ec2 = Load(e + c2 * kLanes);
#pragma GCC unroll 8
    for (int i = 0; i < R; ++i) t[i] = Fma(Set1(gram[(c0 + i) * nc + c2]), ec2, t[i]);
  }
  V8 quad = Mul(Load(e + c0 * kLanes), t[0]);
#pragma GCC unroll 8
  for (int i = 1; i < R; ++i) quad = Fma(Load(e + (c0 + i) * kLanes), t[i], quad);
  return quad;
}

// Steps 2-4 for the lanes q0..q0+7: w = softmax over the context axis of a[:, q],
// <y_q, att_q> = Σ_c w_c m[c, q], |att_q|² = wᵀ G w, r_q = cosine with the clamp.
void AttendChunk(int64_t nc, int64_t ld, int64_t q0, const float* m, const float* a,
                 const float* gram, const float* ynorm, float* e, float* r) {
  V8 mx = Load(a + q0);
  for (int64_t c = 1; c < nc; ++c) mx = Max(mx, Load(a + c * ld + q0));
  V8 sum = Zero();
  V8 dot = Zero();
  for (int64_t c = 0; c < nc; ++c) {
    const V8 ex = Exp(Sub(Load(a + c * ld + q0), mx));
    Store(e + c * kLanes, ex);
    sum = Add(sum, ex);
    dot = Fma(ex, Load(m + c * ld + q0), dot);
  }
  // eᵀ G e over the upper triangle: Σ_c e_c (G_cc e_c / 2 + Σ_{c' > c} G_cc' e_c'), doubled.
  // Rows are taken 8 (then 4, then 1) at a time: their sums are independent FMA chains, where
  // one row's sum alone would wait on each FMA's latency.
  V8 quad = Zero();
  int64_t c = 0;
  for (; c + 8 <= nc; c += 8) quad = Add(quad, QuadFormRows<8>(nc, c, gram, e));
  for (; c + 4 <= nc; c += 4) quad = Add(quad, QuadFormRows<4>(nc, c, gram, e));
  for (; c < nc; ++c) quad = Add(quad, QuadFormRows<1>(nc, c, gram, e));
  // w = e / sum, so <y, att> = dot / sum and |att|² = 2 quad / sum².
  const V8 inv = Div(Set1(1.0f), sum);
  const V8 num = Mul(dot, inv);
  const V8 att_norm = Mul(Sqrt(Max(Add(quad, quad), Zero())), inv);
  const V8 den = Max(Mul(Load(ynorm + q0), att_norm), Set1(kCosineEps));
  Store(r + q0, Div(num, den));
}

// Step 5: pools r[0..nq).
float Pool(const AttentionParams& p, int64_t nq, const float* r) {
  switch (p.pooling) {
    case Pooling::kLogSumExp: {
      // log(Σ exp(λ2 r)) / λ2, shifted by the maximum.
      const float neg_inf = -std::numeric_limits<float>::infinity();
      const V8 l2 = Set1(p.lambda_lse);
      V8 mx = Set1(neg_inf);
      for (int64_t q = 0; q < nq; q += kLanes) {
        mx = Max(mx, KeepFirst(Mul(Load(r + q), l2), static_cast<int>(nq - q), neg_inf));
      }
      const float m = HMax(mx);
      const V8 vm = Set1(m);
      V8 sum = Zero();
      for (int64_t q = 0; q < nq; q += kLanes) {
        sum = Add(sum, KeepFirst(Exp(Sub(Mul(Load(r + q), l2), vm)), static_cast<int>(nq - q), 0.0f));
      }
      return (m + std::log(HSum(sum))) / p.lambda_lse;
    }
    case Pooling::kMean:
    case Pooling::kSum: {
      V8 sum = Zero();
      for (int64_t q = 0; q < nq; q += kLanes) {
        sum = Add(sum, KeepFirst(Load(r + q), static_cast<int>(nq - q), 0.0f));
      }
      const float s = HSum(sum);
      return p.pooling == Pooling::kSum ? s : s / static_cast<float>(nq);
    }
    case Pooling::kMax: {
      const float neg_inf = -std::numeric_limits<float>::infinity();
      V8 mx = Set1(neg_inf);
      for (int64_t q = 0; q < nq; q += kLanes) {
        mx = Max(mx, KeepFirst(Load(r + q), static_cast<int>(nq - q), neg_inf));
      }
      return HMax(mx);
    }
  }
  return 0.0f;
}

// The score of one pair; scratch.m and scratch.ynorm already hold the pair's inputs.
float ScorePair(const AttentionParams& p, int64_t nc, int64_t nq, const float* gram,
                PairScratch& s) {
  const int64_t ld = (nq + kLanes - 1) / kLanes * kLanes;
  NormaliseRows(p, nc, nq, ld, s.m.data(), s.a.data());
  for (int64_t q0 = 0; q0 < ld; q0 += kLanes) {
    AttendChunk(nc, ld, q0, s.m.data(), s.a.data(), gram, s.ynorm.data(), s.e.data(), s.r.data());
  }
  return Pool(p, nq, s.r.data());
}

// ---------------------------------------------------------------------------------------------

float RowNorm(const float* x, int64_t d) {
  double ss = 0.0;
  for (int64_t i = 0; i < d; ++i) ss += static_cast<double>(x[i]) * x[i];
  return static_cast<float>(std::sqrt(ss));
}

// Buffers of one pool thread during a ScoreAll call.
struct ThreadScratch {
  std::unique_ptr<float[]> widened;  // block_rows x dim: a bf16/fp8 block widened to fp32
  std::unique_ptr<float[]> product;  // block_rows x group rows: the block's GEMM output
  int64_t widened_size = 0, product_size = 0;
  int64_t widened_block = -1;  // which block `widened` holds in the current call
  PairScratch pair;

  float* Widened(int64_t n) { return Grow(widened, widened_size, n); }
  float* Product(int64_t n) { return Grow(product, product_size, n); }

 private:
  static float* Grow(std::unique_ptr<float[]>& buf, int64_t& size, int64_t n) {
    if (n > size) {
      buf.reset();              // release first: never hold both
      buf.reset(new float[n]);  // uninitialised: every element read is written first
      size = n;
    }
    return buf.get();
  }
};

// A block of consecutive arena rows [row_begin, row_end) holding the live slots `slots`.
struct Block {
  int64_t row_begin = 0;
  int64_t row_end = 0;
  std::vector<int64_t> slots;
};

// Consecutive queries whose rows are stacked into one GEMM operand.
struct QueryGroup {
  int64_t first = 0;  // query index
  int64_t count = 0;
  int64_t row_begin = 0;  // into the packed query rows
  int64_t rows = 0;
};

}  // namespace

struct CpuScorer::ScoreScratch {
  std::vector<ThreadScratch> threads;  // slot t: pool thread t
};

CpuScorer::~CpuScorer() = default;

std::unique_ptr<CpuScorer::ScoreScratch> CpuScorer::AcquireScratch() const {
  {
    std::lock_guard<std::mutex> lock(scratch_mu_);
    if (!free_scratch_.empty()) {
      std::unique_ptr<ScoreScratch> s = std::move(free_scratch_.back());
      free_scratch_.pop_back();
      return s;
    }
  }
  auto s = std::make_unique<ScoreScratch>();
  s->threads.resize(pool_->num_threads());
  return s;
}

void CpuScorer::ReleaseScratch(std::unique_ptr<ScoreScratch> scratch) const {
  std::lock_guard<std::mutex> lock(scratch_mu_);
  free_scratch_.push_back(std::move(scratch));
}

CpuScorer::CpuScorer(const ScorerConfig& config, const CpuScorerOptions& options)
    : Scorer(config), options_(options), arena_(config.storage, config.dim) {
  const bool t2i = config.attention.cross_attn == CrossAttention::kTextToImage;
  stored_is_context_ = t2i == (config.stored_kind == ItemKind::kImage);
  pool_ = std::make_unique<ThreadPool>(config.num_threads > 0 ? config.num_threads
                                                              : ThreadPool::DefaultThreadCount());
}

absl::StatusOr<std::unique_ptr<CpuScorer>> CpuScorer::Create(const ScorerConfig& config,
                                                             const CpuScorerOptions& options) {
  SCANSERVE_RETURN_IF_ERROR(ValidateScorerConfig(config));
  if (options.block_rows < 1 || options.min_block_rows < 1 || options.query_block_rows < 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "CpuScorerOptions: block_rows, min_block_rows and query_block_rows must be >= 1, got ",
        options.block_rows, ", ", options.min_block_rows, " and ", options.query_block_rows));
  }
  if (options.streaming_max_query_rows < 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "CpuScorerOptions: streaming_max_query_rows must be >= 0, got ",
        options.streaming_max_query_rows));
  }
  if (!(options.compact_dead_fraction >= 0.0 && options.compact_dead_fraction <= 1.0)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "CpuScorerOptions: compact_dead_fraction must be in [0, 1], got ",
        options.compact_dead_fraction));
  }
  if (config.num_threads > 0) SetComputeThreads(config.num_threads);
  return std::unique_ptr<CpuScorer>(new CpuScorer(config, options));
}

std::vector<int64_t> CpuScorer::keys() const {
  std::vector<int64_t> out;
  out.reserve(live_slots_.size());
  for (int64_t s : live_slots_) out.push_back(slots_[s].key);
  return out;
}

int64_t CpuScorer::memory_bytes() const {
  return arena_.memory_bytes() +
         static_cast<int64_t>(row_norms_.size() * sizeof(float) + grams_.size() * sizeof(float) +
                              slots_.size() * sizeof(Slot));
}

absl::Status CpuScorer::AddImpl(absl::Span<const int64_t> keys, absl::Span<const ItemView> items) {
  const int64_t d = config().dim;
  const int64_t num_items = static_cast<int64_t>(items.size());
  std::vector<int64_t> item_row(num_items + 1, 0);   // relative to the first new row
  std::vector<int64_t> item_gram(num_items + 1, 0);  // relative to the first new Gram value
  for (int64_t i = 0; i < num_items; ++i) {
    item_row[i + 1] = item_row[i] + items[i].rows;
    item_gram[i + 1] = item_gram[i] + (stored_is_context_ ? items[i].rows * items[i].rows : 0);
  }
  const int64_t row0 = total_rows_;
  const int64_t gram0 = static_cast<int64_t>(grams_.size());

  // The new items are written past the end of the arena first; the keys are committed only once
  // everything succeeded, and a failure truncates the arena back (so nothing is changed).
  auto truncate = [&] {
    arena_.Resize(row0);
    row_norms_.resize(row0);
    grams_.resize(gram0);
  };
  try {
    arena_.Resize(row0 + item_row.back());
    GrowTo(row_norms_, row0 + item_row.back());
    GrowTo(grams_, gram0 + item_gram.back());
    slots_.reserve(slots_.size() + items.size());
    column_of_slot_.reserve(slots_.size() + items.size());
    live_slots_.reserve(live_slots_.size() + items.size());
    slot_of_key_.reserve(slot_of_key_.size() + items.size());
  } catch (const std::bad_alloc&) {
    truncate();
    return absl::ResourceExhaustedError(absl::StrCat("CpuScorer::Add: out of memory storing ",
                                                     item_row.back(), " rows of width ", d));
  }

  // Per item, in parallel: store (narrowing for bf16 and fp8), then the row norms and the Gram
  // matrix of the stored values.
  std::vector<absl::Status> errors(pool_->num_threads());
  std::vector<std::vector<float>> widened(pool_->num_threads());
  pool_->ParallelFor(num_items, 8, [&](int64_t i0, int64_t i1, int t) {
    for (int64_t i = i0; i < i1 && errors[t].ok(); ++i) {
      const ItemView& it = items[i];
      const int64_t row = row0 + item_row[i];
      const float* values = nullptr;
      arena_.Store(it.data, it.rows, row);
      if (arena_.narrowed()) {
        try {
          widened[t].resize(it.rows * d);
        } catch (const std::bad_alloc&) {
          errors[t] = absl::ResourceExhaustedError("CpuScorer::Add: out of memory widening an item");
          return;
        }
        arena_.Widen(row, it.rows, widened[t].data());
        values = widened[t].data();
      } else {
        values = arena_.Float32Rows(row);
      }
      for (int64_t r = 0; r < it.rows; ++r) row_norms_[row + r] = RowNorm(values + r * d, d);
      if (stored_is_context_) {
        errors[t] = GemmNT(it.rows, it.rows, d, values, d, values, d,
                           grams_.data() + gram0 + item_gram[i], it.rows, GemmThreading::kCaller);
      }
    }
  });
  for (const absl::Status& st : errors) {
    if (!st.ok()) {
      truncate();
      return st;
    }
  }

  // Commit (nothing below allocates beyond the reservations).
  bool tombstoned = false;
  for (size_t i = 0; i < keys.size(); ++i) {
    auto found = slot_of_key_.find(keys[i]);
    if (found != slot_of_key_.end()) {
      Tombstone(found->second);
      tombstoned = true;
    }
  }
  int64_t row = row0;
  int64_t g = gram0;
  for (size_t i = 0; i < keys.size(); ++i) {
    Slot slot;
    slot.key = keys[i];
    slot.row_begin = row;
    slot.rows = items[i].rows;
    slot.gram_begin = g;
    const int64_t id = static_cast<int64_t>(slots_.size());
    slots_.push_back(slot);
    slot_of_key_[keys[i]] = id;
    column_of_slot_.push_back(static_cast<int64_t>(live_slots_.size()));
    live_slots_.push_back(id);
    row += slot.rows;
    if (stored_is_context_) g += slot.rows * slot.rows;
    max_rows_ = std::max(max_rows_, slot.rows);
  }
  total_rows_ = row;
  if (tombstoned) {
    RebuildColumns();
    MaybeCompact();
  }
  return absl::OkStatus();
}

void CpuScorer::Tombstone(int64_t slot) {
  Slot& s = slots_[slot];
  SCANSERVE_CHECK(s.live);
  s.live = false;
  dead_rows_ += s.rows;
  slot_of_key_.erase(s.key);
}

void CpuScorer::RebuildColumns() {
  live_slots_.clear();
  for (int64_t s = 0; s < static_cast<int64_t>(slots_.size()); ++s) {
    if (slots_[s].live) {
      column_of_slot_[s] = static_cast<int64_t>(live_slots_.size());
      live_slots_.push_back(s);
    } else {
      column_of_slot_[s] = -1;
    }
  }
}

absl::Status CpuScorer::RemoveImpl(absl::Span<const int64_t> keys) {
  for (int64_t key : keys) Tombstone(slot_of_key_.at(key));
  RebuildColumns();
  MaybeCompact();
  return absl::OkStatus();
}

void CpuScorer::MaybeCompact() {
  if (dead_rows_ == 0) return;
  if (static_cast<double>(dead_rows_) <= options_.compact_dead_fraction * total_rows_ &&
      !live_slots_.empty()) {
    return;
  }
  const int64_t d = config().dim;
  const int64_t live_rows = total_rows_ - dead_rows_;
  RowArena arena(config().storage, d);
  std::vector<float> norms, grams;
  std::vector<Slot> slots;
  int64_t live_gram = 0;
  for (int64_t s : live_slots_) {
    if (stored_is_context_) live_gram += slots_[s].rows * slots_[s].rows;
  }
  try {
    arena.Resize(live_rows);
    norms.resize(live_rows);
    grams.resize(live_gram);
    slots.reserve(live_slots_.size());
  } catch (const std::bad_alloc&) {
    return;  // keep the tombstones; scoring skips them
  }
  int64_t row = 0;
  int64_t g = 0;
  for (int64_t s : live_slots_) {
    Slot slot = slots_[s];
    arena.CopyRows(arena_, slot.row_begin, slot.rows, row);
    std::memcpy(norms.data() + row, row_norms_.data() + slot.row_begin, slot.rows * sizeof(float));
    if (stored_is_context_) {
      std::memcpy(grams.data() + g, grams_.data() + slot.gram_begin,
                  slot.rows * slot.rows * sizeof(float));
    }
    slot.row_begin = row;
    slot.gram_begin = g;
    row += slot.rows;
    if (stored_is_context_) g += slot.rows * slot.rows;
    slot_of_key_[slot.key] = static_cast<int64_t>(slots.size());
    slots.push_back(slot);
  }
  arena_ = std::move(arena);
  row_norms_ = std::move(norms);
  grams_ = std::move(grams);
  slots_ = std::move(slots);
  total_rows_ = live_rows;
  dead_rows_ = 0;
  max_rows_ = 0;
  for (const Slot& s : slots_) max_rows_ = std::max(max_rows_, s.rows);
  column_of_slot_.resize(slots_.size());
  RebuildColumns();
}

absl::Status CpuScorer::ScoreAllImpl(absl::Span<const ItemView> queries,
                                     FloatMatrix* scores) const {
  const int64_t d = config().dim;
  const AttentionParams& params = config().attention;
  const int64_t num_queries = static_cast<int64_t>(queries.size());
  const int threads = pool_->num_threads();
  // Per-thread units need single-threaded GEMMs; where the BLAS cannot be steered they would
  // oversubscribe the cores, so fall back to the shared GEMM.
  const bool per_thread = options_.parallelism == CpuParallelism::kPerThreadUnits &&
                          (threads == 1 || CallerOnlyGemmSupported());
  if (live_slots_.empty()) return absl::OkStatus();

  // Plan. Queries: packed rows, row norms, and their Gram matrices when they are the context;
  // grouped into GEMM operands of at most query_block_rows rows.
  std::vector<int64_t> q_row(num_queries + 1, 0);
  std::vector<int64_t> q_gram(num_queries + 1, 0);
  int64_t max_query_rows = 0;
  for (int64_t j = 0; j < num_queries; ++j) {
    q_row[j + 1] = q_row[j] + queries[j].rows;
    q_gram[j + 1] = q_gram[j] + (stored_is_context_ ? 0 : queries[j].rows * queries[j].rows);
    max_query_rows = std::max(max_query_rows, queries[j].rows);
  }
  std::vector<float> q_values, q_norms, q_grams;
  std::vector<QueryGroup> groups;
  std::vector<Block> blocks;
  std::unique_ptr<ScoreScratch> scratch_set = AcquireScratch();
  struct Releaser {
    const CpuScorer* self;
    std::unique_ptr<ScoreScratch>* set;
    ~Releaser() { self->ReleaseScratch(std::move(*set)); }
  } releaser{this, &scratch_set};
  std::vector<ThreadScratch>& scratch = scratch_set->threads;
  int64_t max_group_rows = 0;
  int64_t max_block_rows = 0;
  // Groups with few rows stream the stored rows (streaming_gemm.h); their queries are packed once.
  std::vector<std::optional<StreamingGemmQueries>> streamed;
  const StreamedRowType streamed_type = config().storage == StorageType::kBFloat16
                                            ? StreamedRowType::kBFloat16
                                            : StreamedRowType::kFloat32;  // fp8: widened first
  try {
    q_values.resize(q_row.back() * d);
    q_norms.resize(q_row.back());
    q_grams.resize(q_gram.back());
    for (int64_t j = 0; j < num_queries; ++j) {
      float* dst = q_values.data() + q_row[j] * d;
      std::memcpy(dst, queries[j].data, queries[j].rows * d * sizeof(float));
      for (int64_t r = 0; r < queries[j].rows; ++r) q_norms[q_row[j] + r] = RowNorm(dst + r * d, d);
    }
    for (int64_t j = 0; j < num_queries; ++j) {
      if (groups.empty() || groups.back().rows + queries[j].rows > options_.query_block_rows) {
        groups.push_back(QueryGroup{j, 0, q_row[j], 0});
      }
      groups.back().count += 1;
      groups.back().rows += queries[j].rows;
      max_group_rows = std::max(max_group_rows, groups.back().rows);
    }

    // Stored items: blocks of whole live items, consecutive in the arena (a tombstone inside a
    // block costs GEMM rows but no epilogue). Per-thread units shrink blocks (not below
    // min_block_rows) so that every thread gets about four (block, group) units.
    int64_t block_rows = options_.block_rows;
    if (per_thread && threads > 1) {
      const int64_t num_groups = static_cast<int64_t>(groups.size());
      const int64_t want_blocks = (4 * threads + num_groups - 1) / num_groups;
      const int64_t live_rows = total_rows_ - dead_rows_;
      block_rows = std::clamp((live_rows + want_blocks - 1) / want_blocks,
                              std::min(options_.min_block_rows, options_.block_rows),
                              options_.block_rows);
    }
    for (int64_t s : live_slots_) {
      const Slot& slot = slots_[s];
      if (blocks.empty() || slot.row_begin + slot.rows - blocks.back().row_begin > block_rows) {
        blocks.push_back(Block{slot.row_begin, slot.row_begin, {}});
      }
      blocks.back().row_end = slot.row_begin + slot.rows;
      blocks.back().slots.push_back(s);
      max_block_rows = std::max(max_block_rows, blocks.back().row_end - blocks.back().row_begin);
    }

    streamed.resize(groups.size());
    const StreamingGemmIsa isa = BestStreamingGemmIsa();
    if (per_thread && isa != StreamingGemmIsa::kNone && d % kStreamingGemmDimMultiple == 0) {
      for (size_t g = 0; g < groups.size(); ++g) {
        if (groups[g].rows > options_.streaming_max_query_rows) continue;
        absl::StatusOr<StreamingGemmQueries> packed = StreamingGemmQueries::Pack(
            isa, streamed_type, q_values.data() + groups[g].row_begin * d, groups[g].rows, d, d);
        if (!packed.ok()) return packed.status();
        streamed[g] = std::move(packed).value();
      }
    }
    // Streamed bf16 rows are widened as the kernel loads them: no widening buffer then.
    const bool widens = arena_.narrowed() &&
                        !std::all_of(streamed.begin(), streamed.end(), [](const auto& q) {
                          return q && q->row_type() == StreamedRowType::kBFloat16;
                        });

    const int64_t nc_max = stored_is_context_ ? max_rows_ : max_query_rows;
    const int64_t nq_max = stored_is_context_ ? max_query_rows : max_rows_;
    for (int t = 0; t < threads; ++t) {
      ThreadScratch& ts = scratch[t];
      ts.widened_block = -1;
      ts.pair.Reserve(nc_max, nq_max);
      if (per_thread || t == 0) {
        if (widens) ts.Widened(max_block_rows * d);
        ts.Product(max_block_rows * max_group_rows);
      }
    }
  } catch (const std::bad_alloc&) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "CpuScorer::ScoreAll: out of memory for ", num_queries, " queries (", q_row.back(),
        " rows)"));
  }
  if (!stored_is_context_) {
    for (int64_t j = 0; j < num_queries; ++j) {
      const float* x = q_values.data() + q_row[j] * d;
      SCANSERVE_RETURN_IF_ERROR(GemmNT(queries[j].rows, queries[j].rows, d, x, d, x, d,
                                       q_grams.data() + q_gram[j], queries[j].rows));
    }
  }

  // The block's rows as fp32: the arena itself, or (bf16, fp8) widened into `ts` by rows [b, e).
  auto block_values = [&](int64_t block_id, ThreadScratch& ts) -> const float* {
    const Block& block = blocks[block_id];
    if (!arena_.narrowed()) return arena_.Float32Rows(block.row_begin);
    return ts.widened.get();
  };
  auto widen_rows = [&](int64_t block_id, ThreadScratch& ts, int64_t b, int64_t e) {
    arena_.Widen(blocks[block_id].row_begin + b, e - b, ts.widened.get() + b * d);
  };

  // The epilogue for pairs [begin, end) of (block, group); pair p = (item p / group.count, query
  // group.first + p % group.count). `product` is the block's rows x the group's rows.
  auto score_pairs = [&](const Block& block, const QueryGroup& group, const float* product,
                         int64_t begin, int64_t end, PairScratch& s) {
    const int64_t ldp = group.rows;
    for (int64_t p = begin; p < end; ++p) {
      const int64_t slot_id = block.slots[p / group.count];
      const int64_t j = group.first + p % group.count;
      const Slot& slot = slots_[slot_id];
      const float* pm =
          product + (slot.row_begin - block.row_begin) * ldp + (q_row[j] - group.row_begin);
      const int64_t qrows = queries[j].rows;
      // In the attention's terms: nc context rows, nq attending rows.
      const int64_t nc = stored_is_context_ ? slot.rows : qrows;
      const int64_t nq = stored_is_context_ ? qrows : slot.rows;
      const float* gram = stored_is_context_ ? grams_.data() + slot.gram_begin
                                             : q_grams.data() + q_gram[j];
      const float* ynorm = stored_is_context_ ? q_norms.data() + q_row[j]
                                              : row_norms_.data() + slot.row_begin;
      const int64_t ld = (nq + kLanes - 1) / kLanes * kLanes;
      float* m = s.m.data();
      // m[c][q] from the product, whose rows are stored rows and columns query rows.
      if (stored_is_context_) {
        for (int64_t c = 0; c < nc; ++c) {
          std::memcpy(m + c * ld, pm + c * ldp, nq * sizeof(float));
          std::fill(m + c * ld + nq, m + c * ld + ld, 0.0f);
        }
      } else {
        for (int64_t c = 0; c < nc; ++c) {
          for (int64_t q = 0; q < nq; ++q) m[c * ld + q] = pm[q * ldp + c];
          std::fill(m + c * ld + nq, m + c * ld + ld, 0.0f);
        }
      }
      std::memcpy(s.ynorm.data(), ynorm, nq * sizeof(float));
      std::fill(s.ynorm.data() + nq, s.ynorm.data() + ld, 0.0f);
      scores->at(j, column_of_slot_[slot_id]) = ScorePair(params, nc, nq, gram, s);
    }
  };

  const int64_t num_groups = static_cast<int64_t>(groups.size());
  const int64_t num_units = static_cast<int64_t>(blocks.size()) * num_groups;
  if (per_thread) {
    // Each thread takes whole (block, group) units: its own widening, single-threaded GEMM and
    // epilogue, with no barrier until the end. Units are block-major.
    std::vector<absl::Status> errors(threads);
    std::atomic<bool> failed{false};
    pool_->ParallelFor(num_units, 1, [&](int64_t u0, int64_t u1, int t) {
      ThreadScratch& ts = scratch[t];
      for (int64_t u = u0; u < u1 && !failed.load(std::memory_order_relaxed); ++u) {
        const int64_t block_id = u / num_groups;
        const Block& block = blocks[block_id];
        const std::optional<StreamingGemmQueries>& stream = streamed[u % num_groups];
        const QueryGroup& group = groups[u % num_groups];
        const int64_t rows = block.row_end - block.row_begin;
        const bool bf16_stream = stream && stream->row_type() == StreamedRowType::kBFloat16;
        if (arena_.narrowed() && !bf16_stream && ts.widened_block != block_id) {
          widen_rows(block_id, ts, 0, rows);
          ts.widened_block = block_id;
        }
        absl::Status st;
        if (bf16_stream) {
          st = StreamingGemmNT(*stream, rows, arena_.BFloat16Rows(block.row_begin), d,
                               ts.product.get(), group.rows);
        } else if (stream) {
          st = StreamingGemmNT(*stream, rows, block_values(block_id, ts), d, ts.product.get(),
                               group.rows);
        } else {
          st = GemmNT(rows, group.rows, d, block_values(block_id, ts), d,
                      q_values.data() + group.row_begin * d, d, ts.product.get(), group.rows,
                      GemmThreading::kCaller);
        }
        if (!st.ok()) {
          errors[t] = st;
          failed = true;
          return;
        }
        (stream ? streamed_products_ : blas_products_).fetch_add(1, std::memory_order_relaxed);
        score_pairs(block, group, ts.product.get(), 0,
                    static_cast<int64_t>(block.slots.size()) * group.count, ts.pair);
      }
    });
    for (const absl::Status& st : errors) SCANSERVE_RETURN_IF_ERROR(st);
    return absl::OkStatus();
  }

  // Shared: one unit at a time; BLAS threads split the GEMM, the pool splits widening and the
  // epilogue.
  ThreadScratch& ts0 = scratch[0];
  for (int64_t block_id = 0; block_id < static_cast<int64_t>(blocks.size()); ++block_id) {
    const Block& block = blocks[block_id];
    const int64_t rows = block.row_end - block.row_begin;
    if (arena_.narrowed()) {
      pool_->ParallelFor(rows, 64, [&](int64_t b, int64_t e, int) {
        widen_rows(block_id, ts0, b, e);
      });
    }
    for (const QueryGroup& group : groups) {
      SCANSERVE_RETURN_IF_ERROR(GemmNT(rows, group.rows, d, block_values(block_id, ts0), d,
                                       q_values.data() + group.row_begin * d, d,
                                       ts0.product.get(), group.rows, GemmThreading::kLibrary));
      blas_products_.fetch_add(1, std::memory_order_relaxed);
      const int64_t pairs = static_cast<int64_t>(block.slots.size()) * group.count;
      pool_->ParallelFor(pairs, 8, [&](int64_t begin, int64_t end, int t) {
        score_pairs(block, group, ts0.product.get(), begin, end, scratch[t].pair);
      });
    }
  }
  return absl::OkStatus();
}

}  // namespace scanserve
