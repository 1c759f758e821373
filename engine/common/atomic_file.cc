#include "engine/common/atomic_file.h"

#include <fcntl.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <random>
#include <utility>

#include "absl/strings/str_cat.h"
#include "engine/common/file_read.h"
#include "engine/common/status_macros.h"

namespace scanserve {
namespace {

absl::Status ErrnoError(int error, absl::string_view what, const std::string& path) {
  return absl::Status(absl::ErrnoToStatusCode(error),
                      absl::StrCat(what, " ", path, ": ", std::strerror(error)));
}

std::string DirectoryOf(const std::string& path) {
  const std::string parent = std::filesystem::path(path).parent_path().string();
  return parent.empty() ? std::string(".") : parent;
}

// A name no other writer in this or another process picks: pid, a counter, random bits.
std::string TemporaryNameFor(const std::string& path) {
  static std::atomic<uint64_t> counter{0};
  thread_local std::mt19937_64 random(std::random_device{}());
  return absl::StrCat(path, ".tmp-", getpid(), "-", counter.fetch_add(1), "-",
                      absl::Hex(random() & 0xffffff));
}

}  // namespace

AtomicFileWriter::AtomicFileWriter(std::string path, std::string temp_path, int fd)
    : path_(std::move(path)), temp_path_(std::move(temp_path)), fd_(fd) {}

AtomicFileWriter::AtomicFileWriter(AtomicFileWriter&& other) noexcept
    : path_(std::move(other.path_)), temp_path_(std::move(other.temp_path_)), fd_(other.fd_) {
  other.fd_ = -1;
  other.temp_path_.clear();
}

AtomicFileWriter& AtomicFileWriter::operator=(AtomicFileWriter&& other) noexcept {
  if (this != &other) {
    Discard();
    path_ = std::move(other.path_);
    temp_path_ = std::move(other.temp_path_);
    fd_ = other.fd_;
    other.fd_ = -1;
    other.temp_path_.clear();
  }
  return *this;
}

AtomicFileWriter::~AtomicFileWriter() { Discard(); }

absl::Status AtomicFileWriter::Spent() const {
  return absl::FailedPreconditionError(
      absl::StrCat("the writer of ", path_, " is spent (committed, or a write failed)"));
}

void AtomicFileWriter::Discard() {
  if (fd_ >= 0) close(fd_);
  fd_ = -1;
  if (!temp_path_.empty()) unlink(temp_path_.c_str());
  temp_path_.clear();
}

absl::StatusOr<AtomicFileWriter> AtomicFileWriter::Create(const std::string& path) {
  for (int attempt = 0;; ++attempt) {
    std::string temp = TemporaryNameFor(path);
    const int fd = open(temp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
    if (fd >= 0) return AtomicFileWriter(path, std::move(temp), fd);
    if (errno != EEXIST || attempt == 8) return ErrnoError(errno, "cannot create", temp);
  }
}

absl::Status AtomicFileWriter::Append(absl::string_view bytes) {
  if (fd_ < 0) return Spent();
  while (!bytes.empty()) {
    const ssize_t n = write(fd_, bytes.data(), bytes.size());
    if (n < 0) {
      if (errno == EINTR) continue;
      const int error = errno;
      Discard();
      return ErrnoError(error, "cannot write", path_);
    }
    bytes.remove_prefix(static_cast<size_t>(n));
  }
  return absl::OkStatus();
}

absl::Status AtomicFileWriter::Commit() {
  if (fd_ < 0) return Spent();
  // After a failed fsync the page cache may hold bytes the disk never got: the file is not
  // trusted (not retried), and the target keeps its old contents.
  if (fsync(fd_) != 0) {
    const int error = errno;
    Discard();
    return ErrnoError(error, "cannot sync", path_);
  }
  const int closed = close(fd_);
  fd_ = -1;
  if (closed != 0) {
    const int error = errno;
    Discard();
    return ErrnoError(error, "cannot close", path_);
  }
  if (rename(temp_path_.c_str(), path_.c_str()) != 0) {
    const int error = errno;
    Discard();
    return ErrnoError(error, "cannot rename into place", path_);
  }
  temp_path_.clear();
  return SyncDirectory(DirectoryOf(path_));
}

absl::Status WriteFileAtomically(const std::string& path, absl::string_view contents) {
  SCANSERVE_ASSIGN_OR_RETURN(AtomicFileWriter writer, AtomicFileWriter::Create(path));
  SCANSERVE_RETURN_IF_ERROR(writer.Append(contents));
  return writer.Commit();
}

absl::Status SyncDirectory(const std::string& dir) {
  const int fd = open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return ErrnoError(errno, "cannot open the directory", dir);
  const int synced = fsync(fd);
  const int error = errno;
  close(fd);
  // Some file systems cannot sync a directory (EINVAL, ENOTSUP): their renames are as durable as
  // they get, and refusing every write there would help no one.
  if (synced != 0 && error != EINVAL && error != ENOTSUP) {
    return ErrnoError(error, "cannot sync the directory", dir);
  }
  return absl::OkStatus();
}

absl::Status MoveFileDurably(const std::string& from, const std::string& to) {
  if (rename(from.c_str(), to.c_str()) == 0) {
    SCANSERVE_RETURN_IF_ERROR(SyncDirectory(DirectoryOf(to)));
    if (DirectoryOf(to) != DirectoryOf(from)) return SyncDirectory(DirectoryOf(from));
    return absl::OkStatus();
  }
  if (errno != EXDEV) return ErrnoError(errno, absl::StrCat("cannot move ", from, " to"), to);
  SCANSERVE_ASSIGN_OR_RETURN(const std::string contents, ReadWholeFile(from));
  SCANSERVE_RETURN_IF_ERROR(WriteFileAtomically(to, contents));
  if (unlink(from.c_str()) != 0) return ErrnoError(errno, "cannot remove", from);
  return SyncDirectory(DirectoryOf(from));
}

}  // namespace scanserve
