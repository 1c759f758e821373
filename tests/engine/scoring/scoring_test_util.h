// Shared helpers for the scoring tests: random SCAN-like items and a CPU-vs-reference driver.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"

#include "engine/common/bfloat16.h"
#include "engine/common/fp8_e4m3.h"
#include "engine/common/matrix.h"
#include "engine/scoring/attention_params.h"
#include "engine/scoring/cpu_scorer.h"
#include "engine/scoring/reference_scorer.h"
#include "engine/scoring/scorer.h"

namespace scanserve {
namespace testing_util {

// |cpu - reference| / max(|reference|, kScoreScale) for fp32 storage. Scores are cosines, or
// sums / log-sum-exps of cosines, whose rounding is absolute on the unit scale, hence the floor.
constexpr double kFp32MaxRelErr = 1e-5;
constexpr double kScoreScale = 1.0;
// bf16 storage against the fp32 oracle on the original (unrounded) data: the same measure. bf16
// keeps 8 significant bits (relative rounding <= 2^-9); on SCAN-like data the scores move by
// ~3e-4 (measured), so 3e-3 leaves a 10x margin.
constexpr double kBf16MaxRelErr = 3e-3;
// Mean top-10 overlap (fraction of the fp32 top 10 that bf16 also returns) we require.
constexpr double kBf16MinTop10Overlap = 0.9;
// fp8 (e4m3, per-row power-of-two scale) keeps 4 significant bits (relative rounding <= 2^-4);
// on SCAN-like data (d = 1024, 36 regions) scores move by up to 6e-3 and the mean top-10 overlap
// with fp32 is 0.975 (t2i, 120 images; measured), so 3e-2 and 0.85 leave margins of 5x and ~6
// places in 100.
constexpr double kFp8MaxRelErr = 3e-2;
constexpr double kFp8MinTop10Overlap = 0.85;

// Items whose rows are l2-normalised mixtures of a few shared "concept" directions and noise, so
// that regions and words correlate the way trained SCAN embeddings do (peaked attention) rather
// than being near-orthogonal.
class ItemGenerator {
 public:
  ItemGenerator(int64_t dim, uint32_t seed, int num_concepts = 8) : dim_(dim), rng_(seed) {
    for (int i = 0; i < num_concepts; ++i) concepts_.push_back(Gaussian(1.0f));
  }

  // rows x dim, every row l2-normalised; `scale` > 1 multiplies every row by a random factor in
  // [1/scale, scale] (non-normalised inputs).
  FloatMatrix Item(int64_t rows, double scale = 1.0) {
    FloatMatrix m(rows, dim_);
    std::uniform_int_distribution<int> pick(0, static_cast<int>(concepts_.size()) - 1);
    std::uniform_real_distribution<float> mix(0.0f, 1.5f);
    std::uniform_real_distribution<double> log_scale(-std::log(scale), std::log(scale));
    for (int64_t r = 0; r < rows; ++r) {
      std::vector<float> v = Gaussian(mix(rng_));
      const std::vector<float>& c = concepts_[pick(rng_)];
      for (int64_t i = 0; i < dim_; ++i) v[i] += c[i];
      double ss = 0;
      for (float x : v) ss += static_cast<double>(x) * x;
      const double f = (scale > 1.0 ? std::exp(log_scale(rng_)) : 1.0) / std::sqrt(ss);
      for (int64_t i = 0; i < dim_; ++i) m.at(r, i) = static_cast<float>(v[i] * f);
    }
    return m;
  }

  int64_t Uniform(int64_t lo, int64_t hi) {
    return std::uniform_int_distribution<int64_t>(lo, hi)(rng_);
  }
  std::mt19937& rng() { return rng_; }

 private:
  // A Gaussian vector of norm ~`norm`.
  std::vector<float> Gaussian(float norm) {
    std::normal_distribution<float> g(0.0f, norm / std::sqrt(static_cast<float>(dim_)));
    std::vector<float> v(dim_);
    for (float& x : v) x = g(rng_);
    return v;
  }

