// ScopedOpenMpThreads: the calling thread's LibTorch team size for a scope, restored after, and
// the CPU encoders running with one OpenMP thread without changing their caller's setting.
#include "engine/model/openmp_threads.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "engine/model/scan_model.h"
#include "tests/engine/test_util/tiny_model.h"

namespace scanserve {
namespace {

namespace fs = std::filesystem;

// Runs `fn` on a thread of its own: LibTorch sets up each thread's team size at its first use,
// which is what the scope must survive.
template <typename Fn>
void OnFreshThread(Fn fn) {
  std::thread thread(fn);
  thread.join();
}

TEST(ScopedOpenMpThreadsTest, SetsTheCallersTeamAndRestoresIt) {
  OnFreshThread([] {
    const int before = ScopedOpenMpThreads::Current();
    ASSERT_GE(before, 1);
    {
      ScopedOpenMpThreads one(1);
      EXPECT_EQ(ScopedOpenMpThreads::Current(), 1);
      {
        ScopedOpenMpThreads three(3);
        EXPECT_EQ(ScopedOpenMpThreads::Current(), 3);
      }
      EXPECT_EQ(ScopedOpenMpThreads::Current(), 1);
    }
    EXPECT_EQ(ScopedOpenMpThreads::Current(), before);
  });
}

TEST(ScopedOpenMpThreadsTest, OtherThreadsKeepTheirTeams) {
  const int main_before = ScopedOpenMpThreads::Current();
  ScopedOpenMpThreads one(1);
  int other = 0;
  OnFreshThread([&] { other = ScopedOpenMpThreads::Current(); });
  EXPECT_EQ(other, main_before);
  EXPECT_EQ(ScopedOpenMpThreads::Current(), 1);
}

class EncoderTeamTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("openmp_threads_test_" + std::to_string(::getpid()));
    fs::remove_all(dir_);
    test_util::WriteTinyModel(dir_, {});
    auto model = ScanModel::Load(dir_.string(), {.num_threads = 2});
    ASSERT_TRUE(model.ok()) << model.status();
    model_ = std::move(*model);
  }
  void TearDown() override { fs::remove_all(dir_); }
  fs::path dir_;
  std::unique_ptr<ScanModel> model_;
};

TEST_F(EncoderTeamTest, CpuEncodingLeavesTheCallersTeamAsItWas) {
  OnFreshThread([&] {
    EXPECT_EQ(ScopedOpenMpThreads::Current(), 2);  // the model's intra-op threads
    ASSERT_TRUE(model_->EncodeCaptions({{1, 4, 5, 2}, {1, 6, 2}}).ok());
    FloatMatrix regions(3, model_->config().img_dim);
    std::mt19937 rng(7);
    regions.data = test_util::RandomValues(regions.rows * regions.cols, rng);
    ASSERT_TRUE(model_->EncodeRegions(regions).ok());
    EXPECT_EQ(ScopedOpenMpThreads::Current(), 2);
  });
  // A caller's own setting survives the encoders' scope and LibTorch's first use on the thread.
  OnFreshThread([&] {
    ScopedOpenMpThreads mine(1);
    ASSERT_TRUE(model_->EncodeCaption({1, 4, 5, 2}).ok());
    EXPECT_EQ(ScopedOpenMpThreads::Current(), 1);
  });
}

TEST_F(EncoderTeamTest, NegativeTeamIsInvalid) {
  ModelLoadOptions options;
  options.cpu_openmp_threads = -1;
  const absl::Status status = ScanModel::Load(dir_.string(), options).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
  EXPECT_NE(status.message().find("cpu_openmp_threads"), std::string::npos) << status;
}

}  // namespace
}  // namespace scanserve
