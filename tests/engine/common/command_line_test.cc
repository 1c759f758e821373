// ParseCommandLine: both value spellings, switches, and each mistake named.
#include "engine/common/command_line.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

namespace scanserve {
namespace {

const CommandLineSpec kSpec = {{"--model", "--threads"}, {"--help", "-h", "--json"}};

absl::StatusOr<std::vector<CommandLineFlag>> Parse(std::vector<const char*> words) {
  words.insert(words.begin(), "tool");
  return ParseCommandLine(static_cast<int>(words.size()), words.data(), kSpec);
}

TEST(CommandLineTest, ReadsValuesBothWaysAndSwitchesInOrder) {
  absl::StatusOr<std::vector<CommandLineFlag>> flags =
      Parse({"--model", "a", "--json", "--model=b=c", "--threads=", "-h"});
  ASSERT_TRUE(flags.ok()) << flags.status();
  ASSERT_EQ(flags->size(), 5u);
  EXPECT_EQ((*flags)[0].name, "--model");
  EXPECT_EQ((*flags)[0].value, "a");
  EXPECT_EQ((*flags)[1].name, "--json");
  EXPECT_EQ((*flags)[1].value, "");
  EXPECT_EQ((*flags)[2].name, "--model");
  EXPECT_EQ((*flags)[2].value, "b=c");  // only the first '=' splits
  EXPECT_EQ((*flags)[3].name, "--threads");
  EXPECT_EQ((*flags)[3].value, "");  // an explicit empty value
  EXPECT_EQ((*flags)[4].name, "-h");
  // A value may itself look like a flag: it is the word after the flag.
  flags = Parse({"--model", "--json"});
  ASSERT_TRUE(flags.ok()) << flags.status();
  ASSERT_EQ(flags->size(), 1u);
  EXPECT_EQ((*flags)[0].value, "--json");
  EXPECT_TRUE(Parse({}).ok());
}

TEST(CommandLineTest, MistakesAreInvalidArgumentNamingTheWord) {
  EXPECT_EQ(Parse({"--modle", "a"}).status().message(), "unknown argument '--modle'");
  EXPECT_EQ(Parse({"stray"}).status().message(), "unknown argument 'stray'");
  EXPECT_EQ(Parse({"--json", "--model"}).status().message(), "--model needs a value");
  EXPECT_EQ(Parse({"--json=yes"}).status().message(), "--json takes no value");
  EXPECT_EQ(Parse({"--unknown=1"}).status().message(), "unknown argument '--unknown=1'");
  EXPECT_EQ(Parse({"--json=yes"}).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(CommandLineTest, OperandsComeBackUnnamedWhereAllowed) {
  CommandLineSpec spec = kSpec;
  spec.operands = true;
  std::vector<const char*> words = {"tool", "a.jpg", "--model", "m", "-", "--", "--json", "-h"};
  absl::StatusOr<std::vector<CommandLineFlag>> flags =
      ParseCommandLine(static_cast<int>(words.size()), words.data(), spec);
  ASSERT_TRUE(flags.ok()) << flags.status();
  ASSERT_EQ(flags->size(), 5u);
  EXPECT_EQ((*flags)[0].name, "");
  EXPECT_EQ((*flags)[0].value, "a.jpg");
  EXPECT_EQ((*flags)[1].name, "--model");
  EXPECT_EQ((*flags)[2].value, "-");  // stdin, by convention
  EXPECT_EQ((*flags)[3].name, "");    // after "--", flags are operands
  EXPECT_EQ((*flags)[3].value, "--json");
  EXPECT_EQ((*flags)[4].value, "-h");
  // Unknown flags are still refused; without `operands`, so are the words.
  words = {"tool", "a.jpg", "--modle"};
  EXPECT_EQ(ParseCommandLine(3, words.data(), spec).status().message(), "unknown argument '--modle'");
  EXPECT_EQ(Parse({"--"}).status().message(), "unknown argument '--'");
}

}  // namespace
}  // namespace scanserve