  int64_t dim_;
  std::mt19937 rng_;
  std::vector<std::vector<float>> concepts_;
};

inline std::vector<ItemView> Views(const std::vector<FloatMatrix>& items) {
  std::vector<ItemView> v;
  for (const FloatMatrix& m : items) v.emplace_back(m);
  return v;
}

inline FloatMatrix RoundedToBFloat16(const FloatMatrix& m) {
  FloatMatrix r = m;
  for (float& x : r.data) x = RoundToBFloat16(x);
  return r;
}

// The values an item holds once stored in fp8 (e4m3 with a power-of-two scale per row).
inline FloatMatrix RoundedToFp8(const FloatMatrix& m) {
  FloatMatrix r = m;
  std::vector<uint8_t> codes(static_cast<size_t>(m.cols));
  for (int64_t row = 0; row < m.rows; ++row) {
    float scale = 0;
    FloatRowToFp8E4M3(m.data.data() + row * m.cols, m.cols, codes.data(), &scale);
    Fp8E4M3RowsToFloat(codes.data(), &scale, 1, m.cols, r.data.data() + row * m.cols);
  }
  return r;
}

inline FloatMatrix RoundedTo(StorageType storage, const FloatMatrix& m) {
  if (storage == StorageType::kBFloat16) return RoundedToBFloat16(m);
  if (storage == StorageType::kFp8E4M3) return RoundedToFp8(m);
  return m;
}

struct CompareOptions {
  ItemKind stored_kind = ItemKind::kImage;
  AttentionParams attention;
  StorageType storage = StorageType::kFloat32;
  int num_stored = 12;
  int num_queries = 4;
  int min_regions = 1, max_regions = 100;
  int min_words = 1, max_words = 40;
  int64_t dim = 32;
  int num_threads = 2;
  double row_scale = 1.0;  // see ItemGenerator::Item
  CpuScorerOptions cpu;
  uint32_t seed = 1;
  double max_rel_err = kFp32MaxRelErr;

