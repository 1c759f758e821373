#include "engine/train/train_checkpoint.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <string>
#include <vector>

#include "engine/train/epoch_order.h"
#include "nlohmann/json.hpp"

namespace scanserve {
namespace {

using Json = nlohmann::json;

constexpr char kPath[] = "/runs/x/checkpoint.json";

TrainCheckpoint Sample() {
  TrainCheckpoint c;
  c.state_file = StateFileName(1234);
  c.adam_step = 1234;
  c.progress.epoch = 2;
  c.progress.iteration = 17;
  c.progress.global_step = 1234;
  c.progress.epoch_loss_sum = 12.3456789012345;
  c.progress.epoch_batches = 17;
  c.progress.best_rsum = 401.25;
  c.progress.best_epoch = 2;
  EpochReport first;
  first.epoch = 1;
  first.mean_loss = 0.1 + 0.2;  // not exact in binary: must still round-trip
  first.best = false;
  first.seconds = 12.5;
  first.dev_seconds = 1.25;
  first.dev.n_images = 1000;
  first.dev.n_captions = 5000;
  first.dev.i2t = {10, 30, 45, 12, 40.5};
  first.dev.t2i = {8, 25, 40, 15, 60.25};
  first.dev.rsum = 158;
  EpochReport second = first;
  second.epoch = 2;
  second.best = true;
  second.dev.rsum = 401.25;
  c.progress.history = {first, second};
  c.settings = Json{{"learning_rate", 0.0002}, {"seed", 7}};
  c.runtime = Json{{"device", "cpu"}, {"threads", 2}};
  return c;
}

absl::Status ParseError(const Json& json) { return ParseTrainCheckpoint(json.dump(), kPath).status(); }

TEST(TrainCheckpointTest, RoundTripsEveryField) {
  const TrainCheckpoint c = Sample();
  absl::StatusOr<TrainCheckpoint> back = ParseTrainCheckpoint(TrainCheckpointToJson(c), kPath);
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->state_file, "state-000001234.safetensors");
  EXPECT_EQ(back->adam_step, 1234);
  const TrainProgress& p = back->progress;
  EXPECT_EQ(p.epoch, 2);
  EXPECT_EQ(p.iteration, 17);
  EXPECT_EQ(p.global_step, 1234);
  EXPECT_EQ(p.epoch_loss_sum, c.progress.epoch_loss_sum);
  EXPECT_EQ(p.epoch_batches, 17);
  EXPECT_EQ(p.best_rsum, 401.25);
  EXPECT_EQ(p.best_epoch, 2);
  ASSERT_EQ(p.history.size(), 2u);
  for (size_t i = 0; i < 2; ++i) {
    const EpochReport& a = c.progress.history[i];
    const EpochReport& b = p.history[i];
    EXPECT_EQ(b.epoch, a.epoch);
    EXPECT_EQ(b.mean_loss, a.mean_loss);
    EXPECT_EQ(b.best, a.best);
    EXPECT_EQ(b.seconds, a.seconds);
    EXPECT_EQ(b.dev_seconds, a.dev_seconds);
    EXPECT_EQ(b.dev.n_images, a.dev.n_images);
    EXPECT_EQ(b.dev.n_captions, a.dev.n_captions);
    EXPECT_EQ(b.dev.i2t.r1, a.dev.i2t.r1);
    EXPECT_EQ(b.dev.i2t.meanr, a.dev.i2t.meanr);
    EXPECT_EQ(b.dev.t2i.r10, a.dev.t2i.r10);
    EXPECT_EQ(b.dev.t2i.medr, a.dev.t2i.medr);
    EXPECT_EQ(b.dev.rsum, a.dev.rsum);
  }
  EXPECT_EQ(back->settings, c.settings);
  EXPECT_EQ(back->runtime, c.runtime);
  // Written again, the text is the same: a resumed run's checkpoint keeps the history as it was.
  EXPECT_EQ(TrainCheckpointToJson(*back), TrainCheckpointToJson(c));
}

TEST(TrainCheckpointTest, ReadsTheFieldsOfTheFormatItHasAlwaysWritten) {
  // checkpoint.json as version 1 wrote it, history entries included.
  const std::string text = R"({
    "format": "scanserve.train_checkpoint", "format_version": 1,
    "state_file": "state-000000016.safetensors", "epoch": 1, "iteration": 4, "global_step": 16,
    "adam_step": 16, "epoch_loss_sum": 3.5, "epoch_batches": 4, "best_rsum": 250.0, "best_epoch": 1,
    "history": [{"epoch": 1, "mean_loss": 0.75, "best": true, "seconds": 3.0, "dev_seconds": 0.5,
                 "dev": {"n_images": 8, "n_captions": 40, "rsum": 250.0,
                         "i2t": {"r1": 50.0, "r5": 100.0, "r10": 100.0, "medr": 1.0, "meanr": 1.5},
                         "t2i": {"r1": 0.0, "r5": 0.0, "r10": 0.0, "medr": 3.0, "meanr": 3.5}}}],
    "settings": {"seed": 0}, "runtime": {"threads": 1}})";
  absl::StatusOr<TrainCheckpoint> c = ParseTrainCheckpoint(text, kPath);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->progress.iteration, 4);
  ASSERT_EQ(c->progress.history.size(), 1u);
  EXPECT_TRUE(c->progress.history[0].best);
  EXPECT_EQ(c->progress.history[0].dev.i2t.r5, 100.0);
  EXPECT_EQ(c->progress.history[0].dev.t2i.meanr, 3.5);
}

