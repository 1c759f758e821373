#include "engine/store/rocksdb_info_log.h"

#include <gtest/gtest.h>
#include <rocksdb/env.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <regex>
#include <string>

#include "engine/store/rocksdb_feature_store.h"

namespace scanserve {
namespace {

namespace fs = std::filesystem;

class StoreInfoLogTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("store_info_log_test_" + std::to_string(::getpid()) + "_" +
                                         ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  std::vector<std::string> Lines(const fs::path& file) {
    std::ifstream in(file);
    std::vector<std::string> lines;
    for (std::string line; std::getline(in, line);) lines.push_back(line);
    return lines;
  }

  fs::path dir_;
};

TEST_F(StoreInfoLogTest, LinesAreTimestampedAndRotateAtTheLimit) {
  const std::shared_ptr<rocksdb::Logger> log = OpenStoreInfoLog(dir_.string(), 4096);
  const std::string pad(80, 'x');
  for (int i = 0; i < 200; ++i) rocksdb::Log(rocksdb::InfoLogLevel::WARN_LEVEL, log, "line %d %s", i, pad.c_str());
  ASSERT_TRUE(fs::exists(dir_ / "LOG"));
  ASSERT_TRUE(fs::exists(dir_ / "LOG.old"));
  EXPECT_LE(fs::file_size(dir_ / "LOG"), 4096u);
  EXPECT_LE(fs::file_size(dir_ / "LOG.old"), 4096u);
  EXPECT_EQ(log->GetLogFileSize(), fs::file_size(dir_ / "LOG"));
  const std::vector<std::string> lines = Lines(dir_ / "LOG");
  ASSERT_FALSE(lines.empty());
  const std::regex line_format(R"(\d{4}/\d\d/\d\d-\d\d:\d\d:\d\d\.\d{6} (\[WARN\] )?line \d+ x{80})");
  for (const std::string& line : lines) EXPECT_TRUE(std::regex_match(line, line_format)) << line;
  EXPECT_NE(lines.back().find("line 199 "), std::string::npos) << "the newest line is in LOG";
  // LOG.old holds the lines just before LOG's first: nothing lost but what rotated out twice.
  const std::vector<std::string> old_lines = Lines(dir_ / "LOG.old");
  const int first = std::stoi(lines.front().substr(lines.front().find("line ") + 5));
  EXPECT_NE(old_lines.back().find("line " + std::to_string(first - 1) + " "), std::string::npos);
}

TEST_F(StoreInfoLogTest, LinesThatCannotBeWrittenAreDropped) {
  fs::create_symlink("/dev/full", dir_ / "LOG");  // every write fails with ENOSPC
  const std::shared_ptr<rocksdb::Logger> log = OpenStoreInfoLog(dir_.string(), 1 << 20);
  for (int i = 0; i < 100; ++i) rocksdb::Log(rocksdb::InfoLogLevel::ERROR_LEVEL, log, "disk full %d", i);
  EXPECT_EQ(log->GetLogFileSize(), 0u);
}

// RocksDB's own logger asserted (SIGABRT, in Debian's build) on its second line after a failed
// write: a store whose info log cannot be written must still open, write, reopen and close.
TEST_F(StoreInfoLogTest, AStoreWhoseInfoLogCannotBeWrittenWorks) {
  const fs::path store_dir = dir_ / "store";
  fs::create_directories(store_dir);
  fs::create_symlink("/dev/full", store_dir / "LOG");
  for (int round = 0; round < 2; ++round) {
    absl::StatusOr<std::unique_ptr<RocksDbFeatureStore>> store = RocksDbFeatureStore::Open(store_dir.string());
    ASSERT_TRUE(store.ok()) << store.status();
    ASSERT_TRUE((*store)->SetMeta("round", std::to_string(round)).ok());
    absl::StatusOr<std::optional<std::string>> meta = (*store)->GetMeta("round");
    ASSERT_TRUE(meta.ok() && meta->has_value()) << meta.status();
    EXPECT_EQ(**meta, std::to_string(round));
    ASSERT_TRUE((*store)->Checkpoint((dir_ / ("checkpoint" + std::to_string(round))).string()).ok());
    ASSERT_TRUE((*store)->Close().ok());
  }
  EXPECT_TRUE(fs::is_symlink(store_dir / "LOG")) << "the store's logger appends; RocksDB's renames LOG away";
}

}  // namespace
}  // namespace scanserve