  std::string ToString() const {
    return absl::StrCat(
        "stored=", stored_kind == ItemKind::kImage ? "image" : "caption",
        " cross_attn=", scanserve::ToString(attention.cross_attn),
        " norm=", scanserve::ToString(attention.raw_feature_norm),
        " pooling=", scanserve::ToString(attention.pooling), " l1=", attention.lambda_softmax,
        " l2=", attention.lambda_lse,
        " storage=", StorageTypeName(storage), " stored=", num_stored,
        " queries=", num_queries, " regions=", min_regions, "..", max_regions, " words=", min_words,
        "..", max_words, " dim=", dim, " threads=", num_threads, " row_scale=", row_scale,
        " parallelism=",
        cpu.parallelism == CpuParallelism::kPerThreadUnits ? "per_thread" : "shared",
        " block_rows=", cpu.block_rows, " min_block_rows=", cpu.min_block_rows,
        " query_block_rows=", cpu.query_block_rows,
        " seed=", seed);
  }
};

// max |a - b| / max(|b|, kScoreScale) over matching keys; columns are matched through the keys.
inline double MaxRelErr(const FloatMatrix& a, const std::vector<int64_t>& a_keys,
                        const FloatMatrix& b, const std::vector<int64_t>& b_keys,
                        std::string* worst = nullptr) {
  EXPECT_EQ(a.rows, b.rows);
  EXPECT_EQ(a.cols, b.cols);
  std::map<int64_t, int64_t> col_b;
  for (size_t i = 0; i < b_keys.size(); ++i) col_b[b_keys[i]] = static_cast<int64_t>(i);
  double max_err = 0.0;
  for (int64_t r = 0; r < a.rows; ++r) {
    for (size_t i = 0; i < a_keys.size(); ++i) {
      auto it = col_b.find(a_keys[i]);
      if (it == col_b.end()) {
        ADD_FAILURE() << "key " << a_keys[i] << " missing from the other scorer";
        return 1e30;
      }
      const double x = a.at(r, static_cast<int64_t>(i));
      const double y = b.at(r, it->second);
      const double err = std::abs(x - y) / std::max(std::abs(y), kScoreScale);
      if (!(err <= max_err)) {  // NaN counts as the worst
        max_err = std::isnan(err) ? 1e30 : err;
        if (worst != nullptr) {
          *worst = absl::StrCat("query ", r, " key ", a_keys[i], ": ", x, " vs ", y);
        }
      }
    }
  }
  return max_err;
}

// Mean over rows of |top10(a) ∩ top10(b)| / min(10, cols).
inline double MeanTop10Overlap(const FloatMatrix& a, const std::vector<int64_t>& a_keys,
                               const FloatMatrix& b, const std::vector<int64_t>& b_keys) {
  const auto ta = TopKPerRow(a, a_keys, 10);
  const auto tb = TopKPerRow(b, b_keys, 10);
  double sum = 0.0;
  for (size_t r = 0; r < ta.size(); ++r) {
    std::set<int64_t> keys_b;
    for (const ScoredKey& s : tb[r]) keys_b.insert(s.key);
    int hit = 0;
    for (const ScoredKey& s : ta[r]) hit += keys_b.count(s.key) ? 1 : 0;
    sum += ta[r].empty() ? 1.0 : static_cast<double>(hit) / ta[r].size();
  }
  return ta.empty() ? 1.0 : sum / ta.size();
}

struct CompareResult {
  double max_rel_err = 0.0;
  double mean_top10_overlap = 1.0;
};

// Random stored items and queries for `o`: stored_kind decides which get region or word counts.
struct TestData {
  std::vector<int64_t> keys;
  std::vector<FloatMatrix> stored;
  std::vector<FloatMatrix> queries;
};

inline TestData MakeTestData(const CompareOptions& o) {
  ItemGenerator gen(o.dim, o.seed);
  auto rows_of = [&](ItemKind kind) {
    return kind == ItemKind::kImage ? gen.Uniform(o.min_regions, o.max_regions)
                                    : gen.Uniform(o.min_words, o.max_words);
  };
  const ItemKind query_kind =
      o.stored_kind == ItemKind::kImage ? ItemKind::kCaption : ItemKind::kImage;
  TestData t;
  for (int i = 0; i < o.num_stored; ++i) {
    t.keys.push_back(1000 + 7 * i);
    t.stored.push_back(gen.Item(rows_of(o.stored_kind), o.row_scale));
  }
  for (int j = 0; j < o.num_queries; ++j) t.queries.push_back(gen.Item(rows_of(query_kind), o.row_scale));
  return t;
}

inline ScorerConfig MakeConfig(const CompareOptions& o, StorageType storage) {
  ScorerConfig c;
  c.dim = o.dim;
  c.stored_kind = o.stored_kind;
  c.attention = o.attention;
  c.storage = storage;
  c.num_threads = o.num_threads;
  return c;
}

// Fills a CpuScorer (o.storage) and a ReferenceScorer (fp32) with the same random items, scores
// the same random queries with both, and compares ScoreAll by key: EXPECTs
// max_rel_err <= o.max_rel_err, printing the configuration on failure.
inline CompareResult CompareWithReference(const CompareOptions& o) {
  CompareResult result;
  const TestData t = MakeTestData(o);
  auto cpu = CpuScorer::Create(MakeConfig(o, o.storage), o.cpu);
  auto ref = ReferenceScorer::Create(MakeConfig(o, StorageType::kFloat32));
  EXPECT_TRUE(cpu.ok()) << cpu.status() << " | " << o.ToString();
  EXPECT_TRUE(ref.ok()) << ref.status() << " | " << o.ToString();
  if (!cpu.ok() || !ref.ok()) return result;
  EXPECT_TRUE((*cpu)->Add(t.keys, Views(t.stored)).ok()) << o.ToString();
  EXPECT_TRUE((*ref)->Add(t.keys, Views(t.stored)).ok()) << o.ToString();
  FloatMatrix s_cpu, s_ref;
  const absl::Status st_cpu = (*cpu)->ScoreAll(Views(t.queries), &s_cpu);
  const absl::Status st_ref = (*ref)->ScoreAll(Views(t.queries), &s_ref);
  EXPECT_TRUE(st_cpu.ok()) << st_cpu << " | " << o.ToString();
  EXPECT_TRUE(st_ref.ok()) << st_ref << " | " << o.ToString();
  if (!st_cpu.ok() || !st_ref.ok()) return result;
  EXPECT_EQ((*cpu)->keys(), (*ref)->keys()) << o.ToString();
  std::string worst;
  result.max_rel_err = MaxRelErr(s_cpu, (*cpu)->keys(), s_ref, (*ref)->keys(), &worst);
  result.mean_top10_overlap = MeanTop10Overlap(s_cpu, (*cpu)->keys(), s_ref, (*ref)->keys());
  if (std::getenv("SCANSERVE_TEST_VERBOSE") != nullptr) {
    std::printf("[compare] max rel err %.3g, top-10 overlap %.3f | %s\n", result.max_rel_err,
                result.mean_top10_overlap, o.ToString().c_str());
  }
  EXPECT_LE(result.max_rel_err, o.max_rel_err) << "worst " << worst << " | " << o.ToString();
  return result;
}

}  // namespace testing_util
}  // namespace scanserve
