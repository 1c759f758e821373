#include "engine/train/train_checkpoint.h"

#include <utility>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
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

// Typed reads of an object's fields: a missing field keeps the default, a present one of another
// type is DATA_LOSS naming it (`where` is its path in the file, e.g. "history[2].dev").
class FieldReader {
 public:
  FieldReader(const Json& object, std::string where, absl::string_view path)
      : object_(object), where_(std::move(where)), path_(path) {}

  template <typename T>
  absl::Status Read(const char* name, T* out) const {
    auto it = object_.find(name);
    if (it == object_.end()) return absl::OkStatus();
    if (!Fits<T>(*it)) return Bad(name, TypeName<T>());
    *out = it->template get<T>();
    return absl::OkStatus();
  }
  absl::StatusOr<const Json*> Object(const char* name) const {
    auto it = object_.find(name);
    if (it == object_.end()) return nullptr;
    if (!it->is_object()) return Bad(name, "an object");
    return &*it;
  }
  absl::StatusOr<const Json*> Array(const char* name) const {
    auto it = object_.find(name);
    if (it == object_.end()) return nullptr;
    if (!it->is_array()) return Bad(name, "an array");
    return &*it;
  }
  std::string Where(const std::string& name) const {
    return where_.empty() ? name : absl::StrCat(where_, ".", name);
  }

 private:
  template <typename T>
  static bool Fits(const Json& v) {
    if constexpr (std::is_same_v<T, bool>) return v.is_boolean();
    if constexpr (std::is_same_v<T, std::string>) return v.is_string();
    if constexpr (std::is_integral_v<T> && !std::is_same_v<T, bool>) return v.is_number_integer();
    if constexpr (std::is_floating_point_v<T>) return v.is_number();
    return false;
  }
  template <typename T>
  static const char* TypeName() {
    if constexpr (std::is_same_v<T, bool>) return "true or false";
    if constexpr (std::is_same_v<T, std::string>) return "a string";
    if constexpr (std::is_integral_v<T>) return "an integer";
    return "a number";
  }
  absl::Status Bad(const char* name, const char* expected) const {
    return absl::DataLossError(
        absl::StrCat(path_, ": ", Where(name), " must be ", expected, "; the file is damaged"));
  }

  const Json& object_;
  std::string where_;
  absl::string_view path_;
};

absl::Status ReadRecall(const FieldReader& parent, const char* name, RecallMetrics* r,
                        absl::string_view path) {
  SCANSERVE_ASSIGN_OR_RETURN(const Json* object, parent.Object(name));
  if (object == nullptr) return absl::OkStatus();
  const FieldReader fields(*object, parent.Where(name), path);
  SCANSERVE_RETURN_IF_ERROR(fields.Read("r1", &r->r1));
  SCANSERVE_RETURN_IF_ERROR(fields.Read("r5", &r->r5));
  SCANSERVE_RETURN_IF_ERROR(fields.Read("r10", &r->r10));
  SCANSERVE_RETURN_IF_ERROR(fields.Read("medr", &r->medr));
  return fields.Read("meanr", &r->meanr);
}

