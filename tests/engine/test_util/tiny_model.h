// Tiny SCAN model directories with random weights, for tests that need a real ScanModel without
// a real checkpoint. Header-only so that any test module can include it without a library.
#pragma once

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "engine/common/safetensors.h"
#include "engine/model/model_config.h"
#include "engine/text/vocabulary.h"

namespace scanserve {
namespace test_util {

struct TinyModelOptions {
  bool bi_gru = true;
  int num_layers = 1;
  int64_t embed = 8, word_dim = 6, img_dim = 10;
  bool no_imgnorm = false;
  uint32_t seed = 7;          // of the random weights: two seeds give two different models
  AttentionParams attention;  // t2i LogSumExp λ1 = 9, λ2 = 6 unless set
  // The vocabulary after the four special tokens, in id order (4, 5, ...).
  std::vector<std::string> words = {"a", "dog", "runs", "on", "the", "grass", "."};
};

inline std::vector<float> RandomValues(int64_t n, std::mt19937& rng) {
  std::uniform_real_distribution<float> dist(-0.5f, 0.5f);
  std::vector<float> v(static_cast<size_t>(n));
  for (float& x : v) x = dist(rng);
  return v;
}

// Writes a complete model directory (config.json, vocab.json, weights.safetensors) with random
// weights; returns its vocabulary words. Returns an empty list when a file cannot be written.
inline std::vector<std::string> WriteTinyModel(const std::filesystem::path& dir,
                                               const TinyModelOptions& o) {
  std::filesystem::create_directories(dir);
  std::vector<std::vector<std::string>> captions(4, o.words);  // each word counted 4 times
  Vocabulary vocab = Vocabulary::FromCounts(captions, 4);
  std::ofstream(dir / "vocab.json") << vocab.ToJson();

  ModelConfig config;
  config.bi_gru = o.bi_gru;
  config.num_layers = o.num_layers;
  config.embed_size = o.embed;
  config.word_dim = o.word_dim;
  config.img_dim = o.img_dim;
  config.vocab_size = vocab.size();
  config.no_imgnorm = o.no_imgnorm;
  config.attention = o.attention;
  std::ofstream(dir / "config.json") << config.ToJson();

  std::mt19937 rng(o.seed);
  std::map<std::string, Float32Tensor> t;
  auto add = [&](const std::string& name, std::vector<int64_t> shape) {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    t[name] = Float32Tensor{shape, RandomValues(n, rng)};
  };
  add("img_enc.fc.weight", {o.embed, o.img_dim});
  add("img_enc.fc.bias", {o.embed});
  add("txt_enc.embed.weight", {vocab.size(), o.word_dim});
  const int64_t directions = o.bi_gru ? 2 : 1;
  for (int layer = 0; layer < o.num_layers; ++layer) {
    for (int64_t d = 0; d < directions; ++d) {
      const std::string s = "_l" + std::to_string(layer) + (d == 1 ? "_reverse" : "");
      add("txt_enc.rnn.weight_ih" + s,
          {3 * o.embed, layer == 0 ? o.word_dim : o.embed * directions});
      add("txt_enc.rnn.weight_hh" + s, {3 * o.embed, o.embed});
      add("txt_enc.rnn.bias_ih" + s, {3 * o.embed});
      add("txt_enc.rnn.bias_hh" + s, {3 * o.embed});
    }
  }
  if (!WriteSafetensors((dir / "weights.safetensors").string(), t).ok()) return {};
  return o.words;
}

}  // namespace test_util
}  // namespace scanserve
