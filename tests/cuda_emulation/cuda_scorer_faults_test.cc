// CudaScorer's error paths, on the emulated device with injected failures
// (scanserve_emu/faults.h). The contract (engine/scoring/cuda/README.md):
//  - a failed Add changes nothing: the scorer keeps its keys and scores;
//  - a failed Remove that could not reserve its compaction buffer changes nothing;
//  - a device copy that fails midway through a compaction breaks the scorer: every later call,
//    and Health(), is INTERNAL (a restart reloads the store);
//  - a failed scoring pass changes nothing.
// Each case walks the failure over every call of its kind that the operation makes, so no step
// of the operation is left out. CpuScorer, given the same successful operations, is the oracle.
#include <memory>
#include <string>
#include <vector>

#include "engine/scoring/cpu_scorer.h"
#include "engine/scoring/cuda_scorer.h"
#include "gtest/gtest.h"
#include "scanserve_emu/faults.h"
#include "tests/engine/scoring/scoring_test_util.h"

namespace scanserve {
namespace {

using scanserve_emu::FaultPoint;
using testing_util::CompareOptions;
using testing_util::ItemGenerator;
using testing_util::MakeConfig;
using testing_util::MaxRelErr;
using testing_util::Views;

// fp32 against CpuScorer fp32; fp8 (the fused pass) against CpuScorer fp8, as in
// cuda_scorer_test.cc.
constexpr double kFp32MaxRelErr = testing_util::kFp32MaxRelErr;
constexpr double kFp8MaxRelErr = 1e-4;
constexpr int kMaxCalls = 200;  // more calls of one kind than any operation here makes

std::string FaultAt(FaultPoint point, int nth) {
  return std::string("fault at ") + scanserve_emu::FaultPointName(point) + " #" + std::to_string(nth);
}

// op() with the nth call at `point` from now on failing; *fired says whether it did (false: op
// makes fewer such calls).
template <typename Op>
auto WithFault(FaultPoint point, int nth, bool* fired, Op op) {
  const int before = scanserve_emu::FaultsFired();
  scanserve_emu::InjectFault(point, nth);
  auto result = op();
  scanserve_emu::ClearFaults();
  *fired = scanserve_emu::FaultsFired() != before;
  return result;
}

class CudaScorerFaultTest : public ::testing::TestWithParam<ItemKind> {
 protected:
  void SetUp() override {
    scanserve_emu::ClearFaults();
    data_.stored_kind = GetParam();
    data_.num_stored = 0;
    data_.dim = 32;
  }
  void TearDown() override { scanserve_emu::ClearFaults(); }

  // A CUDA scorer with small slabs (so that adds open slabs and compactions move rows) and its
  // CPU twin, both holding items 0..n-1, fp32 or fp8, and three fresh queries.
  void Fill(int n, bool fp8 = false, CudaPassKernels kernels = CudaPassKernels::kGemm) {
    const StorageType storage = fp8 ? StorageType::kFp8E4M3 : StorageType::kFloat32;
    max_rel_err_ = fp8 ? kFp8MaxRelErr : kFp32MaxRelErr;
    CudaScorerOptions options;
    options.slab_rows = 40;
    options.pass_kernels = kernels;
    auto cuda = CudaScorer::Create(MakeConfig(data_, storage), options);
    ASSERT_TRUE(cuda.ok()) << cuda.status();
    cuda_ = std::move(cuda).value();
    auto cpu = CpuScorer::Create(MakeConfig(data_, storage));
    ASSERT_TRUE(cpu.ok()) << cpu.status();
    cpu_ = std::move(cpu).value();
    queries_.clear();
    for (int j = 0; j < 3; ++j) queries_.push_back(gen_.Item(gen_.Uniform(1, 12)));
    std::vector<int64_t> keys;
    std::vector<FloatMatrix> items;
    for (int i = 0; i < n; ++i) {
      keys.push_back(i);
      items.push_back(gen_.Item(gen_.Uniform(1, 12)));
    }
    ASSERT_TRUE(cuda_->Add(keys, Views(items)).ok());
    ASSERT_TRUE(cpu_->Add(keys, Views(items)).ok());
  }