TEST(TrainCheckpointTest, TextThatIsNotACheckpointIsDataLoss) {
  for (const std::string& text : {std::string(""), std::string("{"), std::string("[1, 2]"), std::string("7"),
                                  std::string(R"({"format": "something else"})"),
                                  std::string(R"({"format": 3})")}) {
    absl::StatusOr<TrainCheckpoint> c = ParseTrainCheckpoint(text, kPath);
    EXPECT_EQ(c.status().code(), absl::StatusCode::kDataLoss) << text;
    EXPECT_NE(c.status().message().find(kPath), std::string::npos) << c.status();
  }
}

TEST(TrainCheckpointTest, AnotherFormatVersionIsFailedPrecondition) {
  Json json = Json::parse(TrainCheckpointToJson(Sample()));
  json["format_version"] = 2;
  const absl::Status status = ParseError(json);
  EXPECT_EQ(status.code(), absl::StatusCode::kFailedPrecondition) << status;
  EXPECT_NE(status.message().find("format_version 2"), std::string::npos) << status;
}

TEST(TrainCheckpointTest, AFieldOfTheWrongTypeIsDataLossNamingIt) {
  const Json good = Json::parse(TrainCheckpointToJson(Sample()));
  struct Case {
    Json::json_pointer field;
    Json value;
    std::string named;
  };
  const std::vector<Case> cases = {
      {Json::json_pointer("/epoch"), "two", "epoch"},
      {Json::json_pointer("/iteration"), 1.5, "iteration"},
      {Json::json_pointer("/epoch"), 4294967297, "epoch"},  // an int would wrap it to 1
      {Json::json_pointer("/best_rsum"), "high", "best_rsum"},
      {Json::json_pointer("/state_file"), 5, "state_file"},
      {Json::json_pointer("/history"), Json::object(), "history"},
      {Json::json_pointer("/history/1"), 3, "history[1]"},
      {Json::json_pointer("/history/0/best"), "yes", "history[0].best"},
      {Json::json_pointer("/history/1/dev"), Json::array(), "history[1].dev"},
      {Json::json_pointer("/history/1/dev/t2i/r5"), "x", "history[1].dev.t2i.r5"},
      {Json::json_pointer("/settings"), "lr", "settings"},
      {Json::json_pointer("/runtime"), 1, "runtime"},
  };
  for (const Case& c : cases) {
    Json json = good;
    json[c.field] = c.value;
    const absl::Status status = ParseError(json);
    EXPECT_EQ(status.code(), absl::StatusCode::kDataLoss) << c.named << ": " << status;
    EXPECT_NE(status.message().find(c.named), std::string::npos) << status;
  }
}

TEST(TrainCheckpointTest, TheStateFileMustBeAStateFileBesideIt) {
  for (const std::string& name : {std::string(""), std::string("../state-1.safetensors"),
                                  std::string("state-1/../../x.safetensors"), std::string("weights.safetensors"),
                                  std::string("state-1.json")}) {
    Json json = Json::parse(TrainCheckpointToJson(Sample()));
    json["state_file"] = name;
    const absl::Status status = ParseError(json);
    EXPECT_EQ(status.code(), absl::StatusCode::kDataLoss) << name << ": " << status;
  }
}

TEST(TrainCheckpointTest, NegativeCountsAreDataLoss) {
  Json json = Json::parse(TrainCheckpointToJson(Sample()));
  json["iteration"] = -1;
  EXPECT_EQ(ParseError(json).code(), absl::StatusCode::kDataLoss);
}

TEST(TrainCheckpointTest, SettingsDifferenceNamesWhatChanged) {
  const Json stored = {{"learning_rate", 0.0002}, {"seed", 0}, {"batch_size", 128}};
  EXPECT_EQ(SettingsDifference(stored, stored), "");
  Json now = stored;
  now["learning_rate"] = 0.001;
  now["margin"] = 0.2;  // a setting the checkpoint does not have
  const std::string difference = SettingsDifference(stored, now);
  EXPECT_NE(difference.find("learning_rate: checkpoint 0.0002, now 0.001"), std::string::npos) << difference;
  EXPECT_NE(difference.find("margin: checkpoint null, now 0.2"), std::string::npos) << difference;
  EXPECT_EQ(difference.find("seed"), std::string::npos) << difference;
}

TEST(EpochOrderTest, IsAPermutationThatDependsOnSeedAndEpochOnly) {
  for (int64_t n : {0, 1, 2, 5, 1000}) {
    std::vector<int64_t> order = EpochOrder(n, 42, 3);
    EXPECT_EQ(order, EpochOrder(n, 42, 3));
    std::sort(order.begin(), order.end());
    for (int64_t i = 0; i < n; ++i) EXPECT_EQ(order[static_cast<size_t>(i)], i);
  }
  EXPECT_NE(EpochOrder(1000, 42, 3), EpochOrder(1000, 42, 4));
  EXPECT_NE(EpochOrder(1000, 42, 3), EpochOrder(1000, 43, 3));
}

TEST(EpochOrderTest, KeepsTheOrderExistingCheckpointsResumeInto) {
  // Computed independently (a Python transcription of the algorithm in epoch_order.h): a change
  // here would make every existing checkpoint resume into other batches.
  EXPECT_EQ(EpochOrder(10, 0, 0), (std::vector<int64_t>{2, 6, 1, 0, 9, 5, 3, 7, 8, 4}));
  EXPECT_EQ(EpochOrder(10, 42, 3), (std::vector<int64_t>{4, 6, 3, 5, 2, 8, 9, 0, 7, 1}));
  EXPECT_EQ(EpochOrder(12, 20180711, 0), (std::vector<int64_t>{8, 6, 5, 7, 11, 9, 3, 1, 0, 2, 4, 10}));
}

}  // namespace
}  // namespace scanserve
