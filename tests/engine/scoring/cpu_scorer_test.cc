// CpuScorer against the ReferenceScorer oracle (FAISS TestGpuIndexFlat style): named tolerances in
// scoring_test_util.h, one driver fed an options struct, the configuration printed on failure.
#include <algorithm>
#include <cstdio>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include "engine/scoring/streaming_gemm.h"
#include "gtest/gtest.h"
#include "scoring_test_util.h"

namespace scanserve {
namespace {

using testing_util::CompareOptions;
using testing_util::CompareResult;
using testing_util::CompareWithReference;
using testing_util::ItemGenerator;
using testing_util::kBf16MaxRelErr;
using testing_util::kFp8MaxRelErr;
using testing_util::kFp8MinTop10Overlap;
using testing_util::kBf16MinTop10Overlap;
using testing_util::kFp32MaxRelErr;
using testing_util::MakeConfig;
using testing_util::MakeTestData;
using testing_util::MaxRelErr;
using testing_util::MeanTop10Overlap;
using testing_util::TestData;
using testing_util::Views;

// ---------------------------------------------------------------------------------------------
// Every raw_feature_norm x every pooling x both cross_attn x both stored kinds, with region counts
// 1..100 and caption lengths 1..40 varying per item.

using ConfigParam = std::tuple<RawFeatureNorm, Pooling, CrossAttention, ItemKind>;

class AllConfigsTest : public ::testing::TestWithParam<ConfigParam> {};

TEST_P(AllConfigsTest, MatchesReference) {
  CompareOptions o;
  std::tie(o.attention.raw_feature_norm, o.attention.pooling, o.attention.cross_attn,
           o.stored_kind) = GetParam();
  const bool t2i = o.attention.cross_attn == CrossAttention::kTextToImage;
  o.attention.lambda_softmax = t2i ? 9.0f : 4.0f;
  o.attention.lambda_lse = t2i ? 6.0f : 20.0f;
  o.num_stored = 10;
  o.num_queries = 3;
  o.seed = 17 + static_cast<uint32_t>(std::get<0>(GetParam())) * 5 +
           static_cast<uint32_t>(std::get<1>(GetParam()));
  CompareWithReference(o);
}

std::string ConfigName(const ::testing::TestParamInfo<ConfigParam>& info) {
  std::string norm(ToString(std::get<0>(info.param)));
  std::string pooling(ToString(std::get<1>(info.param)));
  std::string cross(ToString(std::get<2>(info.param)));
  std::string stored = std::get<3>(info.param) == ItemKind::kImage ? "StoredImages" : "StoredCaptions";
  return norm + "_" + pooling + "_" + cross + "_" + stored;
}

INSTANTIATE_TEST_SUITE_P(
    Scoring, AllConfigsTest,
    ::testing::Combine(::testing::Values(RawFeatureNorm::kClippedL2Norm, RawFeatureNorm::kL2Norm,
                                         RawFeatureNorm::kClipped, RawFeatureNorm::kNoNorm,
                                         RawFeatureNorm::kSoftmax),
                       ::testing::Values(Pooling::kLogSumExp, Pooling::kMean, Pooling::kMax,
                                         Pooling::kSum),
                       ::testing::Values(CrossAttention::kTextToImage, CrossAttention::kImageToText),
                       ::testing::Values(ItemKind::kImage, ItemKind::kCaption)),
    ConfigName);

// ---------------------------------------------------------------------------------------------
// Shapes the blocking has to get right.

CompareOptions Realistic() {
  CompareOptions o;  // released t2i defaults: clipped_l2norm, LogSumExp, λ1 = 9, λ2 = 6
  o.dim = 1024;
  o.min_regions = o.max_regions = 36;
  o.min_words = 12;
  o.max_words = 19;
  o.num_stored = 60;
  o.num_queries = 9;
  return o;
}

TEST(CpuScorerShapes, RealisticT2iManyBlocksAndQueryGroups) {
  CompareOptions o = Realistic();
  o.cpu.block_rows = 100;       // 2 images per block
  o.cpu.query_block_rows = 40;  // 2-3 captions per GEMM
  CompareWithReference(o);
}

TEST(CpuScorerShapes, RealisticI2tQueryIsContext) {
  CompareOptions o = Realistic();
  o.attention.cross_attn = CrossAttention::kImageToText;
  o.attention.lambda_softmax = 4.0f;
  o.attention.lambda_lse = 5.0f;
  o.cpu.block_rows = 500;
  CompareWithReference(o);
}

// The streaming kernels (streaming_gemm.h) and GemmNT are two ways to the same products: every
// storage type, both directions, both stored kinds, exact against the oracle on the stored values.
TEST(CpuScorerShapes, StreamingKernelsScoreAsTheBlasPath) {
  const bool can_stream = BestStreamingGemmIsa() != StreamingGemmIsa::kNone;
  if (!can_stream) std::printf("[note] no AVX2 + FMA: only the BLAS path runs here\n");
  for (StorageType storage :
       {StorageType::kFloat32, StorageType::kBFloat16, StorageType::kFp8E4M3}) {
    for (CrossAttention cross : {CrossAttention::kTextToImage, CrossAttention::kImageToText}) {
      for (ItemKind kind : {ItemKind::kImage, ItemKind::kCaption}) {
        CompareOptions o = Realistic();
        o.dim = 96;  // a multiple of 32 that is not one of 64: tails of the widest steps
        o.attention.cross_attn = cross;
        o.stored_kind = kind;
        o.num_stored = 25;
        o.num_queries = 5;
        o.cpu.block_rows = 150;
        o.storage = storage;
        SCOPED_TRACE(o.ToString());
        TestData t = MakeTestData(o);
        std::vector<FloatMatrix> rounded;
        for (const FloatMatrix& m : t.stored) rounded.push_back(testing_util::RoundedTo(storage, m));
        CpuScorerOptions streaming = o.cpu, blas = o.cpu;
        streaming.streaming_max_query_rows = 1 << 20;
        blas.streaming_max_query_rows = 0;
        auto s_stream = CpuScorer::Create(MakeConfig(o, storage), streaming);
        auto s_blas = CpuScorer::Create(MakeConfig(o, storage), blas);
        auto ref = ReferenceScorer::Create(MakeConfig(o, StorageType::kFloat32));
        ASSERT_TRUE(s_stream.ok() && s_blas.ok() && ref.ok());
        ASSERT_TRUE((*s_stream)->Add(t.keys, Views(t.stored)).ok());
        ASSERT_TRUE((*s_blas)->Add(t.keys, Views(t.stored)).ok());
        ASSERT_TRUE((*ref)->Add(t.keys, Views(rounded)).ok());
        FloatMatrix a, b, r;
        ASSERT_TRUE((*s_stream)->ScoreAll(Views(t.queries), &a).ok());
        ASSERT_TRUE((*s_blas)->ScoreAll(Views(t.queries), &b).ok());
        ASSERT_TRUE((*ref)->ScoreAll(Views(t.queries), &r).ok());
        std::string worst;
        EXPECT_LE(MaxRelErr(a, (*s_stream)->keys(), r, (*ref)->keys(), &worst), kFp32MaxRelErr)
            << "streamed: " << worst;
        EXPECT_LE(MaxRelErr(b, (*s_blas)->keys(), r, (*ref)->keys(), &worst), kFp32MaxRelErr)
            << "blas: " << worst;
        EXPECT_EQ((*s_stream)->pass_counts().streamed > 0, can_stream);
        EXPECT_EQ((*s_stream)->pass_counts().blas > 0, !can_stream);
        EXPECT_EQ((*s_blas)->pass_counts().streamed, 0);
        EXPECT_GT((*s_blas)->pass_counts().blas, 0);
      }
    }
  }
}

// By default a lone caption streams and a batch of captions taller than 64 rows takes GemmNT;
// dimensions the kernels do not take (not a multiple of 32) always take GemmNT.
TEST(CpuScorerShapes, StreamingKernelsTakeShortQueryGroups) {
  if (BestStreamingGemmIsa() == StreamingGemmIsa::kNone) GTEST_SKIP() << "no AVX2 + FMA";
  for (int64_t dim : {64, 48}) {
    CompareOptions o = Realistic();
    o.dim = dim;
    o.num_stored = 10;
    o.num_queries = 8;  // 8 captions of 12..19 words: 96..152 rows
    TestData t = MakeTestData(o);
    auto cpu = CpuScorer::Create(MakeConfig(o, StorageType::kBFloat16), o.cpu);
    ASSERT_TRUE(cpu.ok());
    ASSERT_TRUE((*cpu)->Add(t.keys, Views(t.stored)).ok());
    FloatMatrix scores;
    const std::vector<ItemView> queries = Views(t.queries);
    ASSERT_TRUE((*cpu)->ScoreAll(absl::MakeConstSpan(queries).subspan(0, 1), &scores).ok());
    EXPECT_EQ((*cpu)->pass_counts().streamed > 0, dim % 32 == 0) << dim;
    const int64_t streamed = (*cpu)->pass_counts().streamed;
    const int64_t blas = (*cpu)->pass_counts().blas;
    ASSERT_TRUE((*cpu)->ScoreAll(Views(t.queries), &scores).ok());
    EXPECT_EQ((*cpu)->pass_counts().streamed, streamed) << dim;
    EXPECT_GT((*cpu)->pass_counts().blas, blas) << dim;
  }
  CpuScorerOptions bad;
  bad.streaming_max_query_rows = -1;
  ScorerConfig config;
  config.dim = 64;
  EXPECT_EQ(CpuScorer::Create(config, bad).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(CpuScorerShapes, SharedGemmParallelism) {
  for (StorageType storage : {StorageType::kFloat32, StorageType::kBFloat16}) {
    for (CrossAttention cross : {CrossAttention::kTextToImage, CrossAttention::kImageToText}) {
      CompareOptions o = Realistic();
      o.attention.cross_attn = cross;
      o.storage = storage;
      o.cpu.parallelism = CpuParallelism::kSharedGemm;
      o.cpu.block_rows = 300;
      o.cpu.query_block_rows = 50;
      if (storage == StorageType::kBFloat16) o.max_rel_err = kBf16MaxRelErr;
      CompareWithReference(o);
    }
  }
}

TEST(CpuScorerShapes, PerThreadUnitsSplitSmallStores) {
  // Few stored rows: blocks shrink to min_block_rows so both threads get units.
  CompareOptions o = Realistic();
  o.num_stored = 20;
  o.cpu.min_block_rows = 40;
  CompareWithReference(o);
  o.cpu.min_block_rows = 1;
  o.stored_kind = ItemKind::kCaption;
  CompareWithReference(o);
}

TEST(CpuScorerShapes, OneItemPerBlock) {
  CompareOptions o;
  o.cpu.block_rows = 1;
  o.cpu.min_block_rows = 1;
  o.cpu.query_block_rows = 1;
  o.num_stored = 7;
  CompareWithReference(o);
  o.stored_kind = ItemKind::kCaption;
  CompareWithReference(o);
}

TEST(CpuScorerShapes, SingleStoredItem) {
  for (ItemKind kind : {ItemKind::kImage, ItemKind::kCaption}) {
    for (CrossAttention cross : {CrossAttention::kTextToImage, CrossAttention::kImageToText}) {
      CompareOptions o;
      o.stored_kind = kind;
      o.attention.cross_attn = cross;
      o.num_stored = 1;
      CompareWithReference(o);
    }
  }
}

TEST(CpuScorerShapes, SingleRowItems) {
  // One region, one word: the reference code itself breaks here (squeeze); we must not.
  for (CrossAttention cross : {CrossAttention::kTextToImage, CrossAttention::kImageToText}) {
    CompareOptions o;
    o.attention.cross_attn = cross;
    o.min_regions = o.max_regions = 1;
    o.min_words = o.max_words = 1;
    CompareWithReference(o);
  }
}

TEST(CpuScorerShapes, LongItems) {
  CompareOptions o;
  o.min_regions = 90;
  o.max_regions = 300;
  o.min_words = 30;
  o.max_words = 130;
  o.num_stored = 6;
  CompareWithReference(o);
  o.attention.cross_attn = CrossAttention::kImageToText;
  CompareWithReference(o);
}

TEST(CpuScorerShapes, NonNormalisedRows) {
  // Nothing may assume |row| = 1: the cosine divides by both norms.
  for (CrossAttention cross : {CrossAttention::kTextToImage, CrossAttention::kImageToText}) {
    CompareOptions o;
    o.attention.cross_attn = cross;
    o.row_scale = 3.0;
    CompareWithReference(o);
  }
}

TEST(CpuScorerShapes, OneThread) {
  CompareOptions o;
  o.num_threads = 1;
  CompareWithReference(o);
}

TEST(CpuScorerShapes, BatchingDoesNotChangeScores) {
  CompareOptions o = Realistic();
  const TestData t = MakeTestData(o);
  auto cpu = CpuScorer::Create(MakeConfig(o, StorageType::kFloat32));
  ASSERT_TRUE(cpu.ok());
  ASSERT_TRUE((*cpu)->Add(t.keys, Views(t.stored)).ok());
  FloatMatrix all;
  ASSERT_TRUE((*cpu)->ScoreAll(Views(t.queries), &all).ok());
  for (size_t j = 0; j < t.queries.size(); ++j) {
    FloatMatrix one;
    ASSERT_TRUE((*cpu)->ScoreAll({ItemView(t.queries[j])}, &one).ok());
    for (int64_t c = 0; c < all.cols; ++c) {
      EXPECT_NEAR(one.at(0, c), all.at(static_cast<int64_t>(j), c), 1e-6) << "query " << j;
    }
  }
}

TEST(CpuScorerShapes, ConcurrentScoreAll) {
  CompareOptions o;
  o.num_stored = 30;
  const TestData t = MakeTestData(o);
  auto cpu = CpuScorer::Create(MakeConfig(o, StorageType::kFloat32));
  ASSERT_TRUE(cpu.ok());
  ASSERT_TRUE((*cpu)->Add(t.keys, Views(t.stored)).ok());
  FloatMatrix expected;
  ASSERT_TRUE((*cpu)->ScoreAll(Views(t.queries), &expected).ok());
  std::vector<FloatMatrix> got(4);
  std::vector<std::thread> threads;
  for (int i = 0; i < 4; ++i) {
    threads.emplace_back([&, i] { EXPECT_TRUE((*cpu)->ScoreAll(Views(t.queries), &got[i]).ok()); });
  }
  for (std::thread& th : threads) th.join();
  for (const FloatMatrix& g : got) EXPECT_EQ(g.data, expected.data);
}

// ---------------------------------------------------------------------------------------------
// Store edge cases.

ScorerConfig SmallConfig(ItemKind kind = ItemKind::kImage) {
  ScorerConfig c;
  c.dim = 16;
  c.stored_kind = kind;
  c.num_threads = 2;
  return c;
}

TEST(CpuScorerStore, EmptyStore) {
  auto cpu = CpuScorer::Create(SmallConfig());
  ASSERT_TRUE(cpu.ok());
  ItemGenerator gen(16, 3);
  std::vector<FloatMatrix> q = {gen.Item(5), gen.Item(1)};
  FloatMatrix scores(7, 7);
  ASSERT_TRUE((*cpu)->ScoreAll(Views(q), &scores).ok());
  EXPECT_EQ(scores.rows, 2);
  EXPECT_EQ(scores.cols, 0);
  auto found = (*cpu)->Search(Views(q), 5);
  ASSERT_TRUE(found.ok());
  ASSERT_EQ(found->size(), 2u);
  EXPECT_TRUE((*found)[0].empty());
  EXPECT_TRUE((*found)[1].empty());
  EXPECT_EQ((*cpu)->size(), 0);
  EXPECT_TRUE((*cpu)->keys().empty());
}

TEST(CpuScorerStore, SearchKLargerThanSizeAndOrder) {
  CompareOptions o;
  o.num_stored = 5;
  o.dim = 16;
  const TestData t = MakeTestData(o);
  auto cpu = CpuScorer::Create(MakeConfig(o, StorageType::kFloat32));
  ASSERT_TRUE(cpu.ok());
  ASSERT_TRUE((*cpu)->Add(t.keys, Views(t.stored)).ok());
  auto found = (*cpu)->Search(Views(t.queries), 50);
  ASSERT_TRUE(found.ok()) << found.status();
  FloatMatrix scores;
  ASSERT_TRUE((*cpu)->ScoreAll(Views(t.queries), &scores).ok());
  const std::vector<int64_t> keys = (*cpu)->keys();
  for (size_t j = 0; j < t.queries.size(); ++j) {
    const auto& row = (*found)[j];
    ASSERT_EQ(row.size(), 5u);
    for (size_t i = 1; i < row.size(); ++i) EXPECT_GE(row[i - 1].score, row[i].score);
    for (const ScoredKey& s : row) {
      const int64_t col = std::find(keys.begin(), keys.end(), s.key) - keys.begin();
      EXPECT_EQ(s.score, scores.at(static_cast<int64_t>(j), col));
    }
  }
  auto top1 = (*cpu)->Search(Views(t.queries), 1);
  ASSERT_TRUE(top1.ok());
  for (size_t j = 0; j < t.queries.size(); ++j) {
    ASSERT_EQ((*top1)[j].size(), 1u);
    EXPECT_EQ((*top1)[j][0].key, (*found)[j][0].key);
  }
}

TEST(CpuScorerStore, UpsertReplaces) {
  ItemGenerator gen(16, 5);
  std::vector<FloatMatrix> a = {gen.Item(3), gen.Item(4), gen.Item(5)};
  FloatMatrix replacement = gen.Item(7);
  std::vector<FloatMatrix> q = {gen.Item(6)};
  auto cpu = CpuScorer::Create(SmallConfig());
  auto fresh = CpuScorer::Create(SmallConfig());
  ASSERT_TRUE(cpu.ok() && fresh.ok());
  ASSERT_TRUE((*cpu)->Add({1, 2, 3}, Views(a)).ok());
  ASSERT_TRUE((*cpu)->Add({2}, {ItemView(replacement)}).ok());
  EXPECT_EQ((*cpu)->size(), 3);
  EXPECT_EQ((*cpu)->keys(), (std::vector<int64_t>{1, 3, 2}));  // an upserted key moves to the end
  ASSERT_TRUE((*fresh)->Add({1, 3, 2}, {ItemView(a[0]), ItemView(a[2]), ItemView(replacement)}).ok());
  FloatMatrix s1, s2;
  ASSERT_TRUE((*cpu)->ScoreAll(Views(q), &s1).ok());
  ASSERT_TRUE((*fresh)->ScoreAll(Views(q), &s2).ok());
  EXPECT_EQ(s1.data, s2.data);
}

TEST(CpuScorerStore, RemoveThenAbsentAndUnknownKey) {
  ItemGenerator gen(16, 6);
  std::vector<FloatMatrix> a = {gen.Item(3), gen.Item(4), gen.Item(5)};
  std::vector<FloatMatrix> q = {gen.Item(6)};
  auto cpu = CpuScorer::Create(SmallConfig());
  ASSERT_TRUE(cpu.ok());
  ASSERT_TRUE((*cpu)->Add({10, 20, 30}, Views(a)).ok());
  FloatMatrix before;
  ASSERT_TRUE((*cpu)->ScoreAll(Views(q), &before).ok());

  // An unknown key among known ones: NOT_FOUND and nothing removed.
  const absl::Status st = (*cpu)->Remove({10, 99});
  EXPECT_EQ(st.code(), absl::StatusCode::kNotFound) << st;
  EXPECT_EQ((*cpu)->size(), 3);

  ASSERT_TRUE((*cpu)->Remove({20}).ok());
  EXPECT_EQ((*cpu)->keys(), (std::vector<int64_t>{10, 30}));
  FloatMatrix after;
  ASSERT_TRUE((*cpu)->ScoreAll(Views(q), &after).ok());
  ASSERT_EQ(after.cols, 2);
  EXPECT_EQ(after.at(0, 0), before.at(0, 0));
  EXPECT_EQ(after.at(0, 1), before.at(0, 2));
  EXPECT_EQ((*cpu)->Remove({20}).code(), absl::StatusCode::kNotFound);
  auto found = (*cpu)->Search(Views(q), 10);
  ASSERT_TRUE(found.ok());
  for (const ScoredKey& s : (*found)[0]) EXPECT_NE(s.key, 20);

  ASSERT_TRUE((*cpu)->Remove({10, 30}).ok());
  EXPECT_EQ((*cpu)->size(), 0);
  ASSERT_TRUE((*cpu)->ScoreAll(Views(q), &after).ok());
  EXPECT_EQ(after.cols, 0);
}

// Interleaved adds, upserts and removes (through tombstones and compactions) keep matching the
// oracle, which is given the same operations.
TEST(CpuScorerStore, MutationsTrackReference) {
  for (StorageType storage : {StorageType::kFloat32, StorageType::kBFloat16}) {
    for (ItemKind kind : {ItemKind::kImage, ItemKind::kCaption}) {
      CompareOptions o;
      o.stored_kind = kind;
      o.dim = 24;
      o.max_regions = 40;
      o.cpu.block_rows = 64;
      SCOPED_TRACE(o.ToString() + (storage == StorageType::kBFloat16 ? " (bf16)" : ""));
      auto cpu = CpuScorer::Create(MakeConfig(o, storage), o.cpu);
      auto ref = ReferenceScorer::Create(MakeConfig(o, StorageType::kFloat32));
      ASSERT_TRUE(cpu.ok() && ref.ok());
      ItemGenerator gen(o.dim, 99);
      std::vector<FloatMatrix> queries = {gen.Item(gen.Uniform(1, 30)), gen.Item(gen.Uniform(1, 30))};
      int64_t next_key = 0;
      std::vector<int64_t> live;
      int64_t peak_bytes = 0;
      for (int step = 0; step < 12; ++step) {
        // Add 6 new keys and upsert 1 existing one.
        std::vector<int64_t> keys;
        std::vector<FloatMatrix> items;
        for (int i = 0; i < 6; ++i) keys.push_back(next_key++);
        if (!live.empty()) keys.push_back(live[gen.Uniform(0, live.size() - 1)]);
        for (size_t i = 0; i < keys.size(); ++i) {
          FloatMatrix m = gen.Item(gen.Uniform(1, 40));
          // bf16: give the oracle the rounded values so both score the same items.
          items.push_back(storage == StorageType::kBFloat16 ? testing_util::RoundedToBFloat16(m) : m);
        }
        ASSERT_TRUE((*cpu)->Add(keys, Views(items)).ok());
        ASSERT_TRUE((*ref)->Add(keys, Views(items)).ok());
        for (int64_t k : keys) {
          if (std::find(live.begin(), live.end(), k) == live.end()) live.push_back(k);
        }
        peak_bytes = std::max(peak_bytes, (*cpu)->memory_bytes());
        // Remove 4 (more than added late on, so the store shrinks and compacts).
        std::vector<int64_t> gone;
        for (int i = 0; i < (step < 6 ? 2 : 7) && !live.empty(); ++i) {
          const int64_t at = gen.Uniform(0, live.size() - 1);
          gone.push_back(live[at]);
          live.erase(live.begin() + at);
        }
        ASSERT_TRUE((*cpu)->Remove(gone).ok());
        ASSERT_TRUE((*ref)->Remove(gone).ok());
        ASSERT_EQ((*cpu)->keys(), (*ref)->keys()) << "step " << step;
        FloatMatrix s_cpu, s_ref;
        ASSERT_TRUE((*cpu)->ScoreAll(Views(queries), &s_cpu).ok());
        ASSERT_TRUE((*ref)->ScoreAll(Views(queries), &s_ref).ok());
        std::string worst;
        EXPECT_LE(MaxRelErr(s_cpu, (*cpu)->keys(), s_ref, (*ref)->keys(), &worst), kFp32MaxRelErr)
            << "step " << step << " worst " << worst;
      }
      EXPECT_LT((*cpu)->memory_bytes(), peak_bytes) << "compaction should have released rows";
    }
  }
}

// ---------------------------------------------------------------------------------------------
// bf16 storage.

TEST(CpuScorerNarrowStorage, ExactOnRoundedItems) {
  // bf16 and fp8 scores are the exact scores of the rounded items: compare with the oracle fed
  // the rounded values, at the fp32 tolerance. Memory: values at 2 (bf16) or 1 (fp8) bytes.
  struct Case {
    StorageType storage;
    double max_memory_vs_fp32;
  };
  for (const Case& c : {Case{StorageType::kBFloat16, 0.6}, Case{StorageType::kFp8E4M3, 0.35}}) {
    for (CrossAttention cross : {CrossAttention::kTextToImage, CrossAttention::kImageToText}) {
      for (ItemKind kind : {ItemKind::kImage, ItemKind::kCaption}) {
        CompareOptions o = Realistic();
        o.attention.cross_attn = cross;
        o.stored_kind = kind;
        o.num_stored = 30;
        o.cpu.block_rows = 200;
        o.storage = c.storage;
        SCOPED_TRACE(o.ToString());
        TestData t = MakeTestData(o);
        std::vector<FloatMatrix> rounded;
        int64_t values = 0;
        for (const FloatMatrix& m : t.stored) {
          rounded.push_back(testing_util::RoundedTo(c.storage, m));
          values += static_cast<int64_t>(m.data.size());
        }
        auto cpu = CpuScorer::Create(MakeConfig(o, c.storage), o.cpu);
        auto ref = ReferenceScorer::Create(MakeConfig(o, StorageType::kFloat32));
        ASSERT_TRUE(cpu.ok() && ref.ok());
        ASSERT_TRUE((*cpu)->Add(t.keys, Views(t.stored)).ok());
        ASSERT_TRUE((*ref)->Add(t.keys, Views(rounded)).ok());
        FloatMatrix s_cpu, s_ref;
        ASSERT_TRUE((*cpu)->ScoreAll(Views(t.queries), &s_cpu).ok());
        ASSERT_TRUE((*ref)->ScoreAll(Views(t.queries), &s_ref).ok());
        std::string worst;
        EXPECT_LE(MaxRelErr(s_cpu, (*cpu)->keys(), s_ref, (*ref)->keys(), &worst), kFp32MaxRelErr)
            << worst;
        EXPECT_LT((*cpu)->memory_bytes(), values * 4 * c.max_memory_vs_fp32);
      }
    }
  }
}

TEST(CpuScorerNarrowStorage, Fp8SurvivesCompactionAndUpsert) {
  // Removing most items compacts the arena (codes and row scales move together); an upsert
  // re-encodes. Scores stay those of the rounded items.
  CompareOptions o = Realistic();
  o.num_stored = 40;
  o.storage = StorageType::kFp8E4M3;
  TestData t = MakeTestData(o);
  auto cpu = CpuScorer::Create(MakeConfig(o, StorageType::kFp8E4M3), o.cpu);
  auto ref = ReferenceScorer::Create(MakeConfig(o, StorageType::kFloat32));
  ASSERT_TRUE(cpu.ok() && ref.ok());
  std::vector<FloatMatrix> rounded;
  for (const FloatMatrix& m : t.stored) rounded.push_back(testing_util::RoundedToFp8(m));
  ASSERT_TRUE((*cpu)->Add(t.keys, Views(t.stored)).ok());
  ASSERT_TRUE((*ref)->Add(t.keys, Views(rounded)).ok());
  const std::vector<int64_t> gone(t.keys.begin(), t.keys.begin() + 30);
  ASSERT_TRUE((*cpu)->Remove(gone).ok());
  ASSERT_TRUE((*ref)->Remove(gone).ok());
  // Upsert the last key with the first (removed) item's values.
  const std::vector<int64_t> upsert = {t.keys.back()};
  ASSERT_TRUE((*cpu)->Add(upsert, Views({t.stored.front()})).ok());
  ASSERT_TRUE((*ref)->Add(upsert, Views({rounded.front()})).ok());
  FloatMatrix s_cpu, s_ref;
  ASSERT_TRUE((*cpu)->ScoreAll(Views(t.queries), &s_cpu).ok());
  ASSERT_TRUE((*ref)->ScoreAll(Views(t.queries), &s_ref).ok());
  EXPECT_EQ((*cpu)->keys(), (*ref)->keys());
  EXPECT_LE(MaxRelErr(s_cpu, (*cpu)->keys(), s_ref, (*ref)->keys()), kFp32MaxRelErr);
}

TEST(CpuScorerNarrowStorage, AgreesWithFp32WithinTolerance) {
  // Against the fp32 oracle on the original data: the error bf16 / fp8 rounding introduces, and
  // the ranking agreement (reported as test properties; required >= the stated overlap).
  struct Case {
    StorageType storage;
    double max_rel_err;
    double min_top10_overlap;
  };
  for (const Case& c : {Case{StorageType::kBFloat16, kBf16MaxRelErr, kBf16MinTop10Overlap},
                        Case{StorageType::kFp8E4M3, kFp8MaxRelErr, kFp8MinTop10Overlap}}) {
    for (CrossAttention cross : {CrossAttention::kTextToImage, CrossAttention::kImageToText}) {
      CompareOptions o = Realistic();
      o.attention.cross_attn = cross;
      o.storage = c.storage;
      o.num_stored = 120;
      o.num_queries = 12;
      o.max_rel_err = c.max_rel_err;
      const CompareResult r = CompareWithReference(o);
      const std::string name = absl::StrCat(StorageTypeName(c.storage), "_", ToString(cross));
      std::printf("[%s vs fp32]: max rel err %.3g, mean top-10 overlap %.3f\n", name.c_str(),
                  r.max_rel_err, r.mean_top10_overlap);
      ::testing::Test::RecordProperty("max_rel_err_" + name, std::to_string(r.max_rel_err));
      ::testing::Test::RecordProperty("top10_overlap_" + name, std::to_string(r.mean_top10_overlap));
      EXPECT_GE(r.mean_top10_overlap, c.min_top10_overlap) << o.ToString();
    }
  }
}

}  // namespace
}  // namespace scanserve
