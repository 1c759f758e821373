// Files replaced whole: after a crash or a power loss a reader finds the old contents or the new
// ones, never a mix or a truncated file. The new contents go to a temporary file beside the
// target, are fsync'd, renamed over it, and the directory is fsync'd so that the rename itself
// is on the disk before Commit returns (a checkpoint that names a file must not outlive it).
#pragma once

#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace scanserve {

class AtomicFileWriter {
 public:
  // Opens a new temporary file beside `path` (created with 0666 minus the umask, as a plain open
  // would). Errors carry the errno's code: NOT_FOUND for a missing directory, PERMISSION_DENIED.
  static absl::StatusOr<AtomicFileWriter> Create(const std::string& path);

  AtomicFileWriter(AtomicFileWriter&& other) noexcept;
  AtomicFileWriter& operator=(AtomicFileWriter&& other) noexcept;
  AtomicFileWriter(const AtomicFileWriter&) = delete;
  AtomicFileWriter& operator=(const AtomicFileWriter&) = delete;
  // Without a successful Commit the temporary file goes and the target is untouched.
  ~AtomicFileWriter();

  absl::Status Append(absl::string_view bytes);
  // fsync, rename over the target, fsync the directory. Once: the writer is spent after it,
  // whether it succeeded or not.
  absl::Status Commit();

  const std::string& path() const { return path_; }

 private:
  AtomicFileWriter(std::string path, std::string temp_path, int fd);
  absl::Status Spent() const;
  void Discard();

  std::string path_;
  std::string temp_path_;
  int fd_ = -1;
};

// `contents` as the whole of `path`, through an AtomicFileWriter.
absl::Status WriteFileAtomically(const std::string& path, absl::string_view contents);

// Renames `from` to `to` (replacing it) and fsyncs the directories involved. Across filesystems
// (EXDEV) it copies through an AtomicFileWriter and then removes `from`.
absl::Status MoveFileDurably(const std::string& from, const std::string& to);

// fsyncs a directory, so that the names created, renamed or removed in it are on the disk.
absl::Status SyncDirectory(const std::string& dir);

}  // namespace scanserve
