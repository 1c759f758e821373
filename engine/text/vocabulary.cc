#include "engine/text/vocabulary.h"

#include <cstdint>
#include <limits>
#include <optional>
#include <string>
#include <system_error>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "engine/common/file_read.h"
#include "engine/common/json_fields.h"
#include "engine/common/status_macros.h"
#include "engine/text/tokenizer.h"
#include "nlohmann/json.hpp"

namespace scanserve {
namespace {

using Json = nlohmann::json;

constexpr const char* kSpecialTokens[] = {"<pad>", "<start>", "<end>", "<unk>"};
constexpr int64_t kNumSpecialTokens = 4;

absl::string_view AsAbsl(std::string_view s) { return absl::string_view(s.data(), s.size()); }

// Quoted and escaped, for error messages.
std::string Quoted(const std::string& s) {
  return Json(s).dump(-1, ' ', /*ensure_ascii=*/false, Json::error_handler_t::replace);
}

// A JSON integer that fits int64_t; floats (even 5.0), strings and booleans are not ids.
std::optional<int64_t> AsInteger(const Json& value) {
  if (value.is_number_unsigned()) {
    const auto v = value.get<uint64_t>();
    if (v > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) return std::nullopt;
    return static_cast<int64_t>(v);
  }
  if (value.is_number_integer()) return value.get<int64_t>();
  return std::nullopt;
}

// idx2word's keys are ids written as decimal strings ("12"); json.dump wrote them from ints.
std::optional<int64_t> ParseIdKey(const std::string& key) {
  size_t pos = 0;
  const bool negative = !key.empty() && key[0] == '-';
  if (negative) pos = 1;
  if (pos == key.size() || key.size() - pos > 18) return std::nullopt;
  int64_t value = 0;
  for (; pos < key.size(); ++pos) {
    if (key[pos] < '0' || key[pos] > '9') return std::nullopt;
    value = value * 10 + (key[pos] - '0');
  }
  return negative ? -value : value;
}

absl::Status OutOfRange(const char* map_name, int64_t id, int64_t size) {
  return absl::InvalidArgumentError(absl::StrCat("vocabulary JSON: ", map_name, " has id ", id,
                                                 ", outside [0, ", size, ") given by \"idx\""));
}

// Checks the parsed document and returns the words indexed by id.
absl::StatusOr<std::vector<std::string>> WordsFromJson(const Json& root) {
  if (!root.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "vocabulary JSON must be an object with \"word2idx\", \"idx2word\" and \"idx\", not ",
        root.type_name()));
  }
  for (const char* field : {"word2idx", "idx2word", "idx"}) {
    if (!root.contains(field)) {
      return absl::InvalidArgumentError(absl::StrCat("vocabulary JSON is missing \"", field, "\""));
    }
  }
  const Json& word2idx = root.at("word2idx");
  const Json& idx2word = root.at("idx2word");
  if (!word2idx.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "vocabulary JSON: \"word2idx\" must be an object, not ", word2idx.type_name()));
  }
  if (!idx2word.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "vocabulary JSON: \"idx2word\" must be an object, not ", idx2word.type_name()));
  }
  const std::optional<int64_t> size = AsInteger(root.at("idx"));
  if (!size.has_value()) {
    return absl::InvalidArgumentError(
        absl::StrCat("vocabulary JSON: \"idx\" must be an integer (the number of words), not ",
                     root.at("idx").dump()));
  }
  if (*size != static_cast<int64_t>(word2idx.size()) ||
      *size != static_cast<int64_t>(idx2word.size())) {
    return absl::InvalidArgumentError(absl::StrCat("vocabulary JSON: \"idx\" is ", *size,
                                                   " but word2idx has ", word2idx.size(),
                                                   " words and idx2word has ", idx2word.size()));
  }
  if (*size < kNumSpecialTokens) {
    return absl::InvalidArgumentError(absl::StrCat(
        "vocabulary JSON has ", *size, " words; it needs at least <pad>, <start>, <end>, <unk>"));
  }

  // Every id in [0, size) appears exactly once in idx2word (size keys, no duplicates, in range).
  std::vector<std::string> words(static_cast<size_t>(*size));
  std::vector<bool> seen(words.size(), false);
  for (const auto& entry : idx2word.items()) {
    const std::optional<int64_t> id = ParseIdKey(entry.key());
    if (!id.has_value()) {
      return absl::InvalidArgumentError(absl::StrCat("vocabulary JSON: idx2word key ",
                                                     Quoted(entry.key()), " is not an integer id"));
    }
    if (*id < 0 || *id >= *size) return OutOfRange("idx2word", *id, *size);
    if (seen[*id]) {
      return absl::InvalidArgumentError(absl::StrCat("vocabulary JSON: idx2word has id ", *id,
                                                     " twice (key ", Quoted(entry.key()), ")"));
    }
    if (!entry.value().is_string()) {
      return absl::InvalidArgumentError(
          absl::StrCat("vocabulary JSON: idx2word[", Quoted(entry.key()),
                       "] must be a string, not ", entry.value().dump()));
    }
    seen[*id] = true;
    words[*id] = entry.value().get<std::string>();
  }

  // word2idx's ids must be valid and distinct (checked over all of them first, so that the message
  // names the real problem) and map each word back to its idx2word id.
  std::vector<const std::string*> word_of_id(words.size(), nullptr);
  for (const auto& entry : word2idx.items()) {
    const std::optional<int64_t> id = AsInteger(entry.value());
    if (!id.has_value()) {
      return absl::InvalidArgumentError(
          absl::StrCat("vocabulary JSON: word2idx[", Quoted(entry.key()),
                       "] is not an integer id: ", entry.value().dump()));
    }
    if (*id < 0 || *id >= *size) return OutOfRange("word2idx", *id, *size);
    if (word_of_id[*id] != nullptr) {
      return absl::InvalidArgumentError(absl::StrCat("vocabulary JSON: word2idx gives id ", *id,
                                                     " to both ", Quoted(*word_of_id[*id]), " and ",
                                                     Quoted(entry.key())));
    }
    word_of_id[*id] = &entry.key();
  }
  // `size` distinct ids in [0, size): every slot is filled.
  for (size_t id = 0; id < words.size(); ++id) {
    if (*word_of_id[id] != words[id]) {
      return absl::InvalidArgumentError(absl::StrCat(
          "vocabulary JSON: word2idx and idx2word disagree: word2idx[", Quoted(*word_of_id[id]),
          "] is ", id, " but idx2word[\"", id, "\"] is ", Quoted(words[id])));
    }
  }

  for (int64_t id = 0; id < kNumSpecialTokens; ++id) {
    if (words[id] != kSpecialTokens[id]) {
      return absl::InvalidArgumentError(absl::StrCat("vocabulary JSON: special token ",
                                                     kSpecialTokens[id], " must have id ", id,
                                                     ", but id ", id, " is ", Quoted(words[id])));
    }
  }
  return words;
}