  // The CUDA scorer holds what the CPU scorer holds and scores it alike.
  void ExpectSameAsCpu(const std::string& when) {
    ASSERT_TRUE(cuda_->Health().ok()) << when << ": " << cuda_->Health();
    EXPECT_EQ(cuda_->keys(), cpu_->keys()) << when;
    FloatMatrix a, b;
    const absl::Status sa = cuda_->ScoreAll(Views(queries_), &a);
    ASSERT_TRUE(sa.ok()) << when << ": " << sa;
    ASSERT_TRUE(cpu_->ScoreAll(Views(queries_), &b).ok());
    EXPECT_LE(MaxRelErr(a, cuda_->keys(), b, cpu_->keys()), max_rel_err_) << when;
    auto top = cuda_->Search(Views(queries_), 5);
    ASSERT_TRUE(top.ok()) << when << ": " << top.status();
    const auto want = TopKPerRow(a, cuda_->keys(), 5);
    for (size_t j = 0; j < want.size(); ++j) {
      ASSERT_EQ((*top)[j].size(), want[j].size()) << when;
      for (size_t r = 0; r < want[j].size(); ++r) EXPECT_EQ((*top)[j][r].key, want[j][r].key) << when;
    }
  }

  // A search under a failure at each call of each kind it makes: it fails and changes nothing.
  void FailEveryPassCall();

  // Only a failure once a compaction has begun may break the scorer; every later call of a
  // broken scorer is INTERNAL, and so is its health.
  void ExpectBroken(const std::string& when) {
    EXPECT_EQ(cuda_->Health().code(), absl::StatusCode::kInternal) << when;
    EXPECT_NE(cuda_->Health().message().find("while compacting"), absl::string_view::npos)
        << when << ": " << cuda_->Health();
    FloatMatrix scores;
    EXPECT_EQ(cuda_->ScoreAll(Views(queries_), &scores).code(), absl::StatusCode::kInternal) << when;
    EXPECT_EQ(cuda_->Search(Views(queries_), 3).status().code(), absl::StatusCode::kInternal) << when;
    const FloatMatrix item = gen_.Item(2);
    EXPECT_EQ(cuda_->Add({1000}, {ItemView(item)}).code(), absl::StatusCode::kInternal) << when;
    EXPECT_EQ(cuda_->Remove({cuda_->keys().front()}).code(), absl::StatusCode::kInternal) << when;
  }

