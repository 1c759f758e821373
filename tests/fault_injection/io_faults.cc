// See io_faults.h. The checks run on every write of the process, so the disarmed path is one
// atomic load. <unistd.h> is left out on purpose: with _FILE_OFFSET_BITS=64 it renames pwrite to
// pwrite64, and both are defined here; the few declarations needed are written out below.
#include "tests/fault_injection/io_faults.h"

#include <dlfcn.h>
#include <sys/types.h>
#include <sys/uio.h>

#include <atomic>
#include <cerrno>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <cstring>

extern "C" {
ssize_t readlink(const char* path, char* buf, size_t size);
ssize_t write(int fd, const void* buf, size_t count);
ssize_t pwrite(int fd, const void* buf, size_t count, off_t offset);
ssize_t pwrite64(int fd, const void* buf, size_t count, off64_t offset);
int fsync(int fd);
int fdatasync(int fd);
}

namespace {

std::atomic<int> armed_mode{kScanserveIoFaultsOff};  // set by ScanserveIoFaultsArm
char armed_dir[PATH_MAX];
std::atomic<long> injected{0};

// The mode from the trigger file of a preloading process; Off when none.
int PreloadMode(const char** dir) {
  const char* trigger = std::getenv("SCANSERVE_IO_FAULTS_FILE");
  *dir = std::getenv("SCANSERVE_IO_FAULTS_DIR");
  if (trigger == nullptr || *dir == nullptr) return kScanserveIoFaultsOff;
  std::FILE* f = std::fopen(trigger, "re");
  if (f == nullptr) return kScanserveIoFaultsOff;
  char word[16] = {0};
  const int read = std::fscanf(f, "%15s", word);
  std::fclose(f);
  if (read == 1 && std::strcmp(word, "sync") == 0) return kScanserveIoFaultsSync;
  return kScanserveIoFaultsAll;
}

// Whether a write (or, when is_sync, a sync) on fd fails now; sets errno when it does.
bool Fails(int fd, bool is_sync) {
  const char* dir = armed_dir;
  int mode = armed_mode.load();
  if (mode == kScanserveIoFaultsOff) mode = PreloadMode(&dir);
  if (mode == kScanserveIoFaultsOff || (mode == kScanserveIoFaultsSync && !is_sync)) return false;
  char link[64];
  char path[PATH_MAX];
  std::snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
  const ssize_t n = readlink(link, path, sizeof path - 1);
  if (n <= 0) return false;
  path[n] = '\0';
  if (std::strncmp(path, dir, std::strlen(dir)) != 0) return false;
  injected.fetch_add(1);
  errno = EIO;
  return true;
}

// libc's function of that name.
template <typename F>
F* Real(F*, const char* name) {
  return reinterpret_cast<F*>(dlsym(RTLD_NEXT, name));
}

}  // namespace

extern "C" {

void ScanserveIoFaultsArm(const char* dir, enum ScanserveIoFaultMode mode) {
  armed_mode.store(kScanserveIoFaultsOff);
  if (mode != kScanserveIoFaultsOff) {
    std::snprintf(armed_dir, sizeof armed_dir, "%s", dir);
    armed_mode.store(mode);
  }
}

long ScanserveIoFaultsInjected(void) { return injected.load(); }

ssize_t write(int fd, const void* buf, size_t count) {
  static auto* real = Real(&write, "write");
  return Fails(fd, false) ? -1 : real(fd, buf, count);
}

ssize_t pwrite(int fd, const void* buf, size_t count, off_t offset) {
  static auto* real = Real(&pwrite, "pwrite");
  return Fails(fd, false) ? -1 : real(fd, buf, count, offset);
}

ssize_t pwrite64(int fd, const void* buf, size_t count, off64_t offset) {
  static auto* real = Real(&pwrite64, "pwrite64");
  return Fails(fd, false) ? -1 : real(fd, buf, count, offset);
}

ssize_t writev(int fd, const struct iovec* iov, int iovcnt) {
  static auto* real = Real(&writev, "writev");
  return Fails(fd, false) ? -1 : real(fd, iov, iovcnt);
}

int fsync(int fd) {
  static auto* real = Real(&fsync, "fsync");
  return Fails(fd, true) ? -1 : real(fd);
}

int fdatasync(int fd) {
  static auto* real = Real(&fdatasync, "fdatasync");
  return Fails(fd, true) ? -1 : real(fd);
}

}  // extern "C"
