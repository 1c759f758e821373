#include "engine/train/train_checkpoint.h"

#include <utility>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "engine/common/json_fields.h"
#include "engine/common/status_macros.h"

namespace scanserve {
namespace {

using Json = nlohmann::json;

constexpr char kCheckpointFormat[] = "scanserve.train_checkpoint";
constexpr int kCheckpointVersion = 1;

Json RecallToJson(const RecallMetrics& r) {
  return Json{{"r1", r.r1}, {"r5", r.r5}, {"r10", r.r10}, {"medr", r.medr}, {"meanr", r.meanr}};
}

Json MetricsToJson(const RetrievalMetrics& m) {
  return Json{{"n_images", m.n_images}, {"n_captions", m.n_captions}, {"i2t", RecallToJson(m.i2t)},
              {"t2i", RecallToJson(m.t2i)}, {"rsum", m.rsum}};
}

Json ReportToJson(const EpochReport& r) {
  return Json{{"epoch", r.epoch},     {"mean_loss", r.mean_loss}, {"dev", MetricsToJson(r.dev)},
              {"best", r.best},       {"seconds", r.seconds},     {"dev_seconds", r.dev_seconds}};
}

absl::Status ReadRecall(const JsonFields& parent, const char* name, RecallMetrics* r) {
  SCANSERVE_ASSIGN_OR_RETURN(const Json* object, parent.OptionalObject(name));
  if (object == nullptr) return absl::OkStatus();
  const JsonFields fields = parent.Nested(*object, name);
  SCANSERVE_RETURN_IF_ERROR(fields.Optional("r1", &r->r1));
  SCANSERVE_RETURN_IF_ERROR(fields.Optional("r5", &r->r5));
  SCANSERVE_RETURN_IF_ERROR(fields.Optional("r10", &r->r10));
  SCANSERVE_RETURN_IF_ERROR(fields.Optional("medr", &r->medr));
  return fields.Optional("meanr", &r->meanr);
}

// history[index]; `history` reads the array, so that messages name "history[index]".
absl::Status ReadReport(const JsonFields& history, const Json& entry, size_t index, EpochReport* r) {
  SCANSERVE_ASSIGN_OR_RETURN(const JsonFields fields, history.NestedObject(entry, absl::StrCat("[", index, "]")));
  SCANSERVE_RETURN_IF_ERROR(fields.Optional("epoch", &r->epoch));
  SCANSERVE_RETURN_IF_ERROR(fields.Optional("mean_loss", &r->mean_loss));
  SCANSERVE_RETURN_IF_ERROR(fields.Optional("best", &r->best));
  SCANSERVE_RETURN_IF_ERROR(fields.Optional("seconds", &r->seconds));
  SCANSERVE_RETURN_IF_ERROR(fields.Optional("dev_seconds", &r->dev_seconds));
  SCANSERVE_ASSIGN_OR_RETURN(const Json* dev, fields.OptionalObject("dev"));
  if (dev == nullptr) return absl::OkStatus();
  const JsonFields dev_fields = fields.Nested(*dev, "dev");
  SCANSERVE_RETURN_IF_ERROR(dev_fields.Optional("n_images", &r->dev.n_images));
  SCANSERVE_RETURN_IF_ERROR(dev_fields.Optional("n_captions", &r->dev.n_captions));
  SCANSERVE_RETURN_IF_ERROR(ReadRecall(dev_fields, "i2t", &r->dev.i2t));
  SCANSERVE_RETURN_IF_ERROR(ReadRecall(dev_fields, "t2i", &r->dev.t2i));
  return dev_fields.Optional("rsum", &r->dev.rsum);
}

}  // namespace

std::string StateFileName(int64_t global_step) {
  return absl::StrFormat("state-%09d.safetensors", global_step);
}

std::string TrainCheckpointToJson(const TrainCheckpoint& c) {
  const TrainProgress& p = c.progress;
  Json history = Json::array();
  for (const EpochReport& r : p.history) history.push_back(ReportToJson(r));
  const Json json = {
      {"format", kCheckpointFormat},
      {"format_version", kCheckpointVersion},
      {"state_file", c.state_file},
      {"epoch", p.epoch},
      {"iteration", p.iteration},
      {"global_step", p.global_step},
      {"adam_step", c.adam_step},
      {"epoch_loss_sum", p.epoch_loss_sum},
      {"epoch_batches", p.epoch_batches},
      {"best_rsum", p.best_rsum},
      {"best_epoch", p.best_epoch},
      {"history", history},
      {"settings", c.settings},
      {"runtime", c.runtime},
  };
  return json.dump(2) + "\n";
}

absl::StatusOr<TrainCheckpoint> ParseTrainCheckpoint(absl::string_view text, absl::string_view path) {
  SCANSERVE_ASSIGN_OR_RETURN(const Json json, ParseJsonObject(text, path, absl::StatusCode::kDataLoss));
  if (json.value("format", Json()) != kCheckpointFormat) {
    return absl::DataLossError(absl::StrCat(path, ": not a scan_train checkpoint"));
  }
  const JsonFields fields(json, std::string(path), absl::StatusCode::kDataLoss);
  int version = 0;
  SCANSERVE_RETURN_IF_ERROR(fields.Optional("format_version", &version));
  if (version != kCheckpointVersion) {
    return absl::FailedPreconditionError(absl::StrCat(path, ": unsupported format_version ", version,
                                                      " (this trainer reads ", kCheckpointVersion, ")"));
  }
  TrainCheckpoint c;
  TrainProgress& p = c.progress;
  SCANSERVE_RETURN_IF_ERROR(fields.Optional("state_file", &c.state_file));
  // A plain name beside checkpoint.json: the trainer deletes the other state-* files there.
  if (!absl::StartsWith(c.state_file, "state-") || !absl::EndsWith(c.state_file, ".safetensors") ||
      c.state_file.find('/') != std::string::npos) {
    return absl::DataLossError(absl::StrCat(path, ": state_file must name a state-*.safetensors file beside it, got \"",
                                            c.state_file, "\"; the file is damaged"));
  }
  SCANSERVE_RETURN_IF_ERROR(fields.Optional("epoch", &p.epoch));
  SCANSERVE_RETURN_IF_ERROR(fields.Optional("iteration", &p.iteration));
  SCANSERVE_RETURN_IF_ERROR(fields.Optional("global_step", &p.global_step));
  SCANSERVE_RETURN_IF_ERROR(fields.Optional("adam_step", &c.adam_step));
  SCANSERVE_RETURN_IF_ERROR(fields.Optional("epoch_loss_sum", &p.epoch_loss_sum));
  SCANSERVE_RETURN_IF_ERROR(fields.Optional("epoch_batches", &p.epoch_batches));
  SCANSERVE_RETURN_IF_ERROR(fields.Optional("best_rsum", &p.best_rsum));
  SCANSERVE_RETURN_IF_ERROR(fields.Optional("best_epoch", &p.best_epoch));
  if (p.epoch < 0 || p.iteration < 0 || p.global_step < 0 || c.adam_step < 0 || p.epoch_batches < 0) {
    return absl::DataLossError(absl::StrCat(path, ": negative epoch, iteration or step counts; the file is damaged"));
  }
  SCANSERVE_ASSIGN_OR_RETURN(const Json* history, fields.OptionalArray("history"));
  if (history != nullptr) {
    const JsonFields entries = fields.Nested(*history, "history");
    for (size_t i = 0; i < history->size(); ++i) {
      EpochReport report;
      SCANSERVE_RETURN_IF_ERROR(ReadReport(entries, (*history)[i], i, &report));
      p.history.push_back(report);
    }
  }
  SCANSERVE_ASSIGN_OR_RETURN(const Json* settings, fields.OptionalObject("settings"));
  if (settings != nullptr) c.settings = *settings;
  SCANSERVE_ASSIGN_OR_RETURN(const Json* runtime, fields.OptionalObject("runtime"));
  if (runtime != nullptr) c.runtime = *runtime;
  return c;
}

Json ComparableSettings(const TrainOptions& o, const ModelConfig& config, const PrecompSplit& train,
                        int64_t dev_images) {
  return Json{
      {"model_config", Json::parse(config.ToJson())},
      {"train_split", o.train_split},
      {"train_images", train.num_images},
      {"train_captions", static_cast<int64_t>(train.captions.size())},
      {"dev_split", o.dev_split},
      {"dev_images", dev_images},
      {"margin", o.loss.margin},
      {"max_violation", o.loss.max_violation},
      {"warmup_sum_epochs", o.warmup_sum_epochs},
      {"learning_rate", o.learning_rate},
      {"lr_update", o.lr_update},
      {"batch_size", o.batch_size},
      {"grad_clip", o.grad_clip},
      {"seed", o.seed},
  };
}

std::string SettingsDifference(const Json& stored, const Json& now) {
  std::string out;
  for (auto it = now.begin(); it != now.end(); ++it) {
    const Json stored_value = stored.is_object() && stored.contains(it.key()) ? stored[it.key()] : Json();
    if (stored_value != it.value()) {
      absl::StrAppend(&out, out.empty() ? "" : "; ", it.key(), ": checkpoint ", stored_value.dump(),
                      ", now ", it.value().dump());
    }
  }
  return out;
}

}  // namespace scanserve
