// CudaScorer against the CPU oracle (CpuScorer) on random SCAN-like data, faiss-style: named
// tolerances first, one driver fed an options struct, the configuration printed on failure.
// Every test skips when no CUDA device can be used (CI builds the backend without a GPU).
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdio>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "gtest/gtest.h"
#include "scoring_test_util.h"

#ifdef SCANSERVE_WITH_CUDA
#include "engine/scoring/cuda_scorer.h"

namespace scanserve {
namespace {

using testing_util::CompareOptions;
using testing_util::ItemGenerator;
using testing_util::MakeConfig;
using testing_util::MakeTestData;
using testing_util::MaxRelErr;
using testing_util::MeanTop10Overlap;
using testing_util::TestData;
using testing_util::Views;

// fp32 storage: CUDA fp32 (cuBLAS SGEMM, no TF32) against CpuScorer fp32, |a-b| / max(|b|, 1).
constexpr double kCudaFp32MaxRelErr = testing_util::kFp32MaxRelErr;  // 1e-5
// bf16 storage, split queries (hi + lo bf16): the products are those of the rounded items with
// the fp32 queries to ~2^-16 relative, so against CpuScorer bf16 (the same rounded items) the
// scores agree to fp32-ish rounding amplified by λ1; 1e-4 leaves a wide margin.
constexpr double kCudaBf16SplitMaxRelErr = 1e-4;
// bf16 storage, queries rounded to bf16 too: as bf16 storage against the fp32 oracle.
constexpr double kCudaBf16MaxRelErr = testing_util::kBf16MaxRelErr;  // 3e-3
// Top-10 agreement of CUDA bf16 with CPU fp32 (exact) scoring, mean over queries.
constexpr double kCudaBf16MinTop10Overlap = testing_util::kBf16MinTop10Overlap;  // 0.9
// fp8 storage: the device encodes bit for bit as the CPU does and widens to bf16 exactly, so
// against CpuScorer fp8 it is bf16-split's tolerance; against fp32, fp8's own (3e-2, 0.85).
constexpr double kCudaFp8MaxRelErr = kCudaBf16SplitMaxRelErr;

#define SCANSERVE_SKIP_WITHOUT_CUDA()                                  \
  do {                                                                 \
    std::string why_;                                                  \
    if (!CudaScorer::DeviceAvailable(&why_)) {                         \
      GTEST_SKIP() << "no CUDA device: " << why_                       \
                   << " (CudaScorer is built; run on a GPU to test it)"; \
    }                                                                  \
  } while (0)

struct CudaCompareOptions {
  CompareOptions data;  // data.storage: the CUDA scorer's storage
  StorageType cpu_storage = StorageType::kFloat32;
  CudaScorerOptions cuda;
  double max_rel_err = kCudaFp32MaxRelErr;
  bool expect_fused = false;  // the ScoreAll pass must have been the fused one

