// scan_train's checkpoint record (checkpoint.json, the commit point of a checkpoint directory):
// where the run stands, the settings it must be resumed with, and the state file beside it that
// holds the weights and Adam's moments. Torch-free: the tensors are the trainer's.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "engine/eval/precomp_split.h"
#include "engine/eval/retrieval_metrics.h"
#include "engine/model/model_config.h"
#include "engine/train/scan_trainer.h"
#include "nlohmann/json.hpp"

namespace scanserve {

inline constexpr char kTrainCheckpointFile[] = "checkpoint.json";

// Where a run stands.
struct TrainProgress {
  int epoch = 0;          // 0-based epoch in progress
  int64_t iteration = 0;  // next iteration within the epoch
  int64_t global_step = 0;
  double epoch_loss_sum = 0;
  int64_t epoch_batches = 0;
  double best_rsum = -1;
  int best_epoch = 0;
  std::vector<EpochReport> history;  // every finished epoch
};

struct TrainCheckpoint {
  std::string state_file;  // StateFileName(global step), beside checkpoint.json
  int64_t adam_step = 0;
  TrainProgress progress;
  nlohmann::json settings = nlohmann::json::object();  // ComparableSettings of the writing run
  nlohmann::json runtime = nlohmann::json::object();   // device and thread counts
};

// "state-<global step, 9 digits>.safetensors".
std::string StateFileName(int64_t global_step);

// checkpoint.json's text.
std::string TrainCheckpointToJson(const TrainCheckpoint& checkpoint);

// Reads checkpoint.json's text (`path` names it in errors). DATA_LOSS, naming the field, for text
// that is not a checkpoint this trainer wrote (not JSON, another format, a field of the wrong type,
// a state file that is not a plain state-*.safetensors name); FAILED_PRECONDITION for another
// format_version.
absl::StatusOr<TrainCheckpoint> ParseTrainCheckpoint(absl::string_view text, absl::string_view path);

// What must match between a checkpoint and a resuming run: everything that changes the numbers.
nlohmann::json ComparableSettings(const TrainOptions& options, const ModelConfig& config,
                                  const PrecompSplit& train, int64_t dev_images);

// The settings in `now` that differ from `stored`, as "name: checkpoint X, now Y; ..."; empty when
// none do.
std::string SettingsDifference(const nlohmann::json& stored, const nlohmann::json& now);

}  // namespace scanserve
