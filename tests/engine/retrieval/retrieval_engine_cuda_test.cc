// RetrievalEngine on the CUDA backend against the CPU one. Without a GPU these skip here; the
// emulated device (tests/cuda_emulation) runs them on every machine.
#include "engine/retrieval/retrieval_engine.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

#ifdef SCANSERVE_CUDA_EMULATION
#include "scanserve_emu/faults.h"  // injected device failures
#endif

#include "tests/engine/retrieval/retrieval_engine_fixture.h"

namespace scanserve {
namespace retrieval_test {
namespace {

TEST_F(RetrievalEngineTest, CudaEnsembleRanksAsTheCpuOne) {
  // The CUDA backend answers ensembles and filters from the models' device top lists
  // (top_list_search.h): its hits are the CPU engine's full ranking, to rounding.
  RetrievalEngineOptions cpu_options = Options(/*ensemble=*/true);
  cpu_options.synthetic_images = 300;
  RetrievalEngineOptions cuda_options = cpu_options;
  cuda_options.backend = ScorerBackend::kCuda;
  cuda_options.data_dir = (base_ / "data_cuda").string();
  auto cuda = RetrievalEngine::Create(cuda_options);
  if (!cuda.ok() && (cuda.status().code() == absl::StatusCode::kFailedPrecondition ||
                     cuda.status().code() == absl::StatusCode::kUnimplemented)) {
    GTEST_SKIP() << "no CUDA scorer here: " << cuda.status().message();
  }
  ASSERT_TRUE(cuda.ok()) << cuda.status();
  auto cpu = Make(cpu_options);
  ASSERT_NE(cpu, nullptr);
  ExpectAllOk(cpu->UpsertImages(SomeImages(6)));
  ExpectAllOk((*cuda)->UpsertImages(SomeImages(6)));
  SearchParams all;
  all.top_k = 306;
  auto full = cpu->SearchImages(kCaptions, all);
  ASSERT_TRUE(full.ok()) << full.status();
  constexpr float kTol = 1e-4f;
  for (const auto& [collection, top_k] : std::vector<std::pair<std::string, int>>{
           {"", 1}, {"", 10}, {"odd", 3}, {"synthetic", 5}, {"nothing", 4}}) {
    SearchParams params;
    params.top_k = top_k;
    params.filter.collection = collection;
    auto want = cpu->SearchImages(kCaptions, params);
    auto got = (*cuda)->SearchImages(kCaptions, params);
    ASSERT_TRUE(want.ok() && got.ok()) << want.status() << " " << got.status();
    for (size_t q = 0; q < kCaptions.size(); ++q) {
      const std::string where = "filter '" + collection + "' top " + std::to_string(top_k) +
                                " query " + std::to_string(q);
      ASSERT_EQ((*got)[q].size(), (*want)[q].size()) << where;
      for (size_t r = 0; r < (*want)[q].size(); ++r) {
        const ImageHit& hit = (*got)[q][r];
        EXPECT_NEAR(hit.score, (*want)[q][r].score, kTol) << where << " rank " << r;
        // A different id only where two scores tie to rounding: its CPU score must be the same.
        const auto cpu_hit = std::find_if((*full)[q].begin(), (*full)[q].end(),
                                          [&](const ImageHit& h) { return h.id == hit.id; });
        ASSERT_NE(cpu_hit, (*full)[q].end()) << where << ": " << hit.id;
        EXPECT_NEAR(cpu_hit->score, hit.score, kTol) << where << " rank " << r;
        EXPECT_TRUE(collection.empty() || hit.collection == collection) << where;
      }
    }
  }
  const RankingCounts ranked = (*cuda)->Stats().text_to_image_ranking;
  EXPECT_EQ(ranked.scorer_top_k, 0);
  EXPECT_GT(ranked.top_lists, 0) << "the related tiny models' lists decide some queries";
  EXPECT_EQ(ranked.top_lists + ranked.full_scores, 5 * static_cast<int64_t>(kCaptions.size()));
}

#ifdef SCANSERVE_CUDA_EMULATION
// Device failures, injected on the emulated device (tests/cuda_emulation), while a committed
// delete is applied to the scorers: a broken device copy, or no device memory for the
// compaction. The engine neither crashes nor serves what the store no longer holds: it turns
// unhealthy and refuses work until a restart, which reloads exactly what the store holds.
TEST_F(RetrievalEngineTest, CudaDeviceFaultsStopTheEngineUntilARestart) {
  for (scanserve_emu::FaultPoint fault :
       {scanserve_emu::FaultPoint::kCopyOnDevice, scanserve_emu::FaultPoint::kMalloc}) {
    const std::string when = fault == scanserve_emu::FaultPoint::kMalloc ? "malloc" : "copy";
    RetrievalEngineOptions options = Options();
    options.backend = ScorerBackend::kCuda;
    options.data_dir = (base_ / ("data_" + when)).string();
    auto engine = Make(options);
    ASSERT_NE(engine, nullptr);
    ExpectAllOk(engine->UpsertImages(SomeImages(12)));
    scanserve_emu::InjectFault(fault, 1);
    const std::vector<ItemResult> deleted = engine->DeleteImages({"img1", "img5"});
    scanserve_emu::ClearFaults();
    ExpectAllOk(deleted);  // durable: the store has committed them
    EXPECT_EQ(engine->Health().code(), absl::StatusCode::kInternal) << when;
    EXPECT_EQ(engine->SearchImages(kCaptions, {}).status().code(), absl::StatusCode::kInternal) << when;
    ImageQuery query;
    query.stored_id = "img2";
    EXPECT_EQ(engine->SearchCaptions({query}, {}).status().code(), absl::StatusCode::kInternal) << when;
    for (const ItemResult& r : engine->UpsertImages(SomeImages(1, 900))) {
      EXPECT_EQ(r.status.code(), absl::StatusCode::kInternal) << when;
    }
    for (const ItemResult& r : engine->DeleteImages({"img2"})) {
      EXPECT_EQ(r.status.code(), absl::StatusCode::kInternal) << when;
    }
    ASSERT_TRUE(engine->Close().ok());
    engine.reset();

    auto restarted = Make(options);
    ASSERT_NE(restarted, nullptr);
    EXPECT_TRUE(restarted->Health().ok()) << restarted->Health();
    EXPECT_EQ(restarted->Stats().images, 10) << when;
    auto hits = restarted->SearchImages({"a dog"}, {.top_k = 20});
    ASSERT_TRUE(hits.ok()) << hits.status();
    EXPECT_EQ((*hits)[0].size(), 10u);
    for (const ImageHit& hit : (*hits)[0]) {
      EXPECT_NE(hit.id, "img1");
      EXPECT_NE(hit.id, "img5");
    }
  }
}
#endif  // SCANSERVE_CUDA_EMULATION

}  // namespace
}  // namespace retrieval_test
}  // namespace scanserve
