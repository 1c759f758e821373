#include "engine/text/vocabulary.h"

#include <fstream>
#include <ostream>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "gtest/gtest.h"

namespace scanserve {
namespace {

using Ids = std::vector<int64_t>;

// gmock is not linked into the module test binaries.
::testing::AssertionResult HasSubstr(const absl::Status& status, const std::string& part) {
  if (std::string(status.message()).find(part) != std::string::npos) {
    return ::testing::AssertionSuccess();
  }
  return ::testing::AssertionFailure()
         << "message \"" << status.message() << "\" lacks \"" << part << "\"";
}

const std::string kSharedTextDir = std::string(SCANSERVE_SHARED_DATA_DIR) + "/scan-text";

bool Exists(const std::string& path) { return std::ifstream(path).good(); }

// The smallest well-formed vocabulary: the four special tokens and "dog".
constexpr char kValidJson[] =
    R"({"word2idx": {"<pad>": 0, "<start>": 1, "<end>": 2, "<unk>": 3, "dog": 4},)"
    R"( "idx2word": {"0": "<pad>", "1": "<start>", "2": "<end>", "3": "<unk>", "4": "dog"},)"
    R"( "idx": 5})";

// kValidJson with the given replacements applied (params are built before gtest runs, so a
// replacement that does not apply poisons the JSON instead of asserting).
std::string ValidJsonWith(std::vector<std::pair<std::string, std::string>> replacements) {
  std::string json = kValidJson;
  for (const auto& [from, to] : replacements) {
    const size_t pos = json.find(from);
    if (pos == std::string::npos) return "test bug: " + from + " is not in kValidJson";
    json.replace(pos, from.size(), to);
  }
  return json;
}

TEST(VocabularyTest, LoadsMinimalJson) {
  absl::StatusOr<Vocabulary> vocabulary = Vocabulary::FromJson(kValidJson);
  ASSERT_TRUE(vocabulary.ok()) << vocabulary.status();
  EXPECT_EQ(vocabulary->size(), 5);
  EXPECT_EQ(vocabulary->IdOf("<pad>"), Vocabulary::kPad);
  EXPECT_EQ(vocabulary->IdOf("<start>"), Vocabulary::kStart);
  EXPECT_EQ(vocabulary->IdOf("<end>"), Vocabulary::kEnd);
  EXPECT_EQ(vocabulary->IdOf("<unk>"), Vocabulary::kUnk);
  EXPECT_EQ(vocabulary->IdOf("dog"), 4);
  EXPECT_EQ(vocabulary->IdOf("cat"), Vocabulary::kUnk);
  EXPECT_EQ(vocabulary->IdOf(""), Vocabulary::kUnk);
  EXPECT_EQ(vocabulary->WordOf(4), "dog");
  EXPECT_EQ(vocabulary->WordOf(0), "<pad>");
  EXPECT_EQ(vocabulary->WordOf(5), "<unk>");
  EXPECT_EQ(vocabulary->WordOf(-1), "<unk>");
}

TEST(VocabularyTest, EncodeAddsStartAndEnd) {
  absl::StatusOr<Vocabulary> vocabulary = Vocabulary::FromJson(kValidJson);
  ASSERT_TRUE(vocabulary.ok()) << vocabulary.status();
  EXPECT_EQ(vocabulary->Encode({}), (Ids{1, 2}));
  EXPECT_EQ(vocabulary->Encode({"dog", "cat", "dog"}), (Ids{1, 4, 3, 4, 2}));
  EXPECT_EQ(vocabulary->EncodeCaption("A DOG."), (Ids{1, 3, 4, 3, 2}));
  EXPECT_EQ(vocabulary->EncodeCaption("   "), (Ids{1, 2}));
}

struct BadJsonCase {
  std::string what;
  std::string json;
  std::string message_part;
};

void PrintTo(const BadJsonCase& c, std::ostream* os) { *os << c.what; }

class VocabularyBadJsonTest : public ::testing::TestWithParam<BadJsonCase> {};

TEST_P(VocabularyBadJsonTest, IsInvalidArgumentNamingTheProblem) {
  const BadJsonCase& c = GetParam();
  absl::StatusOr<Vocabulary> vocabulary = Vocabulary::FromJson(c.json);
  ASSERT_FALSE(vocabulary.ok()) << c.what;
  EXPECT_EQ(vocabulary.status().code(), absl::StatusCode::kInvalidArgument) << c.what;
  EXPECT_TRUE(HasSubstr(vocabulary.status(), c.message_part)) << c.what;
}

INSTANTIATE_TEST_SUITE_P(
    Cases, VocabularyBadJsonTest,
    ::testing::Values(
        BadJsonCase{"not JSON", "{\"word2idx\": ", "not valid JSON"},
        BadJsonCase{"empty", "", "not valid JSON"},
        BadJsonCase{"invalid UTF-8", ValidJsonWith({{"\"dog\": 4", "\"d\xffg\": 4"}}),
                    "not valid JSON"},
        BadJsonCase{"array", "[1, 2]", "must be an object"},
        BadJsonCase{"no word2idx", ValidJsonWith({{"\"word2idx\"", "\"words\""}}),
                    "missing \"word2idx\""},
        BadJsonCase{"no idx2word", ValidJsonWith({{"\"idx2word\"", "\"ids\""}}),
                    "missing \"idx2word\""},
        BadJsonCase{"no idx", ValidJsonWith({{"\"idx\"", "\"count\""}}), "missing \"idx\""},
        BadJsonCase{"word2idx not an object", R"({"word2idx": [], "idx2word": {}, "idx": 0})",
                    "\"word2idx\" must be an object"},
        BadJsonCase{"idx2word not an object", R"({"word2idx": {}, "idx2word": "x", "idx": 0})",
                    "\"idx2word\" must be an object"},
        BadJsonCase{"idx a string", ValidJsonWith({{"\"idx\": 5", "\"idx\": \"5\""}}),
                    "\"idx\" must be an integer"},
        BadJsonCase{"idx a float", ValidJsonWith({{"\"idx\": 5", "\"idx\": 5.0"}}),
                    "\"idx\" must be an integer"},
        BadJsonCase{"idx too large", ValidJsonWith({{"\"idx\": 5", "\"idx\": 6"}}),
                    "\"idx\" is 6 but word2idx has 5 words and idx2word has 5"},
        BadJsonCase{"word2idx has an extra word",
                    ValidJsonWith({{"\"dog\": 4", "\"dog\": 4, \"cat\": 5"}}),
                    "\"idx\" is 5 but word2idx has 6 words"},
        BadJsonCase{"too few words",
                    R"({"word2idx": {"<pad>": 0}, "idx2word": {"0": "<pad>"}, "idx": 1})",
                    "needs at least <pad>, <start>, <end>, <unk>"},
        BadJsonCase{"maps disagree", ValidJsonWith({{"\"4\": \"dog\"", "\"4\": \"cat\""}}),
                    "word2idx and idx2word disagree: word2idx[\"dog\"] is 4 but idx2word[\"4\"] is "
                    "\"cat\""},
        BadJsonCase{"special tokens swapped",
                    ValidJsonWith({{"\"<start>\": 1, \"<end>\": 2", "\"<start>\": 2, \"<end>\": 1"},
                                   {"\"1\": \"<start>\", \"2\": \"<end>\"",
                                    "\"1\": \"<end>\", \"2\": \"<start>\""}}),
                    "special token <start> must have id 1, but id 1 is \"<end>\""},
        BadJsonCase{"no <unk>",
                    ValidJsonWith({{"\"<unk>\": 3", "\"<oov>\": 3"},
                                   {"\"3\": \"<unk>\"", "\"3\": \"<oov>\""}}),
                    "special token <unk> must have id 3"},
        BadJsonCase{"duplicate id in word2idx",
                    ValidJsonWith({{"\"dog\": 4", "\"cat\": 4, \"dog\": 4"},
                                   {"\"4\": \"dog\"", "\"4\": \"dog\", \"5\": \"cat\""},
                                   {"\"idx\": 5", "\"idx\": 6"}}),
                    "word2idx gives id 4 to both \"cat\" and \"dog\""},
        BadJsonCase{"duplicate id in idx2word",
                    ValidJsonWith({{"\"4\": \"dog\"", "\"4\": \"dog\", \"04\": \"cat\""},
                                   {"\"dog\": 4", "\"dog\": 4, \"cat\": 5"},
                                   {"\"idx\": 5", "\"idx\": 6"}}),
                    "idx2word has id 4 twice"},
        BadJsonCase{"duplicate word in idx2word",
                    ValidJsonWith({{"\"4\": \"dog\"", "\"4\": \"dog\", \"5\": \"dog\""},
                                   {"\"dog\": 4", "\"dog\": 4, \"cat\": 5"},
                                   {"\"idx\": 5", "\"idx\": 6"}}),
                    "word2idx and idx2word disagree: word2idx[\"cat\"] is 5"},
        BadJsonCase{"string id in word2idx", ValidJsonWith({{"\"dog\": 4", "\"dog\": \"4\""}}),
                    "word2idx[\"dog\"] is not an integer id: \"4\""},
        BadJsonCase{"float id in word2idx", ValidJsonWith({{"\"dog\": 4", "\"dog\": 4.5"}}),
                    "word2idx[\"dog\"] is not an integer id: 4.5"},
        BadJsonCase{"non-integer key in idx2word",
                    ValidJsonWith({{"\"4\": \"dog\"", "\"four\": \"dog\""}}),
                    "idx2word key \"four\" is not an integer id"},
        BadJsonCase{"id out of range in word2idx", ValidJsonWith({{"\"dog\": 4", "\"dog\": 7"}}),
                    "word2idx has id 7, outside [0, 5)"},
        BadJsonCase{"negative id in idx2word",
                    ValidJsonWith({{"\"4\": \"dog\"", "\"-4\": \"dog\""}}),
                    "idx2word has id -4, outside [0, 5)"},
        BadJsonCase{"idx2word value not a string", ValidJsonWith({{"\"4\": \"dog\"", "\"4\": 4"}}),
                    "idx2word[\"4\"] must be a string"}));

TEST(VocabularyTest, FromFileMissingIsNotFound) {
  absl::StatusOr<Vocabulary> vocabulary = Vocabulary::FromFile("/nonexistent/dir/vocab.json");
  EXPECT_EQ(vocabulary.status().code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(HasSubstr(vocabulary.status(), "/nonexistent/dir/vocab.json"));
}

TEST(VocabularyTest, FromFileNamesTheFileInErrors) {
  const std::string path = ::testing::TempDir() + "/bad_vocab.json";
  std::ofstream(path) << "{\"idx\": 1}";
  absl::StatusOr<Vocabulary> vocabulary = Vocabulary::FromFile(path);
  EXPECT_EQ(vocabulary.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(HasSubstr(vocabulary.status(), path));
  EXPECT_TRUE(HasSubstr(vocabulary.status(), "missing \"word2idx\""));
}

TEST(VocabularyTest, LoadsRealFlickr30kVocabulary) {
  const std::string path = kSharedTextDir + "/f30k_precomp_vocab.json";
  if (!Exists(path)) GTEST_SKIP() << "shared data absent: " << path;
  absl::StatusOr<Vocabulary> vocabulary = Vocabulary::FromFile(path);
  ASSERT_TRUE(vocabulary.ok()) << vocabulary.status();
  EXPECT_EQ(vocabulary->size(), 8481);
  EXPECT_EQ(vocabulary->WordOf(0), "<pad>");
  EXPECT_EQ(vocabulary->WordOf(1), "<start>");
  EXPECT_EQ(vocabulary->WordOf(2), "<end>");
  EXPECT_EQ(vocabulary->WordOf(3), "<unk>");
  EXPECT_EQ(vocabulary->WordOf(4), "raining");
  EXPECT_EQ(vocabulary->IdOf("a"), 3256);
  EXPECT_EQ(vocabulary->WordOf(3256), "a");
  EXPECT_EQ(vocabulary->IdOf("white-walled"), 6);
  EXPECT_EQ(vocabulary->IdOf("qwertyuiop"), Vocabulary::kUnk);
  // "A man's dog." -> <start> a man 's dog . <end>
  EXPECT_EQ(vocabulary->EncodeCaption("A man's dog."), (Ids{1, 3256, 4845, 515, 4430, 348, 2}));
}

TEST(VocabularyTest, LoadsRealCocoVocabulary) {
  const std::string path = kSharedTextDir + "/coco_precomp_vocab.json";
  if (!Exists(path)) GTEST_SKIP() << "shared data absent: " << path;
  absl::StatusOr<Vocabulary> vocabulary = Vocabulary::FromFile(path);
  ASSERT_TRUE(vocabulary.ok()) << vocabulary.status();
  EXPECT_EQ(vocabulary->size(), 11353);
  EXPECT_EQ(vocabulary->WordOf(4), "wrought-iron");
}

TEST(VocabularyTest, RealVocabularyRoundTripsThroughToJson) {
  const std::string path = kSharedTextDir + "/f30k_precomp_vocab.json";
  if (!Exists(path)) GTEST_SKIP() << "shared data absent: " << path;
  absl::StatusOr<Vocabulary> original = Vocabulary::FromFile(path);
  ASSERT_TRUE(original.ok()) << original.status();
  absl::StatusOr<Vocabulary> reloaded = Vocabulary::FromJson(original->ToJson());
  ASSERT_TRUE(reloaded.ok()) << reloaded.status();
  ASSERT_EQ(reloaded->size(), original->size());
  for (int64_t id = 0; id < original->size(); ++id) {
    ASSERT_EQ(reloaded->WordOf(id), original->WordOf(id)) << id;
    ASSERT_EQ(reloaded->IdOf(original->WordOf(id)), id);
  }
}

TEST(VocabularyTest, FromCountsKeepsFrequentWordsInFirstSeenOrder) {
  const std::vector<std::vector<std::string>> captions = {
      {"a", "dog", "runs", "."},
      {"a", "cat", "sits", "."},
      {"<unk>", "a", "dog", "and", "a", "cat", "<unk>"},
  };
  const Vocabulary vocabulary = Vocabulary::FromCounts(captions, /*min_count=*/2);
  // a:4 dog:2 runs:1 .:2 cat:2 sits:1 <unk>:2 and:1; <unk> keeps its special id.
  ASSERT_EQ(vocabulary.size(), 8);
  const std::vector<std::string> expected = {"<pad>", "<start>", "<end>", "<unk>",
                                             "a",     "dog",     ".",     "cat"};
  for (int64_t id = 0; id < vocabulary.size(); ++id) EXPECT_EQ(vocabulary.WordOf(id), expected[id]);
  EXPECT_EQ(vocabulary.IdOf("runs"), Vocabulary::kUnk);

  EXPECT_EQ(Vocabulary::FromCounts(captions, 1).size(), 11);
  EXPECT_EQ(Vocabulary::FromCounts({}, 1).size(), 4);
}

TEST(VocabularyTest, ToJsonWritesPythonsLayout) {
  const Vocabulary vocabulary =
      Vocabulary::FromCounts({{"caf\xc3\xa9", "say \"hi\"", "\xf0\x9f\x98\x80"}}, 1);
  // json.dumps of SCAN's dict, key order as in the shipped files.
  EXPECT_EQ(vocabulary.ToJson(),
            R"({"idx2word": {"0": "<pad>", "1": "<start>", "2": "<end>", "3": "<unk>", )"
            R"("4": "caf\u00e9", "5": "say \"hi\"", "6": "\ud83d\ude00"}, )"
            R"("word2idx": {"<pad>": 0, "<start>": 1, "<end>": 2, "<unk>": 3, )"
            R"("caf\u00e9": 4, "say \"hi\"": 5, "\ud83d\ude00": 6}, "idx": 7})");
  absl::StatusOr<Vocabulary> reloaded = Vocabulary::FromJson(vocabulary.ToJson());
  ASSERT_TRUE(reloaded.ok()) << reloaded.status();
  EXPECT_EQ(reloaded->IdOf("caf\xc3\xa9"), 4);
  EXPECT_EQ(reloaded->IdOf("\xf0\x9f\x98\x80"), 6);
}

}  // namespace
}  // namespace scanserve
