// config.json: what ToJson writes reads back, and every bad field is INVALID_ARGUMENT naming it.
#include "engine/model/model_config.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "nlohmann/json.hpp"

namespace scanserve {
namespace {

using Json = nlohmann::json;

ModelConfig Sample() {
  ModelConfig c;
  c.attention.cross_attn = CrossAttention::kImageToText;
  c.attention.pooling = Pooling::kMean;
  c.attention.lambda_softmax = 4.0f;
  c.bi_gru = false;
  c.num_layers = 2;
  c.no_txtnorm = true;
  c.embed_size = 64;
  c.word_dim = 32;
  c.img_dim = 48;
  c.vocab_size = 100;
  c.margin = 0.1f;
  c.data_name = "f30k_precomp";
  return c;
}

TEST(ModelConfigTest, RoundTripsThroughItsJson) {
  const ModelConfig c = Sample();
  absl::StatusOr<ModelConfig> read = ModelConfig::FromJson(c.ToJson());
  ASSERT_TRUE(read.ok()) << read.status();
  EXPECT_EQ(read->ToJson(), c.ToJson());
  EXPECT_EQ(read->num_layers, 2);
  EXPECT_FALSE(read->bi_gru);
  EXPECT_EQ(read->attention.pooling, Pooling::kMean);
}

TEST(ModelConfigTest, OptionalFieldsMayBeAbsent) {
  Json json = Json::parse(Sample().ToJson());
  for (const char* optional : {"format", "format_version", "no_imgnorm", "no_txtnorm", "precomp_enc_type",
                               "margin", "data_name"}) {
    json.erase(optional);
  }
  absl::StatusOr<ModelConfig> read = ModelConfig::FromJson(json.dump());
  ASSERT_TRUE(read.ok()) << read.status();
  EXPECT_FALSE(read->no_txtnorm);
  EXPECT_EQ(read->margin, ModelConfig().margin);
}

TEST(ModelConfigTest, BadFieldsAreInvalidArgumentNamingThem) {
  struct Case {
    const char* field;
    Json value;  // null: remove the field
  };
  const std::vector<Case> cases = {
      {"cross_attn", nullptr},       {"cross_attn", 1},           {"agg_func", "Median"},
      {"lambda_softmax", "nine"},    {"lambda_softmax", 0},       {"bi_gru", "yes"},
      {"num_layers", 0},             {"num_layers", 1.5},         {"embed_size", -4},
      {"vocab_size", nullptr},       {"no_imgnorm", 1},           {"margin", "wide"},
      {"format", "other"},           {"format_version", 2},       {"precomp_enc_type", 3},
      // 2^32 + 1: an int would wrap it to 1.
      {"num_layers", 4294967297LL},  {"lambda_softmax", 1e300},
  };
  for (const Case& c : cases) {
    Json json = Json::parse(Sample().ToJson());
    if (c.value.is_null()) {
      json.erase(c.field);
    } else {
      json[c.field] = c.value;
    }
    absl::StatusOr<ModelConfig> read = ModelConfig::FromJson(json.dump());
    ASSERT_FALSE(read.ok()) << c.field << " = " << c.value.dump();
    EXPECT_EQ(read.status().code(), absl::StatusCode::kInvalidArgument) << read.status();
    EXPECT_NE(read.status().message().find(c.field), std::string::npos) << read.status();
  }
}

}  // namespace
}  // namespace scanserve
