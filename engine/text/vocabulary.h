// Vocabulary: SCAN's word <-> id table (the original vocab.py), loaded from the JSON files the
// released models ship with. Ids are dense, 0..size()-1, and the first four are the special tokens.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"

namespace scanserve {

class Vocabulary {
 public:
  static constexpr int64_t kPad = 0, kStart = 1, kEnd = 2, kUnk = 3;

  // SCAN's vocab JSON: {"word2idx": {...}, "idx2word": {"0": "<pad>", ...}, "idx": V}. Both maps
  // must describe the same bijection between V words and the ids 0..V-1, with <pad>, <start>,
  // <end>, <unk> at 0..3; anything else is INVALID_ARGUMENT naming the problem.
  static absl::StatusOr<Vocabulary> FromJson(const std::string& json_text);
  // As FromJson; NOT_FOUND when the file does not exist.
  static absl::StatusOr<Vocabulary> FromFile(const std::string& path);

  // Builds one from tokenised captions, as SCAN's vocab.py build_vocab: the special tokens, then
  // every word seen at least `min_count` times, in order of first appearance (the order vocab.py
  // gives under Python 3.7+; the shipped files were built under Python 2, whose dict order is
  // arbitrary, so their ids cannot be reproduced).
  static Vocabulary FromCounts(const std::vector<std::vector<std::string>>& tokenised,
                               int min_count);

  // Same layout as the shipped files (what Python's json.dump writes): idx2word, word2idx, idx,
  // both maps in id order, non-ASCII as \u escapes.
  std::string ToJson() const;

  int64_t size() const { return static_cast<int64_t>(words_.size()); }
  // kUnk when the word is unknown.
  int64_t IdOf(std::string_view word) const;
  // "<unk>" when the id is out of range.
  const std::string& WordOf(int64_t id) const;

  // <start> ids(tokens) <end>
  std::vector<int64_t> Encode(const std::vector<std::string>& tokens) const;
  // TokenizeCaption + Encode
  std::vector<int64_t> EncodeCaption(std::string_view caption) const;

 private:
  // `words` is indexed by id, already validated (unique, specials first).
  explicit Vocabulary(std::vector<std::string> words);

  std::vector<std::string> words_;
  absl::flat_hash_map<std::string, int64_t> ids_;
};

}  // namespace scanserve
