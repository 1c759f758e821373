#include "engine/model/model_config.h"

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "engine/common/file_read.h"
#include "engine/common/status_macros.h"
#include "nlohmann/json.hpp"

namespace scanserve {
namespace {

using Json = nlohmann::json;

absl::Status FieldError(const std::string& field, const std::string& what) {
  return absl::InvalidArgumentError(absl::StrCat("config.json: field '", field, "' ", what));
}

absl::StatusOr<const Json*> Field(const Json& json, const std::string& name) {
  auto it = json.find(name);
  if (it == json.end()) return FieldError(name, "is missing");
  return &*it;
}

absl::StatusOr<std::string> StringField(const Json& json, const std::string& name) {
  SCANSERVE_ASSIGN_OR_RETURN(const Json* v, Field(json, name));
  if (!v->is_string()) return FieldError(name, "must be a string");
  return v->get<std::string>();
}

absl::StatusOr<double> NumberField(const Json& json, const std::string& name) {
  SCANSERVE_ASSIGN_OR_RETURN(const Json* v, Field(json, name));
  if (!v->is_number()) return FieldError(name, "must be a number");
  return v->get<double>();
}

absl::StatusOr<int64_t> PositiveIntField(const Json& json, const std::string& name) {
  SCANSERVE_ASSIGN_OR_RETURN(const Json* v, Field(json, name));
  if (!v->is_number_integer() || v->get<int64_t>() <= 0) return FieldError(name, "must be a positive integer");
  return v->get<int64_t>();
}

absl::StatusOr<bool> BoolField(const Json& json, const std::string& name, bool fallback) {
  auto it = json.find(name);
  if (it == json.end()) return fallback;
  if (!it->is_boolean()) return FieldError(name, "must be true or false");
  return it->get<bool>();
}

}  // namespace

absl::StatusOr<ModelConfig> ModelConfig::FromJson(const std::string& json_text) {
  Json json = Json::parse(json_text, nullptr, /*allow_exceptions=*/false);
  if (json.is_discarded() || !json.is_object()) {
    return absl::InvalidArgumentError("config.json: not a JSON object");
  }
  if (auto it = json.find("format"); it != json.end() && *it != "scanserve.scan_model") {
    return FieldError("format", "is not \"scanserve.scan_model\"");
  }
  if (auto it = json.find("format_version"); it != json.end() && *it != 1) {
    return FieldError("format_version", absl::StrCat("is ", it->dump(), "; this build reads version 1"));
  }
  ModelConfig c;
  SCANSERVE_ASSIGN_OR_RETURN(std::string cross_attn, StringField(json, "cross_attn"));
  SCANSERVE_ASSIGN_OR_RETURN(c.attention.cross_attn, ParseCrossAttention(cross_attn));
  SCANSERVE_ASSIGN_OR_RETURN(std::string agg_func, StringField(json, "agg_func"));
  SCANSERVE_ASSIGN_OR_RETURN(c.attention.pooling, ParsePooling(agg_func));
  SCANSERVE_ASSIGN_OR_RETURN(std::string norm, StringField(json, "raw_feature_norm"));
  SCANSERVE_ASSIGN_OR_RETURN(c.attention.raw_feature_norm, ParseRawFeatureNorm(norm));
  SCANSERVE_ASSIGN_OR_RETURN(double lambda_softmax, NumberField(json, "lambda_softmax"));
  SCANSERVE_ASSIGN_OR_RETURN(double lambda_lse, NumberField(json, "lambda_lse"));
  if (!(lambda_softmax > 0)) return FieldError("lambda_softmax", "must be > 0");
  if (c.attention.pooling == Pooling::kLogSumExp && !(lambda_lse > 0)) {
    return FieldError("lambda_lse", "must be > 0 for LogSumExp pooling");
  }
  c.attention.lambda_softmax = static_cast<float>(lambda_softmax);
  c.attention.lambda_lse = static_cast<float>(lambda_lse);

  SCANSERVE_ASSIGN_OR_RETURN(const Json* bi_gru, Field(json, "bi_gru"));
  if (!bi_gru->is_boolean()) return FieldError("bi_gru", "must be true or false");
  c.bi_gru = bi_gru->get<bool>();
  SCANSERVE_ASSIGN_OR_RETURN(int64_t num_layers, PositiveIntField(json, "num_layers"));
  c.num_layers = static_cast<int>(num_layers);
  SCANSERVE_ASSIGN_OR_RETURN(c.no_imgnorm, BoolField(json, "no_imgnorm", false));
  SCANSERVE_ASSIGN_OR_RETURN(c.no_txtnorm, BoolField(json, "no_txtnorm", false));
  if (json.contains("precomp_enc_type")) {
    SCANSERVE_ASSIGN_OR_RETURN(c.precomp_enc_type, StringField(json, "precomp_enc_type"));
  }
  SCANSERVE_ASSIGN_OR_RETURN(c.embed_size, PositiveIntField(json, "embed_size"));
  SCANSERVE_ASSIGN_OR_RETURN(c.word_dim, PositiveIntField(json, "word_dim"));
  SCANSERVE_ASSIGN_OR_RETURN(c.img_dim, PositiveIntField(json, "img_dim"));
  SCANSERVE_ASSIGN_OR_RETURN(c.vocab_size, PositiveIntField(json, "vocab_size"));
  if (json.contains("margin")) {
    SCANSERVE_ASSIGN_OR_RETURN(double margin, NumberField(json, "margin"));
    c.margin = static_cast<float>(margin);
  }
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
