// ReadWholeFile: exact bytes (binary, empty), and the codes for a missing file and a directory.
#include "engine/common/file_read.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <string>

namespace scanserve {
namespace {

namespace fs = std::filesystem;

TEST(ReadWholeFileTest, ReturnsTheBytesOrSaysWhy) {
  const fs::path dir = fs::path(::testing::TempDir()) / "file_read_test";
  fs::create_directories(dir);
  const std::string binary("a\0b\r\n\xff" "end", 9);
  std::ofstream(dir / "binary", std::ios::binary) << binary;
  std::ofstream(dir / "empty", std::ios::binary).close();

  absl::StatusOr<std::string> read = ReadWholeFile((dir / "binary").string());
  ASSERT_TRUE(read.ok()) << read.status();
  EXPECT_EQ(*read, binary);
  read = ReadWholeFile((dir / "empty").string());
  ASSERT_TRUE(read.ok()) << read.status();
  EXPECT_EQ(*read, "");

  read = ReadWholeFile((dir / "missing").string());
  EXPECT_EQ(read.status().code(), absl::StatusCode::kNotFound);
  EXPECT_NE(read.status().message().find("missing"), std::string::npos) << read.status();
  read = ReadWholeFile(dir.string());
  EXPECT_EQ(read.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(read.status().message().find("directory"), std::string::npos) << read.status();
  fs::remove_all(dir);
}

}  // namespace
}  // namespace scanserve
