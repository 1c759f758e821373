// A directory of the test's own under the test temp dir (resolved, named after the test, emptied
// first and removed after), with files written as kubelet and most tools write them: a new file
// renamed over the old one.
#pragma once

#include <filesystem>
#include <fstream>
#include <string>

#include <gtest/gtest.h>

#include "absl/strings/str_cat.h"

namespace scanserve::testing_files {

class ScratchDirectory {
 public:
  explicit ScratchDirectory(const std::string& prefix)
      : dir_(std::filesystem::weakly_canonical(::testing::TempDir()) /
             absl::StrCat(prefix, "-", ::testing::UnitTest::GetInstance()->current_test_info()->name())) {
    std::filesystem::remove_all(dir_);
    std::filesystem::create_directories(dir_);
  }
  ~ScratchDirectory() {
    std::error_code ignored;
    std::filesystem::remove_all(dir_, ignored);
  }
  ScratchDirectory(const ScratchDirectory&) = delete;
  ScratchDirectory& operator=(const ScratchDirectory&) = delete;

  const std::filesystem::path& dir() const { return dir_; }
  std::string Path(const std::string& name) const { return (dir_ / name).string(); }

  static void Write(const std::string& path, const std::string& contents) {
    const std::string temporary = path + ".tmp";
    std::ofstream(temporary) << contents;
    std::filesystem::rename(temporary, path);
  }

 private:
  const std::filesystem::path dir_;
};

}  // namespace scanserve::testing_files