// Python's json.dumps(ensure_ascii=True) for one string: nlohmann escapes the same way (lower-case
// \u hex, surrogate pairs, short escapes), except that Python also escapes DEL. Invalid UTF-8
// cannot come from Python; it is written as U+FFFD.
std::string PythonJsonString(const std::string& s) {
  const std::string dumped =
      Json(s).dump(-1, ' ', /*ensure_ascii=*/true, Json::error_handler_t::replace);
  std::string out;
  out.reserve(dumped.size());
  for (char c : dumped) {
    if (c == '\x7f') {
      out += "\\u007f";
    } else {
      out.push_back(c);
    }
  }
  return out;
}

}  // namespace

Vocabulary::Vocabulary(std::vector<std::string> words) : words_(std::move(words)) {
  ids_.reserve(words_.size());
  for (size_t id = 0; id < words_.size(); ++id) {
    const bool inserted = ids_.emplace(words_[id], static_cast<int64_t>(id)).second;
    SCANSERVE_CHECK(inserted);
  }
  SCANSERVE_CHECK(words_.size() >= static_cast<size_t>(kNumSpecialTokens));
}

absl::StatusOr<Vocabulary> Vocabulary::FromJson(const std::string& json_text) {
  SCANSERVE_ASSIGN_OR_RETURN(const Json root,
                             ParseJson(json_text, "vocabulary", absl::StatusCode::kInvalidArgument));
  SCANSERVE_ASSIGN_OR_RETURN(std::vector<std::string> words, WordsFromJson(root));
  return Vocabulary(std::move(words));
}

