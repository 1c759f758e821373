#include "engine/store/rocksdb_info_log.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <unistd.h>

#include <cstdarg>
#include <cstdio>
#include <ctime>
#include <mutex>

#include <rocksdb/env.h>

namespace scanserve {
namespace {

class StoreInfoLog : public rocksdb::Logger {
 public:
  StoreInfoLog(std::string directory, int64_t max_bytes)
      : path_(directory + "/LOG"), old_path_(directory + "/LOG.old"), max_bytes_(max_bytes) {
    OpenFile();
  }
  ~StoreInfoLog() override {
    if (fd_ >= 0) close(fd_);
  }

  using rocksdb::Logger::Logv;
  void Logv(const char* format, va_list ap) override {
    char line[4096];
    timeval now{};
    gettimeofday(&now, nullptr);
    tm utc{};
    gmtime_r(&now.tv_sec, &utc);
    int n = std::snprintf(line, sizeof(line), "%04d/%02d/%02d-%02d:%02d:%02d.%06ld ", utc.tm_year + 1900,
                          utc.tm_mon + 1, utc.tm_mday, utc.tm_hour, utc.tm_min, utc.tm_sec,
                          static_cast<long>(now.tv_usec));
    va_list copy;
    va_copy(copy, ap);
    const int body = std::vsnprintf(line + n, sizeof(line) - n - 1, format, copy);
    va_end(copy);
    if (body < 0) return;
    n += std::min(body, static_cast<int>(sizeof(line)) - n - 2);
    if (line[n - 1] != '\n') line[n++] = '\n';

    std::lock_guard<std::mutex> lock(mu_);
    if (bytes_ + n > max_bytes_) Rotate();
    if (fd_ < 0) return;
    const ssize_t written = write(fd_, line, static_cast<size_t>(n));
    if (written > 0) bytes_ += written;  // a failed or short write (a full disk) loses the line, nothing else
  }

  size_t GetLogFileSize() const override {
    std::lock_guard<std::mutex> lock(mu_);
    return static_cast<size_t>(bytes_);
  }

 private:
  void OpenFile() {
    fd_ = open(path_.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    struct stat st {};
    bytes_ = fd_ >= 0 && fstat(fd_, &st) == 0 ? static_cast<int64_t>(st.st_size) : 0;
  }

  void Rotate() {
    if (fd_ >= 0) close(fd_);
    rename(path_.c_str(), old_path_.c_str());
    OpenFile();
  }

  const std::string path_;
  const std::string old_path_;
  const int64_t max_bytes_;
  mutable std::mutex mu_;  // guards fd_ and bytes_
  int fd_ = -1;
  int64_t bytes_ = 0;
};

}  // namespace

std::shared_ptr<rocksdb::Logger> OpenStoreInfoLog(const std::string& directory, int64_t max_bytes) {
  return std::make_shared<StoreInfoLog>(directory, max_bytes);
}

}  // namespace scanserve
