// ChangeLogRetention: when a FeatureStore trims its change log (item_change.h). Changes older than
// the retention may go; writes check at most every min(60 s, retention), so that few writes pay
// for a trim and an idle store keeps what it has.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <optional>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace scanserve {

inline int64_t UnixMicrosNow() {
  return std::chrono::duration_cast<std::chrono::microseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

// What ListChanges answers a reader that fell behind the retention.
inline absl::Status ChangesTrimmedError(uint64_t after, uint64_t trimmed_through) {
  return absl::OutOfRangeError(absl::StrCat(
      "the changes after sequence ", after, " are no longer kept (the change log now starts after ",
      trimmed_through, "); a copy that far behind must start again"));
}

// What ListChanges answers a reader ahead of the log: it was reading another one.
inline absl::Status ChangesAheadError(uint64_t after, uint64_t last_sequence) {
  return absl::OutOfRangeError(absl::StrCat(
      "no change has sequence ", after, " yet (the newest is ", last_sequence,
      "): this is not the change log the reader was following (a snapshot restored, a store made "
      "again); a copy must start again"));
}

class ChangeLogRetention {
 public:
  // retention_s <= 0: the log is kept whole.
  explicit ChangeLogRetention(double retention_s)
      : retention_micros_(retention_s > 0 ? static_cast<int64_t>(retention_s * 1e6) : 0) {}

  // Changes written before the returned time (unix micros) may be trimmed now; nullopt when no
  // trim is due. Not thread-safe: callers hold their write lock.
  std::optional<int64_t> TrimCutoff(int64_t now_unix_micros) {
    if (retention_micros_ <= 0 || now_unix_micros < next_check_micros_) return std::nullopt;
    constexpr int64_t kMaxCheckIntervalMicros = 60'000'000;
    next_check_micros_ = now_unix_micros + std::min(retention_micros_, kMaxCheckIntervalMicros);
    return now_unix_micros - retention_micros_;
  }

 private:
  int64_t retention_micros_;
  int64_t next_check_micros_ = 0;
};

}  // namespace scanserve
