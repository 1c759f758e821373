#include "engine/text/tokenizer.h"

#include <chrono>
#include <fstream>
#include <ostream>
#include <string>
#include <vector>

#include "gtest/gtest.h"

namespace scanserve {
namespace {

using Tokens = std::vector<std::string>;

struct TokenizeCase {
  std::string caption;
  Tokens expected;  // NLTKWordTokenizer().tokenize(caption.lower()) under NLTK 3.8
};

void PrintTo(const TokenizeCase& c, std::ostream* os) { *os << '"' << c.caption << '"'; }

class TokenizeCaptionTest : public ::testing::TestWithParam<TokenizeCase> {};

TEST_P(TokenizeCaptionTest, MatchesNltk) {
  const TokenizeCase& c = GetParam();
  EXPECT_EQ(TokenizeCaption(c.caption), c.expected) << "caption: \"" << c.caption << "\"";
}

const TokenizeCase kCases[] = {
    // Clitics and contractions.
    {"A man's hat.", {"a", "man", "'s", "hat", "."}},
    {"They don't know.", {"they", "do", "n't", "know", "."}},
    {"I can't go", {"i", "ca", "n't", "go"}},
    {"I cannot go", {"i", "can", "not", "go"}},
    {"CANNOT", {"can", "not"}},
    {"We'll see; they're here, you've won, I'm sure, he'd go",
     {"we", "'ll", "see", ";", "they", "'re", "here", ",", "you", "'ve", "won", ",", "i", "'m",
      "sure", ",", "he", "'d", "go"}},
    {"gonna gimme gotta lemme wanna go",
     {"gon", "na", "gim", "me", "got", "ta", "lem", "me", "wan", "na", "go"}},
    {"wanna", {"wan", "na"}},  // the space padded on at the end satisfies "wan na"'s (?=\s)
    {"wannabe", {"wannabe"}},
    {"d'ye know more'n me", {"d", "'ye", "know", "more", "'n", "me"}},
    {"'Tis the season, 'twas fun", {"'t", "is", "the", "season", ",", "'t", "was", "fun"}},
    {"isn't it", {"is", "n't", "it"}},
    {"it's Joe's", {"it", "'s", "joe", "'s"}},
    {"the dogs' bones", {"the", "dogs", "'", "bones"}},
    {"Dogs' toys.", {"dogs", "'", "toys", "."}},
    {"rock 'n' roll", {"rock", "'n", "'", "roll"}},
    {"o'clock y'all ma'am 'em", {"o'clock", "y'all", "ma'am", "'em"}},
    {"a'b", {"a", "'", "b"}},
    {"8'x10'", {"8'x10", "'"}},
    {"a 6' tall man", {"a", "6", "'", "tall", "man"}},
    {"'s", {"'s"}},
    {"'", {"'"}},
    // Hyphens and dashes.
    {"A well-dressed man in a black-and-white shirt.",
     {"a", "well-dressed", "man", "in", "a", "black-and-white", "shirt", "."}},
    {"a -- b---c", {"a", "--", "b", "--", "-c"}},
    {"x\xe2\x80\x94y", {"x\xe2\x80\x94y"}},  // an em dash is not split
    // Numbers, symbols.
    {"It costs $5.", {"it", "costs", "$", "5", "."}},
    {"He is 3.5 feet tall, weighs 1,000 pounds.",
     {"he", "is", "3.5", "feet", "tall", ",", "weighs", "1,000", "pounds", "."}},
    {"It's 10:30 now: go", {"it", "'s", "10:30", "now", ":", "go"}},
    {"1,5 or 1, 5", {"1,5", "or", "1", ",", "5"}},
    {"3:45, 3 :45", {"3:45", ",", "3", ":45"}},
    {"@home #tag 50% A&B", {"@", "home", "#", "tag", "50", "%", "a", "&", "b"}},
    {"5*3=15", {"5", "*", "3=15"}},
    // Periods: only the last one of the text splits off; ellipses stay whole.
    {"Mr. Smith went to Washington D.C.", {"mr.", "smith", "went", "to", "washington", "d.c", "."}},
    {"U.S.A. flag", {"u.s.a.", "flag"}},
    {"a.b.c.", {"a.b.c", "."}},
    {"The end .", {"the", "end", "."}},
    {"The end.)", {"the", "end", ".", ")"}},
    {"(yes.)", {"(", "yes", ".", ")"}},
    {"end. \")  ", {"end.", "``", ")"}},
    {"Wait... what?!", {"wait", "...", "what", "?", "!"}},
    {"Wait..", {"wait", ".."}},
    {"Hi . . .", {"hi", ".", ".", "."}},
    {"...", {"..."}},
    {".", {"."}},
    // Other punctuation.
    {"Hello!!! Really??", {"hello", "!", "!", "!", "really", "?", "?"}},
    {"a,b, c ,d", {"a", ",", "b", ",", "c", ",", "d"}},
    {"end with comma,", {"end", "with", "comma", ","}},
    {"smile :)", {"smile", ":", ")"}},
    {"(a) [b] {c} <d>", {"(", "a", ")", "[", "b", "]", "{", "c", "}", "<", "d", ">"}},
    // Quotes.
    {"\"Hello,\" she said.", {"``", "hello", ",", "''", "she", "said", "."}},
    {"He said 'hi' to me.", {"he", "said", "'hi", "'", "to", "me", "."}},
    {"''Quoted''", {"''", "quoted", "''"}},
    {"``Quoted''", {"``", "quoted", "''"}},
    {"\"", {"``"}},
    {"\xe2\x80\x9c"
     "Curly"
     "\xe2\x80\x9d \xe2\x80\x98quotes\xe2\x80\x99 \xc2\xab"
     "guillemets"
     "\xc2\xbb",
     {"\xe2\x80\x9c", "curly", "\xe2\x80\x9d", "\xe2\x80\x98", "quotes", "\xe2\x80\x99", "\xc2\xab",
      "guillemets", "\xc2\xbb"}},
    // Whitespace, including a trailing newline that Python's '$' looks past.
    {"Two  dogs\trun\nfast", {"two", "dogs", "run", "fast"}},
    {"", {}},
    {"   \t\n ", {}},
    {"\xc2\xa0"
     "a"
     "\xc2\xa0"
     "b"
     "\xe3\x80\x80",
     {"a", "b"}},  // no-break and ideographic spaces
    {"x.\n", {"x", "."}},
    {"he said:\n", {"he", "said", ":"}},
    {"end.  \t", {"end", "."}},
    // Lower-casing beyond ASCII.
    {"caf\xc3\xa9 CR\xc3\x88ME \xc5\x9ctra\xc3\x9f"
     "e \xc3\x80\xc3\x89\xc3\x8e",
     {"caf\xc3\xa9", "cr\xc3\xa8me",
      "\xc5\x9dtra\xc3\x9f"
      "e",
      "\xc3\xa0\xc3\xa9\xc3\xae"}},
    {"\xc4\xb0stanbul", {"i\xcc\x87stanbul"}},                            // İ -> i + U+0307
    {"\xce\x9f\xce\x94\xce\xa5\xce\xa3\xce\xa3\xce\x95\xce\xa5\xce\xa3",  // ΟΔΥΣΣΕΥΣ: final sigma
     {"\xce\xbf\xce\xb4\xcf\x85\xcf\x83\xcf\x83\xce\xb5\xcf\x85\xcf\x82"}},
    {"g\xc4\xb1mme", {"g\xc4\xb1m", "me"}},  // dotless i matches i case-insensitively
    // Invalid UTF-8 passes through byte for byte.
    {"caf\xff bar.", {"caf\xff", "bar", "."}},
    {"\xe2\x80 x", {"\xe2\x80", "x"}},
    {"\xc0\xaf"
     "cannot",
     {"\xc0\xaf", "can", "not"}},
    {"trunc\xf0\x9f\x98", {"trunc\xf0\x9f\x98"}},
};

INSTANTIATE_TEST_SUITE_P(Captions, TokenizeCaptionTest, ::testing::ValuesIn(kCases));

TEST(NltkWordTokenizeTest, KeepsCaseAndSplitsUpperCaseClitics) {
  EXPECT_EQ(NltkWordTokenize("I DON'T"), (Tokens{"I", "DO", "N'T"}));
  EXPECT_EQ(NltkWordTokenize("JOHN'S DOG"), (Tokens{"JOHN", "'S", "DOG"}));
  EXPECT_EQ(NltkWordTokenize("WE'LL"), (Tokens{"WE", "'LL"}));
  EXPECT_EQ(NltkWordTokenize("We'Ll"), (Tokens{"We'Ll"}));  // mixed-case clitics are not split
  EXPECT_EQ(NltkWordTokenize("'TIS"), (Tokens{"'T", "IS"}));
  EXPECT_EQ(NltkWordTokenize("\"Hi\""), (Tokens{"``", "Hi", "''"}));
}

TEST(TokenizeCaptionTest, NulBytesAndLongInputDoNotBreakIt) {
  EXPECT_EQ(TokenizeCaption(std::string("a\0b", 3)), (Tokens{std::string("a\0b", 3)}));
  std::string long_caption;
  for (int i = 0; i < 10000; ++i) long_caption += "dog's, ";
  EXPECT_EQ(TokenizeCaption(long_caption).size(), 30000u);
}

// The real test split: realistic lengths (README: mean 13.5 tokens, max 75) and speed.
TEST(TokenizeCaptionTest, Flickr30kTestCaptions) {
  const std::string path = std::string(SCANSERVE_SHARED_DATA_DIR) + "/scan-text/f30k_test_caps.txt";
  std::ifstream in(path);
  if (!in) GTEST_SKIP() << "shared data absent: " << path;
  std::vector<std::string> captions;
  for (std::string line; std::getline(in, line);) captions.push_back(line);
  ASSERT_EQ(captions.size(), 5000u);

  const auto start = std::chrono::steady_clock::now();
  size_t total_tokens = 0, max_tokens = 0;
  for (const std::string& caption : captions) {
    const size_t n = TokenizeCaption(caption).size();
    total_tokens += n;
    max_tokens = std::max(max_tokens, n);
  }
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  EXPECT_EQ(total_tokens, 67709u);  // what NLTK gives
  EXPECT_EQ(max_tokens, 75u);
  EXPECT_LT(seconds, 1.0) << "tokenising 5,000 captions took " << seconds << " s";
}

}  // namespace
}  // namespace scanserve