absl::Status ReadReport(const Json& entry, const std::string& where, absl::string_view path,
                        EpochReport* r) {
  if (!entry.is_object()) {
    return absl::DataLossError(absl::StrCat(path, ": ", where, " must be an object; the file is damaged"));
  }
  const FieldReader fields(entry, where, path);
  SCANSERVE_RETURN_IF_ERROR(fields.Read("epoch", &r->epoch));
  SCANSERVE_RETURN_IF_ERROR(fields.Read("mean_loss", &r->mean_loss));
  SCANSERVE_RETURN_IF_ERROR(fields.Read("best", &r->best));
  SCANSERVE_RETURN_IF_ERROR(fields.Read("seconds", &r->seconds));
  SCANSERVE_RETURN_IF_ERROR(fields.Read("dev_seconds", &r->dev_seconds));
  SCANSERVE_ASSIGN_OR_RETURN(const Json* dev, fields.Object("dev"));
  if (dev == nullptr) return absl::OkStatus();
  const FieldReader dev_fields(*dev, fields.Where("dev"), path);
  SCANSERVE_RETURN_IF_ERROR(dev_fields.Read("n_images", &r->dev.n_images));
  SCANSERVE_RETURN_IF_ERROR(dev_fields.Read("n_captions", &r->dev.n_captions));
  SCANSERVE_RETURN_IF_ERROR(ReadRecall(dev_fields, "i2t", &r->dev.i2t, path));
  SCANSERVE_RETURN_IF_ERROR(ReadRecall(dev_fields, "t2i", &r->dev.t2i, path));
  return dev_fields.Read("rsum", &r->dev.rsum);
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
  const Json json = Json::parse(text.begin(), text.end(), nullptr, /*allow_exceptions=*/false);
  if (json.is_discarded() || !json.is_object() || json.value("format", Json()) != kCheckpointFormat) {
    return absl::DataLossError(absl::StrCat(path, ": not a scan_train checkpoint"));
  }
  const FieldReader fields(json, "", path);
  int version = 0;
  SCANSERVE_RETURN_IF_ERROR(fields.Read("format_version", &version));
  if (version != kCheckpointVersion) {
    return absl::FailedPreconditionError(absl::StrCat(path, ": unsupported format_version ", version,
                                                      " (this trainer reads ", kCheckpointVersion, ")"));
  }
  TrainCheckpoint c;
  TrainProgress& p = c.progress;
  SCANSERVE_RETURN_IF_ERROR(fields.Read("state_file", &c.state_file));
  // A plain name beside checkpoint.json: the trainer deletes the other state-* files there.
  if (!absl::StartsWith(c.state_file, "state-") || !absl::EndsWith(c.state_file, ".safetensors") ||
      c.state_file.find('/') != std::string::npos) {
    return absl::DataLossError(absl::StrCat(path, ": state_file must name a state-*.safetensors file beside it, got \"",
                                            c.state_file, "\"; the file is damaged"));
  }
  SCANSERVE_RETURN_IF_ERROR(fields.Read("epoch", &p.epoch));
  SCANSERVE_RETURN_IF_ERROR(fields.Read("iteration", &p.iteration));
  SCANSERVE_RETURN_IF_ERROR(fields.Read("global_step", &p.global_step));
  SCANSERVE_RETURN_IF_ERROR(fields.Read("adam_step", &c.adam_step));
  SCANSERVE_RETURN_IF_ERROR(fields.Read("epoch_loss_sum", &p.epoch_loss_sum));
  SCANSERVE_RETURN_IF_ERROR(fields.Read("epoch_batches", &p.epoch_batches));
  SCANSERVE_RETURN_IF_ERROR(fields.Read("best_rsum", &p.best_rsum));
  SCANSERVE_RETURN_IF_ERROR(fields.Read("best_epoch", &p.best_epoch));
  if (p.epoch < 0 || p.iteration < 0 || p.global_step < 0 || c.adam_step < 0 || p.epoch_batches < 0) {
    return absl::DataLossError(absl::StrCat(path, ": negative epoch, iteration or step counts; the file is damaged"));
  }
  SCANSERVE_ASSIGN_OR_RETURN(const Json* history, fields.Array("history"));
  if (history != nullptr) {
    for (size_t i = 0; i < history->size(); ++i) {
      EpochReport report;
      SCANSERVE_RETURN_IF_ERROR(ReadReport((*history)[i], absl::StrCat("history[", i, "]"), path, &report));
      p.history.push_back(report);
    }
  }
  SCANSERVE_ASSIGN_OR_RETURN(const Json* settings, fields.Object("settings"));
  if (settings != nullptr) c.settings = *settings;
  SCANSERVE_ASSIGN_OR_RETURN(const Json* runtime, fields.Object("runtime"));
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