  CompareOptions data_;
  double max_rel_err_ = kFp32MaxRelErr;
  ItemGenerator gen_{32, 7};
  std::unique_ptr<CudaScorer> cuda_;
  std::unique_ptr<CpuScorer> cpu_;
  std::vector<FloatMatrix> queries_;
};

const std::vector<FaultPoint> kAllPoints = {
    FaultPoint::kMalloc,  FaultPoint::kCopyToDevice, FaultPoint::kCopyToHost, FaultPoint::kCopyOnDevice,
    FaultPoint::kMemset,  FaultPoint::kLaunch,       FaultPoint::kGemm,       FaultPoint::kSynchronize};

// New items (opening slabs) and upserts (compacting the old copies' slabs) under a failure at
// each call of each kind: the Add fails and nothing changes, or the compaction broke the scorer.
TEST_P(CudaScorerFaultTest, FailedAddChangesNothingOrBreaksInCompaction) {
  for (FaultPoint point : kAllPoints) {
    for (int nth = 1; nth <= kMaxCalls; ++nth) {
      Fill(30);
      ASSERT_NE(cuda_, nullptr);
      // Keys 5 and 17 exist (upserts), 100..107 are new.
      std::vector<int64_t> keys = {100, 5, 101, 102, 17, 103, 104, 105, 106, 107};
      std::vector<FloatMatrix> items;
      for (size_t i = 0; i < keys.size(); ++i) items.push_back(gen_.Item(gen_.Uniform(1, 12)));
      const std::string when = FaultAt(point, nth);
      bool fired = false;
      const absl::Status st =
          WithFault(point, nth, &fired, [&] { return cuda_->Add(keys, Views(items)); });
      if (!fired) {  // the Add makes fewer such calls: done
        ASSERT_TRUE(st.ok()) << when << ": " << st;
        ASSERT_TRUE(cpu_->Add(keys, Views(items)).ok());
        ExpectSameAsCpu(when + " (not reached)");
        break;
      }
      ASSERT_FALSE(st.ok()) << when << ": an injected failure must fail the Add";
      if (!cuda_->Health().ok()) {
        ExpectBroken(when);  // the upserts' compaction had begun
      } else {
        ExpectSameAsCpu(when);
        // ...and the same Add then succeeds.
        ASSERT_TRUE(cuda_->Add(keys, Views(items)).ok()) << when;
        ASSERT_TRUE(cpu_->Add(keys, Views(items)).ok());
        ExpectSameAsCpu(when + ", then the Add again");
      }
      queries_.clear();
    }
  }
}

// Remove under a failure at each call: nothing changes (the compaction buffer could not be had),
// or the compaction broke the scorer.
TEST_P(CudaScorerFaultTest, FailedRemoveChangesNothingOrBreaks) {
  for (FaultPoint point : kAllPoints) {
    for (int nth = 1; nth <= kMaxCalls; ++nth) {
      Fill(30);
      ASSERT_NE(cuda_, nullptr);
      const std::vector<int64_t> gone = {0, 3, 12, 13, 29};
      const std::string when = FaultAt(point, nth);
      bool fired = false;
      const absl::Status st =
          WithFault(point, nth, &fired, [&] { return cuda_->Remove(gone); });
      if (!fired) {
        ASSERT_TRUE(st.ok()) << when << ": " << st;
        ASSERT_TRUE(cpu_->Remove(gone).ok());
        ExpectSameAsCpu(when + " (not reached)");
        break;
      }
      ASSERT_FALSE(st.ok()) << when;
      if (cuda_->Health().ok()) {
        EXPECT_EQ(st.code(), absl::StatusCode::kResourceExhausted) << when << ": " << st;
        ExpectSameAsCpu(when);
      } else {
        ExpectBroken(when);
      }
      queries_.clear();
    }
  }
}

// A failed scoring pass (ScoreAll, Search) changes nothing.
TEST_P(CudaScorerFaultTest, FailedPassChangesNothing) {
  Fill(30);
  ASSERT_NE(cuda_, nullptr);
  FailEveryPassCall();
}
TEST_P(CudaScorerFaultTest, FailedFusedPassChangesNothing) {
  Fill(30, /*fp8=*/true, CudaPassKernels::kFused);
  ASSERT_NE(cuda_, nullptr);
  FailEveryPassCall();
  EXPECT_GT(cuda_->pass_counts().fused, 0);
  EXPECT_EQ(cuda_->pass_counts().gemm, 0);
}

// --cuda-kernels auto: a kernel that fails costs one request. The chooser stops choosing it for
// passes of that shape and the scorer goes on, correctly, with the other; a failure outside the
// kernels (the queries' upload, the top k) is held against neither.
TEST_P(CudaScorerFaultTest, AutoKernelsStopChoosingAFailedKernel) {
  constexpr int kGemm = static_cast<int>(PassKernel::kGemm);
  constexpr int kFused = static_cast<int>(PassKernel::kFused);
  // The chooser tries the GEMM path first (an untimed pass), then the fused kernel: fail each
  // launch of that second pass in turn.
  int fused_marked = 0;
  for (int nth = 1; nth <= kMaxCalls; ++nth) {
    Fill(30, /*fp8=*/true, CudaPassKernels::kAuto);
    ASSERT_NE(cuda_, nullptr);
    ASSERT_TRUE(cuda_->Search(Views(queries_), 4).ok());
    ASSERT_EQ(cuda_->pass_counts().gemm, 1);
    const std::string when = FaultAt(FaultPoint::kLaunch, nth);
    bool fired = false;
    auto top = WithFault(FaultPoint::kLaunch, nth, &fired,
                         [&] { return cuda_->Search(Views(queries_), 4); });
    if (!fired) {
      ASSERT_TRUE(top.ok()) << when << ": " << top.status();
      break;
    }
    EXPECT_FALSE(top.ok()) << when;
    // The launches before the choice (the queries' norms and bf16 parts) fail the pass before a
    // kernel is chosen.
    EXPECT_EQ(cuda_->pass_counts().gemm, 1) << when;
    EXPECT_LE(cuda_->pass_counts().fused, 1) << when;
    std::vector<PassKernelChooser::Bucket> buckets = cuda_->pass_kernel_choices();
    ASSERT_EQ(buckets.size(), 1u) << when;
    EXPECT_FALSE(buckets[0].failed[kGemm]) << when;
    const bool fused_failed = buckets[0].failed[kFused];
    if (fused_failed) EXPECT_EQ(cuda_->pass_counts().fused, 1) << when;
    fused_marked += fused_failed;
    for (int i = 0; i < 5; ++i) ExpectSameAsCpu(when);
    // Ten passes later: no fused pass after the fused kernel failed; both kernels otherwise.
    const CudaScorer::PassCounts counts = cuda_->pass_counts();
    if (fused_failed) {
      EXPECT_EQ(counts.fused, 1) << when;
      EXPECT_EQ(counts.gemm, 11) << when;
    } else {
      EXPECT_GT(counts.fused, 1) << when;
      EXPECT_GT(counts.gemm, 1) << when;
    }
  }
  EXPECT_EQ(fused_marked, 1) << "the fused kernel's one launch, and only it, marks it failed";

  // The GEMM path's cuBLAS call fails in the first pass: fused passes only from then on.
  Fill(30, /*fp8=*/true, CudaPassKernels::kAuto);
  ASSERT_NE(cuda_, nullptr);
  bool fired = false;
  EXPECT_FALSE(
      WithFault(FaultPoint::kGemm, 1, &fired, [&] { return cuda_->Search(Views(queries_), 4); })
          .ok());
  ASSERT_TRUE(fired);
  ASSERT_EQ(cuda_->pass_kernel_choices().size(), 1u);
  EXPECT_TRUE(cuda_->pass_kernel_choices()[0].failed[kGemm]);
  for (int i = 0; i < 5; ++i) ExpectSameAsCpu("after the GEMM path failed");
  EXPECT_EQ(cuda_->pass_counts().gemm, 1);
  EXPECT_EQ(cuda_->pass_counts().fused, 10);
}

void CudaScorerFaultTest::FailEveryPassCall() {
  for (FaultPoint point : kAllPoints) {
    for (int nth = 1; nth <= kMaxCalls; ++nth) {
      const std::string when = FaultAt(point, nth);
      bool fired = false;
      auto top =
          WithFault(point, nth, &fired, [&] { return cuda_->Search(Views(queries_), 4); });
      if (!fired) {
        ASSERT_TRUE(top.ok()) << when << ": " << top.status();
        break;
      }
      EXPECT_FALSE(top.ok()) << when;
      ExpectSameAsCpu(when);
    }
  }
}

// A failure while the scorer is created is a status (RESOURCE_EXHAUSTED for memory), never a
// crash; a scorer created after it works.
TEST_P(CudaScorerFaultTest, FailedCreateIsAStatus) {
  for (FaultPoint point : kAllPoints) {
    for (int nth = 1; nth <= kMaxCalls; ++nth) {
      const std::string when = FaultAt(point, nth);
      bool fired = false;
      auto created =
          WithFault(point, nth, &fired,
                    [&] { return CudaScorer::Create(MakeConfig(data_, StorageType::kBFloat16)); });
      if (!fired) {
        ASSERT_TRUE(created.ok()) << when << ": " << created.status();
        break;
      }
      ASSERT_FALSE(created.ok()) << when;
      if (point == FaultPoint::kMalloc) {
        EXPECT_EQ(created.status().code(), absl::StatusCode::kResourceExhausted) << when;
      }
    }
  }
  Fill(5);
  ASSERT_NE(cuda_, nullptr);
  ExpectSameAsCpu("after the failed creations");
}

INSTANTIATE_TEST_SUITE_P(Stored, CudaScorerFaultTest,
                         ::testing::Values(ItemKind::kImage, ItemKind::kCaption),
                         [](const ::testing::TestParamInfo<ItemKind>& info) {
                           return std::string(info.param == ItemKind::kImage ? "images" : "captions");
                         });

}  // namespace
}  // namespace scanserve
