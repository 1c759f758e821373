// Atomic file replacement (engine/common/atomic_file.h) when the disk fails (EIO on writes or
// syncs, io_faults.h): the call fails naming the file, the old contents stay, and no temporary
// file is left behind.
#include <gtest/gtest.h>

#include <filesystem>
#include <string>

#include "engine/common/atomic_file.h"
#include "engine/common/file_read.h"
#include "engine/common/safetensors.h"
#include "tests/engine/test_util/scratch_directory.h"
#include "tests/fault_injection/io_faults.h"

namespace scanserve {
namespace {

namespace fs = std::filesystem;

class AtomicFileIoFaultTest : public ::testing::Test {
 protected:
  void SetUp() override { ASSERT_TRUE(WriteFileAtomically(Path(), "old").ok()); }
  void TearDown() override { ScanserveIoFaultsArm("", kScanserveIoFaultsOff); }
  std::string Path() const { return scratch_.Path("checkpoint.json"); }
  void ExpectOldFileAlone() const {
    absl::StatusOr<std::string> contents = ReadWholeFile(Path());
    ASSERT_TRUE(contents.ok()) << contents.status();
    EXPECT_EQ(*contents, "old");
    int entries = 0;
    for (const auto& entry : fs::directory_iterator(dir_)) {
      ++entries;
      EXPECT_EQ(entry.path(), fs::path(Path())) << "left behind";
    }
    EXPECT_EQ(entries, 1);
  }

  testing_files::ScratchDirectory scratch_{"atomic-file-io-fault"};
  const fs::path& dir_ = scratch_.dir();
};

TEST_F(AtomicFileIoFaultTest, AFailedSyncKeepsTheOldFile) {
  ScanserveIoFaultsArm(dir_.c_str(), kScanserveIoFaultsSync);
  const absl::Status status = WriteFileAtomically(Path(), "new");
  ScanserveIoFaultsArm("", kScanserveIoFaultsOff);
  EXPECT_FALSE(status.ok());
  EXPECT_NE(status.message().find("cannot sync"), std::string::npos) << status;
  EXPECT_NE(status.message().find(Path()), std::string::npos) << status;
  ExpectOldFileAlone();
  EXPECT_TRUE(WriteFileAtomically(Path(), "new").ok()) << "works again once the disk does";
}

TEST_F(AtomicFileIoFaultTest, AFailedWriteKeepsTheOldFile) {
  ScanserveIoFaultsArm(dir_.c_str(), kScanserveIoFaultsAll);
  const absl::Status status = WriteFileAtomically(Path(), "new");
  ScanserveIoFaultsArm("", kScanserveIoFaultsOff);
  EXPECT_FALSE(status.ok());
  EXPECT_NE(status.message().find("cannot write"), std::string::npos) << status;
  ExpectOldFileAlone();
}

TEST_F(AtomicFileIoFaultTest, AFailedSafetensorsWriteKeepsTheOldFile) {
  Float32Tensor tensor;
  tensor.shape = {2};
  tensor.values = {1.0f, 2.0f};
  ScanserveIoFaultsArm(dir_.c_str(), kScanserveIoFaultsSync);
  const absl::Status status = WriteSafetensors(Path(), {{"w", tensor}});
  ScanserveIoFaultsArm("", kScanserveIoFaultsOff);
  EXPECT_FALSE(status.ok());
  ExpectOldFileAlone();
}

}  // namespace
}  // namespace scanserve
