#include "engine/common/atomic_file.h"

#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <string>
#include <vector>

#include "engine/common/file_read.h"
#include "tests/engine/test_util/scratch_directory.h"

namespace scanserve {
namespace {

namespace fs = std::filesystem;

class AtomicFileTest : public ::testing::Test {
 protected:
  void TearDown() override {
    std::error_code ignored;
    fs::permissions(dir_, fs::perms::owner_all, ignored);  // after the permission test
  }
  std::string Path(const std::string& name) const { return scratch_.Path(name); }
  std::string Read(const std::string& name) const {
    absl::StatusOr<std::string> contents = ReadWholeFile(Path(name));
    EXPECT_TRUE(contents.ok()) << contents.status();
    return contents.ok() ? *contents : std::string();
  }
  // The directory's entries: a temporary file left behind would show here.
  std::vector<std::string> Entries() const {
    std::vector<std::string> names;
    for (const auto& entry : fs::directory_iterator(dir_)) names.push_back(entry.path().filename());
    std::sort(names.begin(), names.end());
    return names;
  }

  testing_files::ScratchDirectory scratch_{"atomic-file"};
  const fs::path& dir_ = scratch_.dir();
};

TEST_F(AtomicFileTest, WritesANewFileAndLeavesNothingElse) {
  ASSERT_TRUE(WriteFileAtomically(Path("a.json"), "{\"x\": 1}\n").ok());
  EXPECT_EQ(Read("a.json"), "{\"x\": 1}\n");
  EXPECT_EQ(Entries(), std::vector<std::string>{"a.json"});
}

TEST_F(AtomicFileTest, ReplacesTheWholeFile) {
  ASSERT_TRUE(WriteFileAtomically(Path("a"), std::string(10000, 'o')).ok());
  ASSERT_TRUE(WriteFileAtomically(Path("a"), "new").ok());
  EXPECT_EQ(Read("a"), "new");
  ASSERT_TRUE(WriteFileAtomically(Path("a"), "").ok());
  EXPECT_EQ(Read("a"), "");
  EXPECT_EQ(Entries(), std::vector<std::string>{"a"});
}

TEST_F(AtomicFileTest, AppendsInPieces) {
  absl::StatusOr<AtomicFileWriter> writer = AtomicFileWriter::Create(Path("a"));
  ASSERT_TRUE(writer.ok()) << writer.status();
  std::string expected;
  for (int i = 0; i < 100; ++i) {
    const std::string piece = std::to_string(i) + ",";
    ASSERT_TRUE(writer->Append(piece).ok());
    expected += piece;
    EXPECT_FALSE(fs::exists(Path("a"))) << "the target appears only at Commit";
  }
  ASSERT_TRUE(writer->Commit().ok());
  EXPECT_EQ(Read("a"), expected);
}

TEST_F(AtomicFileTest, AWriterNotCommittedLeavesTheOldFileAndNoTemporary) {
  ASSERT_TRUE(WriteFileAtomically(Path("a"), "old").ok());
  {
    absl::StatusOr<AtomicFileWriter> writer = AtomicFileWriter::Create(Path("a"));
    ASSERT_TRUE(writer.ok()) << writer.status();
    ASSERT_TRUE(writer->Append("new, but abandoned").ok());
    EXPECT_EQ(Entries().size(), 2u) << "the temporary file sits beside the target";
  }
  EXPECT_EQ(Read("a"), "old");
  EXPECT_EQ(Entries(), std::vector<std::string>{"a"});
}

TEST_F(AtomicFileTest, AMovedFromWriterOwnsNothing) {
  absl::StatusOr<AtomicFileWriter> first = AtomicFileWriter::Create(Path("a"));
  ASSERT_TRUE(first.ok());
  AtomicFileWriter second = std::move(*first);
  ASSERT_TRUE(second.Append("moved").ok());
  EXPECT_EQ(first->Append("x").code(), absl::StatusCode::kFailedPrecondition);
  ASSERT_TRUE(second.Commit().ok());
  EXPECT_EQ(Read("a"), "moved");
}

TEST_F(AtomicFileTest, AWriterIsSpentAfterCommit) {
  absl::StatusOr<AtomicFileWriter> writer = AtomicFileWriter::Create(Path("a"));
  ASSERT_TRUE(writer.ok());
  ASSERT_TRUE(writer->Commit().ok());
  EXPECT_EQ(writer->Append("late").code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(writer->Commit().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(Read("a"), "");
}

TEST_F(AtomicFileTest, TwoWritersOfOnePathDoNotShareATemporary) {
  absl::StatusOr<AtomicFileWriter> one = AtomicFileWriter::Create(Path("a"));
  absl::StatusOr<AtomicFileWriter> two = AtomicFileWriter::Create(Path("a"));
  ASSERT_TRUE(one.ok() && two.ok());
  ASSERT_TRUE(one->Append("one").ok());
  ASSERT_TRUE(two->Append("two").ok());
  ASSERT_TRUE(one->Commit().ok());
  EXPECT_EQ(Read("a"), "one");
  ASSERT_TRUE(two->Commit().ok());
  EXPECT_EQ(Read("a"), "two");
  EXPECT_EQ(Entries(), std::vector<std::string>{"a"});
}

TEST_F(AtomicFileTest, AMissingDirectoryIsNotFoundAndNamed) {
  const absl::Status status = WriteFileAtomically(Path("no/such/dir/a"), "x");
  EXPECT_EQ(status.code(), absl::StatusCode::kNotFound) << status;
  EXPECT_NE(status.message().find("no/such/dir/a"), std::string::npos) << status;
}

TEST_F(AtomicFileTest, AnUnwritableDirectoryIsPermissionDenied) {
  if (::geteuid() == 0) GTEST_SKIP() << "running as root: directory permissions do not apply";
  ASSERT_TRUE(WriteFileAtomically(Path("a"), "old").ok());
  fs::permissions(dir_, fs::perms::owner_read | fs::perms::owner_exec);
  const absl::Status status = WriteFileAtomically(Path("a"), "new");
  EXPECT_EQ(status.code(), absl::StatusCode::kPermissionDenied) << status;
  fs::permissions(dir_, fs::perms::owner_all);
  EXPECT_EQ(Read("a"), "old");
}

TEST_F(AtomicFileTest, NewFilesGetTheUmasksModeLikeAPlainOpen) {
  const mode_t previous = ::umask(022);
  ASSERT_TRUE(WriteFileAtomically(Path("a"), "x").ok());
  ::umask(previous);
  EXPECT_EQ(fs::status(Path("a")).permissions() & fs::perms::all,
            fs::perms::owner_read | fs::perms::owner_write | fs::perms::group_read |
                fs::perms::others_read);
}

TEST_F(AtomicFileTest, MoveReplacesTheTargetAndRemovesTheSource) {
  fs::create_directories(dir_ / "from");
  fs::create_directories(dir_ / "to");
  ASSERT_TRUE(WriteFileAtomically(Path("from/w"), "new weights").ok());
  ASSERT_TRUE(WriteFileAtomically(Path("to/w"), "old weights").ok());
  ASSERT_TRUE(MoveFileDurably(Path("from/w"), Path("to/w")).ok());
  EXPECT_EQ(Read("to/w"), "new weights");
  EXPECT_FALSE(fs::exists(Path("from/w")));
}

TEST_F(AtomicFileTest, MovesAcrossFileSystems) {
  // /dev/shm is a tmpfs on Linux: a rename from there into the test directory fails with EXDEV.
  struct stat shm {}, here {};
  if (::stat("/dev/shm", &shm) != 0 || ::stat(dir_.c_str(), &here) != 0 || shm.st_dev == here.st_dev) {
    GTEST_SKIP() << "no /dev/shm on another file system than " << dir_;
  }
  const std::string from = "/dev/shm/atomic_file_test_" + std::to_string(::getpid());
  ASSERT_TRUE(WriteFileAtomically(from, "weights from elsewhere").ok());
  ASSERT_TRUE(WriteFileAtomically(Path("w"), "old").ok());
  const absl::Status moved = MoveFileDurably(from, Path("w"));
  ASSERT_TRUE(moved.ok()) << moved;
  EXPECT_EQ(Read("w"), "weights from elsewhere");
  EXPECT_FALSE(fs::exists(from));
  EXPECT_EQ(Entries(), std::vector<std::string>{"w"});
}

TEST_F(AtomicFileTest, MovingAMissingFileIsNotFound) {
  const absl::Status status = MoveFileDurably(Path("nothing"), Path("b"));
  EXPECT_EQ(status.code(), absl::StatusCode::kNotFound) << status;
  EXPECT_NE(status.message().find("nothing"), std::string::npos) << status;
}

TEST_F(AtomicFileTest, SyncingAMissingDirectoryFails) {
  EXPECT_EQ(SyncDirectory(Path("missing")).code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(SyncDirectory(dir_.string()).ok());
}

}  // namespace
}  // namespace scanserve
