#include "engine/model/model_config.h"

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "engine/common/file_read.h"
#include "engine/common/json_fields.h"
#include "engine/common/status_macros.h"
#include "nlohmann/json.hpp"

namespace scanserve {
namespace {

using Json = nlohmann::json;

template <typename Int>
absl::Status PositiveInt(const JsonFields& fields, const char* name, Int* out) {
  SCANSERVE_RETURN_IF_ERROR(fields.Required(name, out));
  if (*out <= 0) return fields.Error(name, "must be a positive integer");
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<ModelConfig> ModelConfig::FromJson(const std::string& json_text) {
  SCANSERVE_ASSIGN_OR_RETURN(const Json json,
                             ParseJsonObject(json_text, "config.json", absl::StatusCode::kInvalidArgument));
  const JsonFields fields(json, "config.json", absl::StatusCode::kInvalidArgument);
  if (auto it = json.find("format"); it != json.end() && *it != "scanserve.scan_model") {
    return fields.Error("format", "is not \"scanserve.scan_model\"");
  }
  if (auto it = json.find("format_version"); it != json.end() && *it != 1) {
    return fields.Error("format_version", absl::StrCat("is ", it->dump(), "; this build reads version 1"));
  }
  ModelConfig c;
  std::string cross_attn, agg_func, norm;
  SCANSERVE_RETURN_IF_ERROR(fields.Required("cross_attn", &cross_attn));
  SCANSERVE_ASSIGN_OR_RETURN(c.attention.cross_attn, ParseCrossAttention(cross_attn));
  SCANSERVE_RETURN_IF_ERROR(fields.Required("agg_func", &agg_func));
  SCANSERVE_ASSIGN_OR_RETURN(c.attention.pooling, ParsePooling(agg_func));
  SCANSERVE_RETURN_IF_ERROR(fields.Required("raw_feature_norm", &norm));
  SCANSERVE_ASSIGN_OR_RETURN(c.attention.raw_feature_norm, ParseRawFeatureNorm(norm));
  SCANSERVE_RETURN_IF_ERROR(fields.Required("lambda_softmax", &c.attention.lambda_softmax));
  SCANSERVE_RETURN_IF_ERROR(fields.Required("lambda_lse", &c.attention.lambda_lse));
  if (!(c.attention.lambda_softmax > 0)) return fields.Error("lambda_softmax", "must be > 0");
  if (c.attention.pooling == Pooling::kLogSumExp && !(c.attention.lambda_lse > 0)) {
    return fields.Error("lambda_lse", "must be > 0 for LogSumExp pooling");
  }
  SCANSERVE_RETURN_IF_ERROR(fields.Required("bi_gru", &c.bi_gru));
  SCANSERVE_RETURN_IF_ERROR(PositiveInt(fields, "num_layers", &c.num_layers));
  SCANSERVE_RETURN_IF_ERROR(fields.Optional("no_imgnorm", &c.no_imgnorm));
  SCANSERVE_RETURN_IF_ERROR(fields.Optional("no_txtnorm", &c.no_txtnorm));
  SCANSERVE_RETURN_IF_ERROR(fields.Optional("precomp_enc_type", &c.precomp_enc_type));
  SCANSERVE_RETURN_IF_ERROR(PositiveInt(fields, "embed_size", &c.embed_size));
  SCANSERVE_RETURN_IF_ERROR(PositiveInt(fields, "word_dim", &c.word_dim));
  SCANSERVE_RETURN_IF_ERROR(PositiveInt(fields, "img_dim", &c.img_dim));
  SCANSERVE_RETURN_IF_ERROR(PositiveInt(fields, "vocab_size", &c.vocab_size));
  SCANSERVE_RETURN_IF_ERROR(fields.Optional("margin", &c.margin));
  // Informational only (the dataset the original run named): anything but a string is ignored.
  if (json.contains("data_name") && json["data_name"].is_string()) {
    c.data_name = json["data_name"].get<std::string>();
  }
  return c;
}

absl::StatusOr<ModelConfig> ModelConfig::FromFile(const std::string& path) {
  SCANSERVE_ASSIGN_OR_RETURN(const std::string text, ReadWholeFile(path));
  auto config = FromJson(text);
  if (!config.ok()) {
    return absl::Status(config.status().code(), absl::StrCat(path, ": ", config.status().message()));
  }
  return config;
}

std::string ModelConfig::ToJson() const {
  Json json = {
      {"format", "scanserve.scan_model"},
      {"format_version", 1},
      {"cross_attn", std::string(ToString(attention.cross_attn))},
      {"agg_func", std::string(ToString(attention.pooling))},
      {"lambda_softmax", attention.lambda_softmax},
      {"lambda_lse", attention.lambda_lse},
      {"raw_feature_norm", std::string(ToString(attention.raw_feature_norm))},
      {"bi_gru", bi_gru},
      {"num_layers", num_layers},
      {"no_imgnorm", no_imgnorm},
      {"no_txtnorm", no_txtnorm},
      {"precomp_enc_type", precomp_enc_type},
      {"embed_size", embed_size},
      {"word_dim", word_dim},
      {"img_dim", img_dim},
      {"vocab_size", vocab_size},
      {"margin", margin},
      {"data_name", data_name},
  };
  return json.dump(2);
}

std::string ModelConfig::Summary() const {
  return absl::StrFormat(
      "%s %s lambda_softmax=%g lambda_lse=%g %s %s %d layer(s) embed %d word_dim %d img_dim %d vocab %d%s%s",
      ToString(attention.cross_attn), ToString(attention.pooling), attention.lambda_softmax,
      attention.lambda_lse, ToString(attention.raw_feature_norm), bi_gru ? "bi_gru" : "gru",
      num_layers, embed_size, word_dim, img_dim, vocab_size, no_imgnorm ? " no_imgnorm" : "",
      no_txtnorm ? " no_txtnorm" : "");
}

}  // namespace scanserve