  std::string ToString() const {
    return absl::StrCat(data.ToString(),
                        " cpu_storage=", StorageTypeName(cpu_storage),
                        " query_precision=",
                        cuda.query_precision == CudaQueryPrecision::kBf16Split ? "bf16x2" : "bf16",
                        " slab_rows=", cuda.slab_rows,
                        " kernels=", CudaPassKernelsName(cuda.pass_kernels),
                        " max_product_bytes=", cuda.max_product_bytes,
                        " upload_bytes=", cuda.upload_bytes);
  }
};

struct CudaCompareResult {
  double max_rel_err = 0.0;
  double mean_top10_overlap = 1.0;
};

std::unique_ptr<CudaScorer> MakeCuda(const ScorerConfig& c, const CudaScorerOptions& o = {}) {
  auto s = CudaScorer::Create(c, o);
  EXPECT_TRUE(s.ok()) << s.status();
  return s.ok() ? std::move(s).value() : nullptr;
}

std::unique_ptr<CpuScorer> MakeCpu(const ScorerConfig& c) {
  auto s = CpuScorer::Create(c);
  EXPECT_TRUE(s.ok()) << s.status();
  return s.ok() ? std::move(s).value() : nullptr;
}

// Fills a CudaScorer and a CpuScorer with the same random items, scores the same queries, and
// compares ScoreAll by key (EXPECT max_rel_err <= o.max_rel_err), then Search against TopKPerRow
// of the CUDA scores.
CudaCompareResult CompareWithCpu(const CudaCompareOptions& o) {
  CudaCompareResult result;
  const TestData t = MakeTestData(o.data);
  auto cuda = MakeCuda(MakeConfig(o.data, o.data.storage), o.cuda);
  auto cpu = MakeCpu(MakeConfig(o.data, o.cpu_storage));
  if (!cuda || !cpu) return result;
  EXPECT_TRUE(cuda->Add(t.keys, Views(t.stored)).ok()) << o.ToString();
  EXPECT_TRUE(cpu->Add(t.keys, Views(t.stored)).ok()) << o.ToString();
  EXPECT_EQ(cuda->keys(), cpu->keys()) << o.ToString();
  FloatMatrix s_cuda, s_cpu;
  const absl::Status st_cuda = cuda->ScoreAll(Views(t.queries), &s_cuda);
  const absl::Status st_cpu = cpu->ScoreAll(Views(t.queries), &s_cpu);
  EXPECT_TRUE(st_cuda.ok()) << st_cuda << " | " << o.ToString();
  EXPECT_TRUE(st_cpu.ok()) << st_cpu << " | " << o.ToString();
  if (!st_cuda.ok() || !st_cpu.ok()) return result;
  const CudaScorer::PassCounts passes = cuda->pass_counts();
  if (o.expect_fused) {
    EXPECT_EQ(passes.fused, 1) << "the fused pass did not run | " << o.ToString();
  }
  // fp8: the GEMM path widens every stored row into device memory once per pass; the fused pass
  // widens none there (it widens the codes as it stages them).
  int64_t stored_rows = 0;
  for (const auto& item : t.stored) stored_rows += item.rows;
  const bool widens = o.data.storage == StorageType::kFp8E4M3 && passes.fused == 0;
  EXPECT_EQ(passes.widened_rows, widens ? stored_rows : 0) << o.ToString();
  std::string worst;
  result.max_rel_err = MaxRelErr(s_cuda, cuda->keys(), s_cpu, cpu->keys(), &worst);
  result.mean_top10_overlap = MeanTop10Overlap(s_cuda, cuda->keys(), s_cpu, cpu->keys());
  if (std::getenv("SCANSERVE_TEST_VERBOSE") != nullptr) {
    std::printf("[cuda vs cpu] max rel err %.3g, top-10 overlap %.3f | %s\n", result.max_rel_err,
                result.mean_top10_overlap, o.ToString().c_str());
  }
  EXPECT_LE(result.max_rel_err, o.max_rel_err) << "worst " << worst << " | " << o.ToString();

  // Device top-k against the host selection over the same (CUDA) scores.
  const std::vector<int64_t> keys = cuda->keys();
  for (int k : {1, 5, static_cast<int>(keys.size()) + 3}) {
    auto found = cuda->Search(Views(t.queries), k);
    EXPECT_TRUE(found.ok()) << found.status() << " | " << o.ToString();
    if (!found.ok()) continue;
    const auto want = TopKPerRow(s_cuda, keys, k);
    EXPECT_EQ(found->size(), want.size());
    if (found->size() != want.size()) continue;
    for (size_t j = 0; j < want.size(); ++j) {
      EXPECT_EQ((*found)[j].size(), want[j].size()) << "k " << k << " | " << o.ToString();
      if ((*found)[j].size() != want[j].size()) continue;
      for (size_t r = 0; r < want[j].size(); ++r) {
        EXPECT_EQ((*found)[j][r].key, want[j][r].key) << "query " << j << " rank " << r << " k "
                                                      << k << " | " << o.ToString();
        EXPECT_FLOAT_EQ((*found)[j][r].score, want[j][r].score);
      }
    }
  }
  return result;
}

// Two passes that differ only in how the work is laid out: the same scores, bit for bit.
void ExpectBitIdentical(const FloatMatrix& got, const FloatMatrix& want, const std::string& what) {
  ASSERT_EQ(got.rows, want.rows) << what;
  ASSERT_EQ(got.cols, want.cols) << what;
  for (int64_t i = 0; i < got.rows * got.cols; ++i) {
    ASSERT_EQ(got.data[i], want.data[i]) << "score " << i << " | " << what;
  }
}

// The fused plan's copy stages on an H200 (sm_90: 228 KB of shared memory per SM, at most 227 KB
// per block, 1 KB reserved per block), with split queries: a stage is the stored slice (128 rows
// of 40 bf16) and the hi and lo slices, as tall as the tallest query group (whole queries of at
// most 128 rows together) rounded to 16 rows; as many as the block's share holds, 8 at most.
int Sm90FusedStages(const std::vector<FloatMatrix>& queries, int blocks_per_sm) {
  int64_t tallest = 0, group = 0;
  for (const FloatMatrix& q : queries) {
    if (group > 0 && group + q.rows > 128) group = 0;
    group += q.rows;
    tallest = std::max(tallest, group);
  }
  const int64_t stage = 128 * 40 * 2 + 2 * ((tallest + 15) / 16 * 16) * 40 * 2;
  const int64_t share = std::min<int64_t>(232448, 233472 / blocks_per_sm - 1024);
  return static_cast<int>(std::min<int64_t>(8, share / stage));
}

std::vector<AttentionParams> AllAttentionModes() {
  std::vector<AttentionParams> out;
  for (CrossAttention ca : {CrossAttention::kTextToImage, CrossAttention::kImageToText}) {
    for (RawFeatureNorm norm : {RawFeatureNorm::kClippedL2Norm, RawFeatureNorm::kL2Norm,
                                RawFeatureNorm::kClipped, RawFeatureNorm::kNoNorm,
                                RawFeatureNorm::kSoftmax}) {
      for (Pooling pool : {Pooling::kLogSumExp, Pooling::kMean, Pooling::kMax, Pooling::kSum}) {
        AttentionParams a;
        a.cross_attn = ca;
        a.raw_feature_norm = norm;
        a.pooling = pool;
        a.lambda_softmax = ca == CrossAttention::kTextToImage ? 9.0f : 4.0f;
        a.lambda_lse = ca == CrossAttention::kTextToImage ? 6.0f : 5.0f;
        out.push_back(a);
      }
    }
  }
  return out;
}

// ---------------------------------------------------------------------------------------------

TEST(CudaScorerTest, Fp32MatchesCpuEveryAttentionMode) {
  SCANSERVE_SKIP_WITHOUT_CUDA();
  for (ItemKind stored : {ItemKind::kImage, ItemKind::kCaption}) {
    for (const AttentionParams& a : AllAttentionModes()) {
      CudaCompareOptions o;
      o.data.stored_kind = stored;
      o.data.attention = a;
      o.data.num_stored = 12;
      o.data.num_queries = 4;
      CompareWithCpu(o);
    }
  }
}

TEST(CudaScorerTest, Fp32NonNormalisedRowsAndTinyItems) {
  SCANSERVE_SKIP_WITHOUT_CUDA();
  for (ItemKind stored : {ItemKind::kImage, ItemKind::kCaption}) {
    CudaCompareOptions o;
    o.data.stored_kind = stored;
    o.data.row_scale = 4.0;  // rows of norm 1/4 .. 4
    o.data.min_regions = 1;
    o.data.max_regions = 3;
    o.data.min_words = 1;
    o.data.max_words = 2;
    o.data.num_stored = 30;
    CompareWithCpu(o);
  }
}

TEST(CudaScorerTest, ManySlabsAndChunks) {
  SCANSERVE_SKIP_WITHOUT_CUDA();
  for (CrossAttention ca : {CrossAttention::kTextToImage, CrossAttention::kImageToText}) {
    CudaCompareOptions o;
    o.data.attention.cross_attn = ca;
    o.data.num_stored = 200;
    o.data.num_queries = 7;
    o.data.max_regions = 40;
    o.cuda.slab_rows = 100;            // many slabs; items of up to 40 rows leave gaps
    o.cuda.max_product_bytes = 4096;   // a chunk is one or two items
    o.cuda.upload_bytes = 1000;        // Add stages a few rows at a time, through both buffers
    CompareWithCpu(o);
  }
}

TEST(CudaScorerTest, HugeItemsUseGlobalScratch) {
  SCANSERVE_SKIP_WITHOUT_CUDA();
  // Pairs of 250-400 x 250-400 rows need more than the epilogue's 160 KB of shared memory per
  // warp (nc * (nq | 1) + 34 nc floats), so they take the global scratch. (Just above the limit:
  // the CUDA emulation runs each pair's lanes one after the other.)
  for (ItemKind stored : {ItemKind::kImage, ItemKind::kCaption}) {
    CudaCompareOptions o;
    o.data.stored_kind = stored;
    o.data.attention.cross_attn =
        stored == ItemKind::kImage ? CrossAttention::kTextToImage : CrossAttention::kImageToText;
    o.data.dim = 16;
    o.data.num_stored = 3;
    o.data.num_queries = 2;
    o.data.min_regions = 250;
    o.data.max_regions = 400;
    o.data.min_words = 250;
    o.data.max_words = 400;
    o.max_rel_err = 1e-4;  // sums over hundreds of rows
    CompareWithCpu(o);
  }
}

// Every attention mode, both stored kinds, CUDA and CPU on the same narrow storage.
void CompareEveryModeWithCpu(StorageType storage, double max_rel_err) {
  for (ItemKind stored : {ItemKind::kImage, ItemKind::kCaption}) {
    for (const AttentionParams& a : AllAttentionModes()) {
      if (a.pooling == Pooling::kSum) continue;  // as Mean, scaled
      CudaCompareOptions o;
      o.data.stored_kind = stored;
      o.data.attention = a;
      o.data.storage = storage;
      o.cpu_storage = storage;
      o.max_rel_err = max_rel_err;
      CompareWithCpu(o);
    }
  }
}

// Realistic shapes (36 regions, 10-20 words) against the fp32 oracle: the stated tolerance and
// the mean top-10 overlap, recorded as a test property.
void CompareWithFp32Oracle(StorageType storage, CudaQueryPrecision qp, int64_t dim,
                           double max_rel_err, double min_overlap) {
  for (CrossAttention ca : {CrossAttention::kTextToImage, CrossAttention::kImageToText}) {
    CudaCompareOptions o;
    o.data.attention.cross_attn = ca;
    o.data.storage = storage;
    o.data.dim = dim;
    o.data.num_stored = 400;
    o.data.num_queries = 16;
    o.data.min_regions = 36;
    o.data.max_regions = 36;
    o.data.min_words = 10;
    o.data.max_words = 20;
    o.cuda.query_precision = qp;
    o.cpu_storage = StorageType::kFloat32;
    o.max_rel_err = max_rel_err;
    const CudaCompareResult r = CompareWithCpu(o);
    const std::string name =
        absl::StrCat(StorageTypeName(storage), "_",
                     qp == CudaQueryPrecision::kBf16Split ? "q-bf16x2_" : "q-bf16_", ToString(ca));
    std::printf("[cuda %s vs cpu fp32] %s: max rel err %.3g, mean top-10 overlap %.3f\n",
                name.c_str(), o.ToString().c_str(), r.max_rel_err, r.mean_top10_overlap);
    EXPECT_GE(r.mean_top10_overlap, min_overlap) << o.ToString();
    ::testing::Test::RecordProperty("top10_overlap_" + name, absl::StrCat(r.mean_top10_overlap));
  }
}

// A labelled retrieval set with graded relevance: query j's k-th best stored item (k = 0..9) holds a
// row planted at cosine kLabelledCosines[k] to one row of the query, and nothing else is related
// (random unit rows, dim 256). The planted row is a word of a caption and a region of an image,
// whichever side is stored, so the grades hold in both directions.
constexpr int kLabelledRanks = 10;
constexpr float kLabelledCosines[kLabelledRanks] = {0.95f, 0.9f, 0.85f, 0.8f, 0.75f,
                                                    0.7f,  0.65f, 0.6f, 0.55f, 0.5f};
struct LabelledSet {
  std::vector<int64_t> keys;
  std::vector<FloatMatrix> stored, queries;
  std::vector<std::vector<int64_t>> want;  // per query: the labelled keys, best first
};
LabelledSet MakeLabelledSet(ItemKind stored_kind, int64_t dim, int num_stored, int num_queries) {
  std::mt19937 rng(17);
  std::normal_distribution<float> normal;
  auto unit = [&](float* v) {
    double n2 = 0;
    for (int64_t i = 0; i < dim; ++i) n2 += (v[i] = normal(rng)) * double{v[i]};
    for (int64_t i = 0; i < dim; ++i) v[i] = static_cast<float>(v[i] / std::sqrt(n2));
  };
  auto random_item = [&](int rows) {
    FloatMatrix m(rows, dim);
    for (int r = 0; r < rows; ++r) unit(m.row(r));
    return m;
  };
  // out = c * u + sqrt(1 - c^2) * (a unit vector orthogonal to u): exactly cosine c with u.
  auto plant = [&](const float* u, float c, float* out) {
    std::vector<float> n(dim);
    unit(n.data());
    double along = 0;
    for (int64_t i = 0; i < dim; ++i) along += n[i] * double{u[i]};
    double n2 = 0;
    for (int64_t i = 0; i < dim; ++i) n2 += (n[i] -= static_cast<float>(along * u[i])) * double{n[i]};
    const double s = std::sqrt(1.0 - double{c} * c) / std::sqrt(n2);
    for (int64_t i = 0; i < dim; ++i) out[i] = static_cast<float>(c * u[i] + s * n[i]);
  };
  const bool images = stored_kind == ItemKind::kImage;
  auto item = [&]() { return random_item(images ? 36 : 12); };   // a stored item
  auto query = [&]() { return random_item(images ? 12 : 36); };  // a query
  LabelledSet set;
  for (int i = 0; i < num_stored; ++i) {
    set.keys.push_back(1000 + i);
    set.stored.push_back(item());
  }
  std::vector<int> order(num_stored);
  for (int i = 0; i < num_stored; ++i) order[i] = i;
  std::shuffle(order.begin(), order.end(), rng);
  int next = 0;
  for (int j = 0; j < num_queries; ++j) {
    FloatMatrix q = query();
    std::vector<int64_t> want;
    for (int k = 0; k < kLabelledRanks; ++k) {
      const int i = order[next++];
      // Row k of the query is planted in a random row of stored item i.
      FloatMatrix& target = set.stored[i];
      const int row = static_cast<int>(rng() % static_cast<uint32_t>(target.rows));
      plant(q.row(k), kLabelledCosines[k], target.row(row));
      want.push_back(set.keys[i]);
    }
    set.queries.push_back(std::move(q));
    set.want.push_back(std::move(want));
  }
  return set;
}

// The labelled check: on a set whose top 10 per query are known and graded, the CUDA
// backend ranks them in the labelled order as fp32 does, on every storage and pass; the mean
// top-10 overlap with fp32 (over the whole top 10, labelled or not) is reported.
TEST(CudaScorerTest, LabelledTop10OrderMatchesFp32) {
  SCANSERVE_SKIP_WITHOUT_CUDA();
  for (ItemKind stored : {ItemKind::kImage, ItemKind::kCaption}) {
    for (CrossAttention ca : {CrossAttention::kTextToImage, CrossAttention::kImageToText}) {
      CompareOptions data;
      data.stored_kind = stored;
      data.attention.cross_attn = ca;
      // Raw similarities and max pooling keep the grades clean on a synthetic set: with
      // clipped_l2norm, a random region with a single positive similarity gets almost full
      // attention (the l2norm over words), and LogSumExp adds every unrelated row's noise. The
      // parity tests cover every mode on random data.
      data.attention.raw_feature_norm = RawFeatureNorm::kNoNorm;
      data.attention.pooling = Pooling::kMax;
      data.dim = 256;
      const LabelledSet set = MakeLabelledSet(stored, data.dim, 240, 12);
      const std::string what = absl::StrCat(stored == ItemKind::kImage ? "stored images" : "stored captions",
                                            " ", ToString(ca));
      auto cpu = MakeCpu(MakeConfig(data, StorageType::kFloat32));
      ASSERT_NE(cpu, nullptr);
      ASSERT_TRUE(cpu->Add(set.keys, Views(set.stored)).ok());
      auto fp32 = cpu->Search(Views(set.queries), kLabelledRanks);
      ASSERT_TRUE(fp32.ok()) << fp32.status();
      float smallest_gap = 1.0f;
      // The labels hold for the exact scores (else the set, not the backend, is wrong).
      for (size_t j = 0; j < set.queries.size(); ++j) {
        std::vector<int64_t> got;
        for (const ScoredKey& h : (*fp32)[j]) got.push_back(h.key);
        ASSERT_EQ(got, set.want[j]) << what << ", fp32 CPU, query " << j;
        for (int k = 1; k < kLabelledRanks; ++k) {
          smallest_gap = std::min(smallest_gap, (*fp32)[j][k - 1].score - (*fp32)[j][k].score);
        }
      }
      std::printf("[labelled top-10] %s: smallest fp32 score gap between labelled ranks %.4f\n",
                  what.c_str(), smallest_gap);
      for (StorageType storage : {StorageType::kBFloat16, StorageType::kFp8E4M3}) {
        for (bool fused : {false, true}) {
          data.storage = storage;
          CudaScorerOptions o;
          o.pass_kernels = fused ? CudaPassKernels::kFused : CudaPassKernels::kGemm;
          auto cuda = MakeCuda(MakeConfig(data, storage), o);
          ASSERT_NE(cuda, nullptr);
          ASSERT_TRUE(cuda->Add(set.keys, Views(set.stored)).ok());
          // bf16 storage also with the queries rounded (--cuda-query-precision bf16).
          std::vector<CudaQueryPrecision> precisions = {CudaQueryPrecision::kBf16Split};
          if (storage == StorageType::kBFloat16) precisions.push_back(CudaQueryPrecision::kBf16);
          for (size_t p = 0; p < precisions.size(); ++p) {
            cuda->set_query_precision(precisions[p]);
            auto top = cuda->Search(Views(set.queries), kLabelledRanks);
            ASSERT_TRUE(top.ok()) << top.status();
            EXPECT_EQ(cuda->pass_counts().fused, fused ? static_cast<int64_t>(p + 1) : 0);
            const std::string config =
                absl::StrCat(StorageTypeName(storage), " q-", CudaQueryPrecisionName(precisions[p]),
                             fused ? " fused" : " gemm");
            const std::string name = absl::StrCat(what, ", cuda ", config);
            double overlap = 0;
            for (size_t j = 0; j < set.queries.size(); ++j) {
              std::vector<int64_t> got;
              for (const ScoredKey& h : (*top)[j]) got.push_back(h.key);
              EXPECT_EQ(got, set.want[j]) << name << ", query " << j;
              for (int64_t key : got) {
                overlap += std::count(set.want[j].begin(), set.want[j].end(), key);
              }
            }
            overlap /= static_cast<double>(set.queries.size() * kLabelledRanks);
            std::printf("[labelled top-10] %s: mean overlap with fp32 %.3f\n", name.c_str(), overlap);
            std::string property = absl::StrCat("labelled_top10_overlap_", config);
            std::replace(property.begin(), property.end(), ' ', '_');
            ::testing::Test::RecordProperty(property, absl::StrCat(overlap));
          }
        }
      }
    }
  }
}

TEST(CudaScorerTest, Bf16SplitMatchesCpuBf16) {
  SCANSERVE_SKIP_WITHOUT_CUDA();
  CompareEveryModeWithCpu(StorageType::kBFloat16, kCudaBf16SplitMaxRelErr);
}

TEST(CudaScorerTest, Bf16AgainstFp32OracleTop10) {
  SCANSERVE_SKIP_WITHOUT_CUDA();
  for (CudaQueryPrecision qp : {CudaQueryPrecision::kBf16Split, CudaQueryPrecision::kBf16}) {
    CompareWithFp32Oracle(StorageType::kBFloat16, qp, 256, kCudaBf16MaxRelErr,
                          kCudaBf16MinTop10Overlap);
  }
}

// The fused pass (tensor-core products in shared memory) against the CPU on the same storage,
// every mode, several query groups and row tiles; the pass counters prove it ran.
TEST(CudaScorerTest, FusedProductsMatchCpu) {
  SCANSERVE_SKIP_WITHOUT_CUDA();
  for (StorageType storage : {StorageType::kBFloat16, StorageType::kFp8E4M3}) {
    for (ItemKind stored : {ItemKind::kImage, ItemKind::kCaption}) {
      for (const AttentionParams& a : AllAttentionModes()) {
        if (a.pooling == Pooling::kSum) continue;
        CudaCompareOptions o;
        o.data.stored_kind = stored;
        o.data.attention = a;
        o.data.storage = storage;
        o.data.num_queries = 12;  // > 128 stacked rows: several groups
        o.data.max_regions = 40;
        o.data.max_words = 30;
        o.data.dim = 64;
        o.cpu_storage = storage;
        o.cuda.pass_kernels = CudaPassKernels::kFused;
        o.expect_fused = true;
        o.max_rel_err = kCudaBf16SplitMaxRelErr;
        CompareWithCpu(o);
      }
    }
  }
  // Unsplit queries; several slabs, each one launch.
  for (StorageType storage : {StorageType::kBFloat16, StorageType::kFp8E4M3}) {
    CudaCompareOptions o;
    o.data.storage = storage;
    o.data.num_stored = 60;
    o.data.num_queries = 5;
    o.data.max_regions = 60;
    o.data.dim = 96;
    o.cpu_storage = storage;
    o.cuda.pass_kernels = CudaPassKernels::kFused;
    o.cuda.query_precision = CudaQueryPrecision::kBf16;
    o.cuda.slab_rows = 700;
    o.expect_fused = true;
    o.max_rel_err = kCudaBf16MaxRelErr;
    CompareWithCpu(o);
  }
  // The largest eligible shapes, both directions: items and queries of up to 128 rows leave room
  // beside the product tile for the scratch of fewer epilogue warps than the block has.
  for (ItemKind stored : {ItemKind::kImage, ItemKind::kCaption}) {
    CudaCompareOptions o;
    o.data.stored_kind = stored;
    o.data.storage = StorageType::kBFloat16;
    o.data.num_stored = 5;
    o.data.num_queries = 2;
    o.data.min_regions = o.data.min_words = 100;
    o.data.max_regions = o.data.max_words = 128;
    o.cpu_storage = StorageType::kBFloat16;
    o.cuda.pass_kernels = CudaPassKernels::kFused;
    o.expect_fused = true;
    o.max_rel_err = kCudaBf16SplitMaxRelErr;
    CompareWithCpu(o);
  }
  // The counters: a fused scorer runs fused passes; it falls back to the GEMM path for a dim that
  // is not a multiple of 32, a stored item or a query of more than 128 rows, and fp32 storage.
  struct Case {
    int64_t dim;
    int max_regions, max_words;
    StorageType storage;
    bool fused;
  };
  for (const Case& c : {Case{64, 40, 30, StorageType::kBFloat16, true},
                        Case{48, 40, 30, StorageType::kBFloat16, false},
                        Case{32, 129, 30, StorageType::kBFloat16, false},
                        Case{32, 40, 129, StorageType::kBFloat16, false},
                        Case{32, 40, 30, StorageType::kFloat32, false}}) {
    CudaCompareOptions o;
    o.data.storage = c.storage;
    o.data.dim = c.dim;
    o.data.num_stored = 6;
    o.data.num_queries = 3;
    o.data.min_regions = c.max_regions - 1;
    o.data.max_regions = c.max_regions;
    o.data.min_words = c.max_words - 1;
    o.data.max_words = c.max_words;
    const TestData t = MakeTestData(o.data);
    CudaScorerOptions fused;
    fused.pass_kernels = CudaPassKernels::kFused;
    auto cuda = MakeCuda(MakeConfig(o.data, c.storage), fused);
    ASSERT_NE(cuda, nullptr);
    ASSERT_TRUE(cuda->Add(t.keys, Views(t.stored)).ok());
    FloatMatrix scores;
    ASSERT_TRUE(cuda->ScoreAll(Views(t.queries), &scores).ok());
    const std::string what = absl::StrCat("dim ", c.dim, " regions ", c.max_regions, " words ",
                                          c.max_words, " ", StorageTypeName(c.storage));
    EXPECT_EQ(cuda->pass_counts().fused, c.fused ? 1 : 0) << what;
    EXPECT_EQ(cuda->pass_counts().gemm, c.fused ? 0 : 1) << what;
  }
}

TEST(CudaScorerTest, Fp8MatchesCpuFp8) {
  SCANSERVE_SKIP_WITHOUT_CUDA();
  CompareEveryModeWithCpu(StorageType::kFp8E4M3, kCudaFp8MaxRelErr);
  // Chunks smaller than a slab, so several widenings per pass.
  CudaCompareOptions o;
  o.data.storage = StorageType::kFp8E4M3;
  o.cpu_storage = StorageType::kFp8E4M3;
  o.data.num_stored = 300;
  o.cuda.slab_rows = 2000;
  o.cuda.max_product_bytes = 64 * 1024;
  o.max_rel_err = kCudaFp8MaxRelErr;
  CompareWithCpu(o);
}

TEST(CudaScorerTest, Fp8AgainstFp32OracleTop10) {
  SCANSERVE_SKIP_WITHOUT_CUDA();
  CompareWithFp32Oracle(StorageType::kFp8E4M3, CudaQueryPrecision::kBf16Split, 1024,
                        testing_util::kFp8MaxRelErr, testing_util::kFp8MinTop10Overlap);
}

// ---------------------------------------------------------------------------------------------
// Add / Remove / upsert: the same operations on both scorers keep the same keys and scores.

void ExpectSameState(Scorer& cuda, Scorer& cpu, const std::vector<FloatMatrix>& queries,
                     const std::string& when, double max_rel_err = kCudaFp32MaxRelErr) {
  EXPECT_EQ(cuda.size(), cpu.size()) << when;
  EXPECT_EQ(cuda.keys(), cpu.keys()) << when;
  FloatMatrix a, b;
  ASSERT_TRUE(cuda.ScoreAll(Views(queries), &a).ok()) << when;
  ASSERT_TRUE(cpu.ScoreAll(Views(queries), &b).ok()) << when;
  EXPECT_LE(MaxRelErr(a, cuda.keys(), b, cpu.keys()), max_rel_err) << when;
}

// (storage, fused pass): the fused pass's row tiles are rebuilt on every change to a slab.
class CudaScorerStorageTest : public ::testing::TestWithParam<std::pair<StorageType, bool>> {};

TEST_P(CudaScorerStorageTest, AddRemoveUpsert) {
  SCANSERVE_SKIP_WITHOUT_CUDA();
  const StorageType storage = GetParam().first;
  const double tolerance = storage == StorageType::kFloat32 ? kCudaFp32MaxRelErr : kCudaFp8MaxRelErr;
  CompareOptions data;
  data.num_stored = 0;
  CudaScorerOptions small;
  small.slab_rows = 120;  // several slabs, so compaction and slab removal are exercised
  small.pass_kernels =
      GetParam().second ? CudaPassKernels::kFused : CudaPassKernels::kGemm;
  auto cuda = MakeCuda(MakeConfig(data, storage), small);
  auto cpu = MakeCpu(MakeConfig(data, storage));
  ASSERT_TRUE(cuda && cpu);
  ItemGenerator gen(data.dim, 5);
  std::vector<FloatMatrix> queries;
  for (int j = 0; j < 3; ++j) queries.push_back(gen.Item(gen.Uniform(1, 20)));

  auto add = [&](std::vector<int64_t> keys, const std::string& when) {
    std::vector<FloatMatrix> items;
    for (size_t i = 0; i < keys.size(); ++i) items.push_back(gen.Item(gen.Uniform(1, 50)));
    ASSERT_TRUE(cuda->Add(keys, Views(items)).ok()) << when;
    ASSERT_TRUE(cpu->Add(keys, Views(items)).ok()) << when;
    ExpectSameState(*cuda, *cpu, queries, when, tolerance);
  };
  auto remove = [&](std::vector<int64_t> keys, const std::string& when) {
    ASSERT_TRUE(cuda->Remove(keys).ok()) << when;
    ASSERT_TRUE(cpu->Remove(keys).ok()) << when;
    if (cuda->size() > 0) ExpectSameState(*cuda, *cpu, queries, when, tolerance);
    EXPECT_EQ(cuda->keys(), cpu->keys()) << when;
  };

  add({1, 2, 3, 4, 5, 6, 7, 8}, "first add");
  add({9, 10, 11}, "second add");
  add({3, 12, 9}, "upsert 3 and 9 (they move to the end)");
  remove({1, 5, 12}, "remove from several slabs");
  EXPECT_EQ(cuda->Remove({1}).code(), absl::StatusCode::kNotFound);
  add({1, 5}, "re-add removed keys");
  remove({2, 3, 4, 6, 7, 8, 9, 10, 11, 1, 5}, "remove everything");
  EXPECT_EQ(cuda->size(), 0);
  FloatMatrix empty;
  ASSERT_TRUE(cuda->ScoreAll(Views(queries), &empty).ok());
  EXPECT_EQ(empty.cols, 0);
  auto none = cuda->Search(Views(queries), 3);
  ASSERT_TRUE(none.ok());
  EXPECT_TRUE((*none)[0].empty());
  add({42, 43}, "add after emptying");
  // One Add with an invalid item changes nothing (validated before the backend runs).
  FloatMatrix ok_item = gen.Item(3);
  EXPECT_FALSE(cuda->Add({50, 51}, {ItemView(ok_item), ItemView(nullptr, 2)}).ok());
  EXPECT_EQ(cuda->keys(), (std::vector<int64_t>{42, 43}));
  if (small.pass_kernels == CudaPassKernels::kFused) {
    EXPECT_GT(cuda->pass_counts().fused, 0);
    EXPECT_EQ(cuda->pass_counts().gemm, 0);
  }
}

INSTANTIATE_TEST_SUITE_P(Storage, CudaScorerStorageTest,
                         ::testing::Values(std::make_pair(StorageType::kFloat32, false),
                                           std::make_pair(StorageType::kFp8E4M3, false),
                                           std::make_pair(StorageType::kBFloat16, true),
                                           std::make_pair(StorageType::kFp8E4M3, true)),
                         [](const ::testing::TestParamInfo<std::pair<StorageType, bool>>& info) {
                           return absl::StrCat(StorageTypeName(info.param.first),
                                               info.param.second ? "_fused" : "");
                         });

// The fused pass with fewer epilogue warps than pairs in a block: one 128-word caption widens
// every warp's scratch (64 x 129 floats: 3 warps fit beside the product tile), while each row tile
// holds two 64-region images and the other query group six 20-word captions (12 pairs).
TEST(CudaScorerTest, FusedPassWithFewEpilogueWarps) {
  SCANSERVE_SKIP_WITHOUT_CUDA();
  CompareOptions data;
  data.storage = StorageType::kBFloat16;
  CudaScorerOptions fused;
  fused.pass_kernels = CudaPassKernels::kFused;
  auto cuda = MakeCuda(MakeConfig(data, StorageType::kBFloat16), fused);
  auto cpu = MakeCpu(MakeConfig(data, StorageType::kBFloat16));
  ASSERT_TRUE(cuda && cpu);
  ItemGenerator gen(data.dim, 11);
  std::vector<int64_t> keys;
  std::vector<FloatMatrix> images;
  for (int i = 0; i < 6; ++i) {
    keys.push_back(100 + i);
    images.push_back(gen.Item(64));
  }
  ASSERT_TRUE(cuda->Add(keys, Views(images)).ok());
  ASSERT_TRUE(cpu->Add(keys, Views(images)).ok());
  std::vector<FloatMatrix> captions = {gen.Item(128)};
  for (int j = 0; j < 6; ++j) captions.push_back(gen.Item(20));
  ExpectSameState(*cuda, *cpu, captions, "few epilogue warps", kCudaBf16SplitMaxRelErr);
  EXPECT_EQ(cuda->pass_counts().fused, 1);
  EXPECT_EQ(cuda->pass_counts().gemm, 0);
  EXPECT_LT(cuda->fused_launch().epilogue_warps, 7) << "no pair was left for a second round";
}

// One or two fused blocks per SM: the same pairs scored by other warps, so the same scores to
// the bit. At SCAN's shapes two blocks fit an sm_90 SM with fewer epilogue warps each. Where two
// would leave one epilogue warp each (64-row items and captions: ~25 KB of scratch per warp) or
// none (128 rows), the pass falls back to one block per SM.
TEST(CudaScorerTest, FusedBlocksPerSmScoreAlike) {
  SCANSERVE_SKIP_WITHOUT_CUDA();
  struct Shape {
    int regions, min_words, max_words;
    bool two_on_sm90;
  };
  for (ItemKind stored : {ItemKind::kImage, ItemKind::kCaption}) {
    for (const Shape& shape : {Shape{36, 8, 30, true}, Shape{64, 64, 64, false},
                               Shape{128, 120, 128, false}}) {
      const bool largest = !shape.two_on_sm90;
      CompareOptions data;
      data.stored_kind = stored;
      data.storage = StorageType::kBFloat16;
      data.num_stored = largest ? 5 : 40;
      data.num_queries = largest ? 2 : 10;
      data.min_regions = data.max_regions = shape.regions;
      data.min_words = shape.min_words;
      data.max_words = shape.max_words;
      data.dim = 64;
      const TestData t = MakeTestData(data);
      FloatMatrix scores[2];
      CudaScorer::FusedLaunch launch[2];
      for (int blocks : {1, 2}) {
        CudaScorerOptions o;
        o.pass_kernels = CudaPassKernels::kFused;
        o.fused_blocks_per_sm = blocks;
        auto cuda = MakeCuda(MakeConfig(data, StorageType::kBFloat16), o);
        ASSERT_NE(cuda, nullptr);
        ASSERT_TRUE(cuda->Add(t.keys, Views(t.stored)).ok());
        ASSERT_TRUE(cuda->ScoreAll(Views(t.queries), &scores[blocks - 1]).ok());
        ASSERT_EQ(cuda->pass_counts().fused, 1);
        launch[blocks - 1] = cuda->fused_launch();
        if (blocks == 2 && absl::StrContains(cuda->DeviceDescription(), "sm_90")) {
          EXPECT_EQ(cuda->fused_launch().blocks_per_sm, shape.two_on_sm90 ? 2 : 1)
              << cuda->DeviceDescription() << " | " << data.ToString();
          EXPECT_EQ(cuda->fused_launch().stages,
                    Sm90FusedStages(t.queries, cuda->fused_launch().blocks_per_sm))
              << cuda->DeviceDescription() << " | " << data.ToString();
        }
      }
      const std::string what = data.ToString();
      EXPECT_EQ(launch[0].blocks_per_sm, 1) << what;
      EXPECT_GE(launch[1].epilogue_warps, 1) << what;
      if (launch[1].blocks_per_sm == 2) {
        EXPECT_GE(launch[1].epilogue_warps, 2) << what;
        EXPECT_LT(launch[1].epilogue_warps, launch[0].epilogue_warps) << what;
      } else {
        EXPECT_EQ(launch[1].epilogue_warps, launch[0].epilogue_warps) << what;
      }
      ASSERT_NO_FATAL_FAILURE(ExpectBitIdentical(scores[1], scores[0], what));
    }
  }
}

// The copy pipeline's depth changes when the operands land, never the scores: 2, 3, 5 and 8
// stages give bit-identical scores, with as many k steps as the most stages (dim 256: 8 steps)
// and fewer (dim 32: 1).
TEST(CudaScorerTest, FusedCopyStagesScoreAlike) {
  SCANSERVE_SKIP_WITHOUT_CUDA();
  for (StorageType storage : {StorageType::kBFloat16, StorageType::kFp8E4M3}) {
    for (ItemKind stored : {ItemKind::kImage, ItemKind::kCaption}) {
      for (int dim : {256, 32}) {
        CompareOptions data;
        data.stored_kind = stored;
        data.storage = storage;
        data.num_stored = 30;
        data.num_queries = 6;
        // Six queries of at most 18 rows: one group of at most 108, so 8 stages fit a whole SM.
        data.max_regions = 18;
        data.max_words = 18;
        data.dim = dim;
        const TestData t = MakeTestData(data);
        const std::string what = data.ToString();
        FloatMatrix first;
        for (int stages : {2, 3, 5, 8}) {
          CudaScorerOptions o;
          o.pass_kernels = CudaPassKernels::kFused;
          o.fused_blocks_per_sm = 1;  // a whole SM's shared memory
          o.fused_max_stages = stages;
          auto cuda = MakeCuda(MakeConfig(data, storage), o);
          ASSERT_NE(cuda, nullptr);
          ASSERT_TRUE(cuda->Add(t.keys, Views(t.stored)).ok());
          FloatMatrix scores;
          ASSERT_TRUE(cuda->ScoreAll(Views(t.queries), &scores).ok());
          ASSERT_EQ(cuda->pass_counts().fused, 1) << what;
          EXPECT_EQ(cuda->fused_launch().stages, stages) << what;
          if (stages == 2) {
            first = std::move(scores);
            continue;
          }
          ASSERT_NO_FATAL_FAILURE(
              ExpectBitIdentical(scores, first, absl::StrCat(stages, " stages | ", what)));
        }
      }
    }
  }
}

// set_query_precision on a loaded store (what scan_bench compares): each pass bit for bit that of
// a scorer created with the precision, on both kernels; a change restarts kAuto's timing.
TEST(CudaScorerTest, QueryPrecisionSwitchesOnALoadedStore) {
  SCANSERVE_SKIP_WITHOUT_CUDA();
  CompareOptions data;
  data.storage = StorageType::kBFloat16;
  data.num_stored = 30;
  data.num_queries = 4;
  data.dim = 64;
  const TestData t = MakeTestData(data);
  const std::vector<ItemView> queries = Views(t.queries);
  for (CudaPassKernels kernels : {CudaPassKernels::kGemm, CudaPassKernels::kFused}) {
    FloatMatrix want[2];  // [split, rounded], from scorers created with it
    for (CudaQueryPrecision precision : {CudaQueryPrecision::kBf16Split, CudaQueryPrecision::kBf16}) {
      CudaScorerOptions o;
      o.pass_kernels = kernels;
      o.query_precision = precision;
      auto cuda = MakeCuda(MakeConfig(data, data.storage), o);
      ASSERT_NE(cuda, nullptr);
      ASSERT_TRUE(cuda->Add(t.keys, Views(t.stored)).ok());
      ASSERT_TRUE(cuda->ScoreAll(queries, &want[precision == CudaQueryPrecision::kBf16]).ok());
    }
    double largest = 0;  // the two precisions differ (else this test would prove nothing)
    for (size_t i = 0; i < want[0].data.size(); ++i) {
      largest = std::max<double>(largest, std::abs(want[0].data[i] - want[1].data[i]));
    }
    EXPECT_GT(largest, 1e-6) << CudaPassKernelsName(kernels);

    CudaScorerOptions o;
    o.pass_kernels = kernels;
    auto cuda = MakeCuda(MakeConfig(data, data.storage), o);
    ASSERT_NE(cuda, nullptr);
    ASSERT_TRUE(cuda->Add(t.keys, Views(t.stored)).ok());
    for (CudaQueryPrecision precision : {CudaQueryPrecision::kBf16, CudaQueryPrecision::kBf16Split,
                                         CudaQueryPrecision::kBf16}) {
      cuda->set_query_precision(precision);
      EXPECT_EQ(cuda->options().query_precision, precision);
      FloatMatrix scores;
      ASSERT_TRUE(cuda->ScoreAll(queries, &scores).ok());
      ASSERT_NO_FATAL_FAILURE(ExpectBitIdentical(
          scores, want[precision == CudaQueryPrecision::kBf16],
          absl::StrCat(CudaPassKernelsName(kernels), " ", CudaQueryPrecisionName(precision))));
    }
  }
  // kAuto: the buckets timed with one precision are dropped when it changes, kept otherwise.
  CudaScorerOptions o;
  o.pass_kernels = CudaPassKernels::kAuto;
  auto cuda = MakeCuda(MakeConfig(data, data.storage), o);
  ASSERT_NE(cuda, nullptr);
  ASSERT_TRUE(cuda->Add(t.keys, Views(t.stored)).ok());
  FloatMatrix scores;
  ASSERT_TRUE(cuda->ScoreAll(queries, &scores).ok());
  ASSERT_EQ(cuda->pass_kernel_choices().size(), 1u);
  cuda->set_query_precision(CudaQueryPrecision::kBf16Split);  // unchanged
  EXPECT_EQ(cuda->pass_kernel_choices().size(), 1u);
  cuda->set_query_precision(CudaQueryPrecision::kBf16);
  EXPECT_TRUE(cuda->pass_kernel_choices().empty());
  ASSERT_TRUE(cuda->ScoreAll(queries, &scores).ok());
  ASSERT_EQ(cuda->pass_kernel_choices().size(), 1u);
  EXPECT_EQ(cuda->pass_kernel_choices()[0].passes[0] + cuda->pass_kernel_choices()[0].passes[1], 1);
}

// kAuto routes each pass to one of the two kernels, so every pass's scores are, bit for bit, the
// GEMM path's or the fused kernel's. Both are timed for each bucket of query rows (a lone query,
// a batch), then the faster runs; shapes the fused kernel cannot take and fp32 storage always take
// the GEMM path, untimed.
TEST(CudaScorerTest, AutoKernelsTimeBothAndScoreAsEither) {
  SCANSERVE_SKIP_WITHOUT_CUDA();
  constexpr int kGemm = static_cast<int>(PassKernel::kGemm);
  constexpr int kFused = static_cast<int>(PassKernel::kFused);
  for (StorageType storage : {StorageType::kBFloat16, StorageType::kFp8E4M3}) {
    CompareOptions data;
    data.storage = storage;
    data.num_stored = 40;
    data.num_queries = 10;
    data.max_regions = 36;
    data.min_words = 5;  // a lone query (<= 20 rows) and the batch (>= 50) in different buckets
    data.max_words = 20;
    data.dim = 64;
    const TestData t = MakeTestData(data);
    const std::string what = data.ToString();
    const std::vector<ItemView> batch = Views(t.queries);
    const std::vector<ItemView> lone = {batch[0]};
    // What each kernel gives, from scorers fixed to it.
    FloatMatrix want[2][2];  // [kernel][lone, batch]
    for (CudaPassKernels kernels : {CudaPassKernels::kGemm, CudaPassKernels::kFused}) {
      CudaScorerOptions o;
      o.pass_kernels = kernels;
      auto cuda = MakeCuda(MakeConfig(data, storage), o);
      ASSERT_NE(cuda, nullptr);
      ASSERT_TRUE(cuda->Add(t.keys, Views(t.stored)).ok());
      const int k = kernels == CudaPassKernels::kFused ? kFused : kGemm;
      ASSERT_TRUE(cuda->ScoreAll(lone, &want[k][0]).ok());
      ASSERT_TRUE(cuda->ScoreAll(batch, &want[k][1]).ok());
    }
    CudaScorerOptions o;
    o.pass_kernels = CudaPassKernels::kAuto;
    auto cuda = MakeCuda(MakeConfig(data, storage), o);
    ASSERT_NE(cuda, nullptr);
    ASSERT_TRUE(cuda->Add(t.keys, Views(t.stored)).ok());
    constexpr int kPasses = 12;  // per bucket: 8 to time both kernels, then the chosen one
    int64_t fused_before = 0;
    for (int shape = 0; shape < 2; ++shape) {
      for (int pass = 0; pass < kPasses; ++pass) {
        FloatMatrix scores;
        ASSERT_TRUE(cuda->ScoreAll(shape == 0 ? lone : batch, &scores).ok()) << what;
        const bool by_fused = cuda->pass_counts().fused > fused_before;
        fused_before = cuda->pass_counts().fused;
        ASSERT_NO_FATAL_FAILURE(ExpectBitIdentical(
            scores, want[by_fused ? kFused : kGemm][shape],
            absl::StrCat(by_fused ? "fused" : "gemm", " pass ", pass, " shape ", shape, " | ",
                         what)));
      }
    }
    // Search goes through the chooser too, and agrees with its own scores.
    auto top = cuda->Search(batch, 5);
    ASSERT_TRUE(top.ok()) << top.status();
    EXPECT_EQ(top->size(), batch.size());
    const std::vector<PassKernelChooser::Bucket> buckets = cuda->pass_kernel_choices();
    ASSERT_EQ(buckets.size(), 2u) << what;
    int64_t lone_rows = batch[0].rows, batch_rows = 0;
    for (const ItemView& q : batch) batch_rows += q.rows;
    EXPECT_LE(buckets[0].min_query_rows, lone_rows);
    EXPECT_GE(buckets[0].max_query_rows, lone_rows);
    EXPECT_LE(buckets[1].min_query_rows, batch_rows);
    EXPECT_GE(buckets[1].max_query_rows, batch_rows);
    int64_t stored_rows = 0;
    for (const auto& item : t.stored) stored_rows += item.rows;
    // The chooser's accounts are the kernels that ran: its times belong to the right kernel.
    EXPECT_EQ(buckets[0].passes[kFused] + buckets[1].passes[kFused], cuda->pass_counts().fused);
    EXPECT_EQ(buckets[0].passes[kGemm] + buckets[1].passes[kGemm], cuda->pass_counts().gemm);
    for (const PassKernelChooser::Bucket& b : buckets) {
      EXPECT_TRUE(b.settled) << what;
      EXPECT_EQ(b.stored_rows, stored_rows);
      EXPECT_GE(b.passes[kGemm], 4) << what;  // one untimed, three timed
      EXPECT_GE(b.passes[kFused], 4) << what;
      EXPECT_GT(b.median_seconds[kGemm], 0) << what;
      EXPECT_GT(b.median_seconds[kFused], 0) << what;
      const int chosen = static_cast<int>(b.choice);
      // Chosen as the faster; kept unless the other became more than 5% faster.
      EXPECT_LE(0.95 * b.median_seconds[chosen], b.median_seconds[1 - chosen]) << what;
      EXPECT_FALSE(b.failed[kGemm] || b.failed[kFused]) << what;
    }
    // What operators see (Scorer::KernelChoices, the server's scorer_kernel_* gauges).
    const std::vector<Scorer::KernelChoice> choices = cuda->KernelChoices();
    ASSERT_EQ(choices.size(), buckets.size());
    for (size_t i = 0; i < choices.size(); ++i) {
      EXPECT_EQ(choices[i].min_query_rows, buckets[i].min_query_rows);
      EXPECT_EQ(choices[i].max_query_rows, buckets[i].max_query_rows);
      EXPECT_EQ(choices[i].kernel, PassKernelName(buckets[i].choice));
      ASSERT_EQ(choices[i].median_seconds.size(), 2u);
      EXPECT_EQ(choices[i].median_seconds[0].first, "gemm");
      EXPECT_EQ(choices[i].median_seconds[0].second, buckets[i].median_seconds[kGemm]);
      EXPECT_EQ(choices[i].median_seconds[1].first, "fused");
      EXPECT_EQ(choices[i].median_seconds[1].second, buckets[i].median_seconds[kFused]);
    }
  }
  // fp32 storage, and a bf16 query longer than the fused kernel's 128 rows: the GEMM path only,
  // and the chooser is not asked.
  for (StorageType storage : {StorageType::kFloat32, StorageType::kBFloat16}) {
    CompareOptions data;
    data.storage = storage;
    data.num_stored = 10;
    data.num_queries = 2;
    data.dim = 64;
    if (storage == StorageType::kBFloat16) data.min_words = data.max_words = 129;
    const TestData t = MakeTestData(data);
    CudaScorerOptions o;
    o.pass_kernels = CudaPassKernels::kAuto;
    auto cuda = MakeCuda(MakeConfig(data, storage), o);
    ASSERT_NE(cuda, nullptr);
    ASSERT_TRUE(cuda->Add(t.keys, Views(t.stored)).ok());
    for (int pass = 0; pass < 3; ++pass) {
      FloatMatrix scores;
      ASSERT_TRUE(cuda->ScoreAll(Views(t.queries), &scores).ok());
    }
    EXPECT_EQ(cuda->pass_counts().gemm, 3) << data.ToString();
    EXPECT_EQ(cuda->pass_counts().fused, 0) << data.ToString();
    EXPECT_TRUE(cuda->pass_kernel_choices().empty()) << data.ToString();
    EXPECT_TRUE(cuda->KernelChoices().empty()) << data.ToString();
  }
}

// Readers at once (the server's batch workers, its metrics thread): with kAuto every pass is
// still bit for bit the GEMM path's or the fused kernel's for its queries, and the chooser's
// timings, Search and the operators' getters stay consistent while passes run.
TEST(CudaScorerTest, ConcurrentReadersScoreAsAlone) {
  SCANSERVE_SKIP_WITHOUT_CUDA();
  CompareOptions data;
  data.storage = StorageType::kBFloat16;
  data.num_stored = 30;
  data.num_queries = 6;
  data.max_regions = 36;
  data.min_words = 5;
  data.max_words = 20;
  data.dim = 64;
  const TestData t = MakeTestData(data);
  const std::string what = data.ToString();
  constexpr int kReaders = 3;
  constexpr int kPassesPerReader = 8;
  constexpr int kTopK = 5;
  // Reader r scores query r alone and the whole batch, in turns.
  const std::vector<ItemView> batch = Views(t.queries);
  std::vector<std::vector<ItemView>> shapes;
  for (int r = 0; r < kReaders; ++r) shapes.push_back({batch[r]});
  shapes.push_back(batch);
  std::vector<FloatMatrix> want[2];  // [gemm, fused][shape]
  for (int kernel = 0; kernel < 2; ++kernel) {
    CudaScorerOptions o;
    o.pass_kernels = kernel == 0 ? CudaPassKernels::kGemm : CudaPassKernels::kFused;
    auto alone = MakeCuda(MakeConfig(data, data.storage), o);
    ASSERT_NE(alone, nullptr);
    ASSERT_TRUE(alone->Add(t.keys, Views(t.stored)).ok());
    want[kernel].resize(shapes.size());
    for (size_t shape = 0; shape < shapes.size(); ++shape) {
      ASSERT_TRUE(alone->ScoreAll(shapes[shape], &want[kernel][shape]).ok()) << what;
    }
  }
  auto same = [](const FloatMatrix& a, const FloatMatrix& b) {
    return a.rows == b.rows && a.cols == b.cols &&
           std::equal(a.data.begin(), a.data.end(), b.data.begin());
  };

  CudaScorerOptions o;
  o.pass_kernels = CudaPassKernels::kAuto;
  auto cuda = MakeCuda(MakeConfig(data, data.storage), o);
  ASSERT_NE(cuda, nullptr);
  ASSERT_TRUE(cuda->Add(t.keys, Views(t.stored)).ok());
  const std::vector<int64_t> keys = cuda->keys();
  std::atomic<int> mismatches{0}, errors{0}, readers_left{kReaders};
  std::vector<std::thread> threads;
  for (int r = 0; r < kReaders; ++r) {
    threads.emplace_back([&, r] {
      for (int pass = 0; pass < kPassesPerReader; ++pass) {
        const size_t shape = pass % 2 == 0 ? r : shapes.size() - 1;
        FloatMatrix scores;
        if (!cuda->ScoreAll(shapes[shape], &scores).ok()) {
          ++errors;
          continue;
        }
        if (!same(scores, want[0][shape]) && !same(scores, want[1][shape])) ++mismatches;
        auto top = cuda->Search(shapes[shape], kTopK);
        if (!top.ok() || top->size() != shapes[shape].size()) {
          ++errors;
          continue;
        }
        // The device's top-k is that of one kernel's scores.
        bool as_either = false;
        for (int kernel = 0; kernel < 2 && !as_either; ++kernel) {
          const auto expected = TopKPerRow(want[kernel][shape], keys, kTopK);
          bool equal = true;
          for (size_t j = 0; j < expected.size() && equal; ++j) {
            equal = (*top)[j].size() == expected[j].size();
            for (size_t k = 0; k < expected[j].size() && equal; ++k) {
              equal = (*top)[j][k].key == expected[j][k].key && (*top)[j][k].score == expected[j][k].score;
            }
          }
          as_either = equal;
        }
        if (!as_either) ++mismatches;
      }
      --readers_left;
    });
  }
  int64_t polls = 0;
  threads.emplace_back([&] {
    while (readers_left.load() > 0) {
      if (cuda->size() != data.num_stored || cuda->keys() != keys || cuda->memory_bytes() <= 0 ||
          !cuda->Health().ok() || !cuda->DeviceMemoryInfo().has_value()) {
        ++errors;
      }
      (void)cuda->KernelPasses();
      (void)cuda->KernelChoices();
      ++polls;
    }
  });
  for (std::thread& thread : threads) thread.join();
  EXPECT_EQ(errors.load(), 0) << what;
  EXPECT_EQ(mismatches.load(), 0) << what;
  EXPECT_GT(polls, 0);
  // Every pass was counted once, and the chooser's accounts are the passes that ran.
  const CudaScorer::PassCounts passes = cuda->pass_counts();
  EXPECT_EQ(passes.gemm + passes.fused, 2 * kReaders * kPassesPerReader) << what;
  int64_t chosen_gemm = 0, chosen_fused = 0;
  for (const PassKernelChooser::Bucket& b : cuda->pass_kernel_choices()) {
    chosen_gemm += b.passes[static_cast<int>(PassKernel::kGemm)];
    chosen_fused += b.passes[static_cast<int>(PassKernel::kFused)];
  }
  EXPECT_EQ(chosen_gemm, passes.gemm) << what;
  EXPECT_EQ(chosen_fused, passes.fused) << what;
}

// A stage's query slices are as tall as the pass's tallest query group: on an H200 at two blocks
// per SM, a lone caption gets the most stages (8 of 12.8 KB in half an SM), full groups of 128
// split rows 3 (30 KB each), unsplit 5 (20 KB); the scores do not depend on it.
TEST(CudaScorerTest, FusedStagesFollowTheTallestQueryGroup) {
  SCANSERVE_SKIP_WITHOUT_CUDA();
  struct Case {
    int queries;
    CudaQueryPrecision precision;
    int stages;
  };
  for (const Case& c : {Case{1, CudaQueryPrecision::kBf16Split, 8},
                        Case{8, CudaQueryPrecision::kBf16Split, 3},
                        Case{8, CudaQueryPrecision::kBf16, 5}}) {
    CompareOptions data;
    data.storage = StorageType::kBFloat16;
    data.num_stored = 30;
    data.num_queries = c.queries;
    data.min_regions = data.max_regions = 36;
    data.min_words = data.max_words = 16;
    data.dim = 64;
    CudaCompareOptions o;
    o.data = data;
    o.cpu_storage = StorageType::kBFloat16;
    o.cuda.pass_kernels = CudaPassKernels::kFused;
    o.cuda.query_precision = c.precision;
    o.expect_fused = true;
    o.max_rel_err = c.precision == CudaQueryPrecision::kBf16 ? kCudaBf16MaxRelErr
                                                             : kCudaBf16SplitMaxRelErr;
    CompareWithCpu(o);
    auto cuda = MakeCuda(MakeConfig(data, data.storage), o.cuda);
    ASSERT_NE(cuda, nullptr);
    const TestData t = MakeTestData(data);
    ASSERT_TRUE(cuda->Add(t.keys, Views(t.stored)).ok());
    FloatMatrix scores;
    ASSERT_TRUE(cuda->ScoreAll(Views(t.queries), &scores).ok());
    if (!absl::StrContains(cuda->DeviceDescription(), "sm_90")) continue;
    EXPECT_EQ(cuda->fused_launch().blocks_per_sm, 2) << data.ToString();
    EXPECT_EQ(cuda->fused_launch().stages, c.stages) << data.ToString();
  }
}

// Identical items under different keys: every score ties, so Search must order by key.
TEST(CudaScorerTest, SearchTiesBySmallerKey) {
  SCANSERVE_SKIP_WITHOUT_CUDA();
  CompareOptions data;
  auto cuda = MakeCuda(MakeConfig(data, StorageType::kFloat32));
  ASSERT_TRUE(cuda);
  ItemGenerator gen(data.dim, 9);
  const FloatMatrix item = gen.Item(7);
  // Enough columns for several top-k tiles and a merge round.
  std::vector<int64_t> keys;
  std::vector<ItemView> views;
  for (int i = 0; i < 5000; ++i) {
    keys.push_back((int64_t{i} * 7919) % 100003 - 50000);
    views.emplace_back(item);
  }
  ASSERT_TRUE(cuda->Add(keys, views).ok());
  const FloatMatrix q = gen.Item(5);
  std::vector<int64_t> sorted = keys;
  std::sort(sorted.begin(), sorted.end());
  for (int k : {1, 10, CudaScorer::kMaxDeviceTopK, CudaScorer::kMaxDeviceTopK + 1}) {
    auto top = cuda->Search({ItemView(q)}, k);
    ASSERT_TRUE(top.ok()) << top.status();
    ASSERT_EQ((*top)[0].size(), static_cast<size_t>(k));
    for (int r = 0; r < k; ++r) EXPECT_EQ((*top)[0][r].key, sorted[r]) << "k " << k << " rank " << r;
  }
}

// Many stored items and queries: Search over several tiles against the host selection.
TEST(CudaScorerTest, SearchManyTilesMatchesHostSelection) {
  SCANSERVE_SKIP_WITHOUT_CUDA();
  CudaCompareOptions o;
  o.data.dim = 16;
  o.data.num_stored = 6000;
  o.data.num_queries = 3;
  o.data.max_regions = 4;
  o.data.max_words = 6;
  CompareWithCpu(o);
}

TEST(CudaScorerTest, RejectsBadOptions) {
  SCANSERVE_SKIP_WITHOUT_CUDA();
  CudaScorerOptions o;
  o.slab_rows = 0;
  EXPECT_EQ(CudaScorer::Create(ScorerConfig{}, o).status().code(),
            absl::StatusCode::kInvalidArgument);
  o = CudaScorerOptions{};
  o.upload_bytes = 0;
  EXPECT_EQ(CudaScorer::Create(ScorerConfig{}, o).status().code(),
            absl::StatusCode::kInvalidArgument);
  for (int blocks : {0, 3}) {
    o = CudaScorerOptions{};
    o.fused_blocks_per_sm = blocks;
    EXPECT_EQ(CudaScorer::Create(ScorerConfig{}, o).status().code(),
              absl::StatusCode::kInvalidArgument);
  }
  for (int stages : {1, 9}) {
    o = CudaScorerOptions{};
    o.fused_max_stages = stages;
    EXPECT_EQ(CudaScorer::Create(ScorerConfig{}, o).status().code(),
              absl::StatusCode::kInvalidArgument);
  }
  o = CudaScorerOptions{};
  o.device = 1 << 20;
  EXPECT_EQ(CudaScorer::Create(ScorerConfig{}, o).status().code(),
            absl::StatusCode::kFailedPrecondition);
}

// Runs everywhere: without a device, Create says so (and the factory passes it through).
TEST(CudaScorerTest, CreateWithoutDeviceIsFailedPrecondition) {
  std::string why;
  if (CudaScorer::DeviceAvailable(&why)) GTEST_SKIP() << "a CUDA device is present";
  auto s = CudaScorer::Create(ScorerConfig{});
  EXPECT_EQ(s.status().code(), absl::StatusCode::kFailedPrecondition) << s.status();
  EXPECT_NE(s.status().message().find("no CUDA device"), absl::string_view::npos) << s.status();
}

}  // namespace
}  // namespace scanserve

#else  // !SCANSERVE_WITH_CUDA

TEST(CudaScorerTest, NotBuilt) {
  GTEST_SKIP() << "no CUDA device: scanserve was built without CUDA (SCANSERVE_WITH_CUDA=OFF)";
}

#endif  // SCANSERVE_WITH_CUDA