absl::StatusOr<Vocabulary> Vocabulary::FromFile(const std::string& path) {
  SCANSERVE_ASSIGN_OR_RETURN(const std::string contents, ReadWholeFile(path, "vocabulary file"));
  absl::StatusOr<Vocabulary> vocabulary = FromJson(contents);
  if (!vocabulary.ok()) {
    return absl::Status(vocabulary.status().code(),
                        absl::StrCat(path, ": ", vocabulary.status().message()));
  }
  return vocabulary;
}

Vocabulary Vocabulary::FromCounts(const std::vector<std::vector<std::string>>& tokenised,
                                  int min_count) {
  absl::flat_hash_map<std::string, int64_t> counts;
  std::vector<const std::string*> first_seen_order;
  for (const std::vector<std::string>& tokens : tokenised) {
    for (const std::string& token : tokens) {
      auto [it, inserted] = counts.try_emplace(token, 0);
      if (inserted) first_seen_order.push_back(&token);
      ++it->second;
    }
  }
  std::vector<std::string> words(std::begin(kSpecialTokens), std::end(kSpecialTokens));
  absl::flat_hash_map<std::string, int64_t> taken;
  for (const std::string& special : words) taken.emplace(special, 0);
  for (const std::string* word : first_seen_order) {
    // A token spelled like a special one keeps the special id, as vocab.py's add_word does.
    if (counts.at(*word) >= min_count && taken.emplace(*word, 0).second) words.push_back(*word);
  }
  return Vocabulary(std::move(words));
}

std::string Vocabulary::ToJson() const {
  std::string json = "{\"idx2word\": {";
  for (size_t id = 0; id < words_.size(); ++id) {
    absl::StrAppend(&json, id == 0 ? "" : ", ", "\"", id, "\": ", PythonJsonString(words_[id]));
  }
  json += "}, \"word2idx\": {";
  for (size_t id = 0; id < words_.size(); ++id) {
    absl::StrAppend(&json, id == 0 ? "" : ", ", PythonJsonString(words_[id]), ": ", id);
  }
  absl::StrAppend(&json, "}, \"idx\": ", words_.size(), "}");
  return json;
}

int64_t Vocabulary::IdOf(std::string_view word) const {
  const auto it = ids_.find(AsAbsl(word));
  return it == ids_.end() ? kUnk : it->second;
}

const std::string& Vocabulary::WordOf(int64_t id) const {
  static const std::string* const kUnknownWord = new std::string("<unk>");
  if (id < 0 || id >= size()) return *kUnknownWord;
  return words_[static_cast<size_t>(id)];
}

std::vector<int64_t> Vocabulary::Encode(const std::vector<std::string>& tokens) const {
  std::vector<int64_t> ids;
  ids.reserve(tokens.size() + 2);
  ids.push_back(kStart);
  for (const std::string& token : tokens) ids.push_back(IdOf(token));
  ids.push_back(kEnd);
  return ids;
}

std::vector<int64_t> Vocabulary::EncodeCaption(std::string_view caption) const {
  return Encode(TokenizeCaption(caption));
}

}  // namespace scanserve
