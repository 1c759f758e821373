// A SCAN model's hyper-parameters: config.json of the model directory (docs/model-format.md).
#pragma once

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "engine/scoring/attention_params.h"

namespace scanserve {

struct ModelConfig {
  AttentionParams attention;
  bool bi_gru = true;
  int num_layers = 1;
  bool no_imgnorm = false;
  bool no_txtnorm = false;
  std::string precomp_enc_type = "basic";
  int64_t embed_size = 1024;
  int64_t word_dim = 300;
  int64_t img_dim = 2048;
  int64_t vocab_size = 0;
  float margin = 0.2f;
  std::string data_name;

  // Parses config.json text; every error names the field.
  static absl::StatusOr<ModelConfig> FromJson(const std::string& json_text);
  static absl::StatusOr<ModelConfig> FromFile(const std::string& path);
  std::string ToJson() const;
  // One line for logs: "t2i LogSumExp λ1=9 λ2=6 clipped_l2norm bi_gru 1 layer(s) embed 1024 vocab 8481".
  std::string Summary() const;
};

}  // namespace scanserve
