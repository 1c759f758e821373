// A progress line on stderr for long imports: done/total, percent, items/s, ETA, failures. On a
// terminal it redraws one line (at most 5 times a second); otherwise it prints a line every 10 s.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>
#include <utility>

namespace scanserve {
namespace cli {

class Progress {
 public:
  // `total` items in all, of which `already_done` were done by an earlier run (they count towards
  // the percentage, not the rate); a negative total is unknown (counts and rate only). `enabled` =
  // false prints nothing.
  Progress(int64_t total, int64_t already_done, bool enabled);

  void Update(int64_t done, int64_t failed);  // done includes already_done
  void Finish(int64_t done, int64_t failed);  // final line (and a newline on a terminal)
  // A short state shown at the end of the line from now on ("3 changes behind"); empty = none.
  void set_status(std::string status) { status_ = std::move(status); }

  double elapsed_seconds() const;

 private:
  std::string Line(int64_t done, int64_t failed) const;

  const int64_t total_;
  const int64_t already_done_;
  const bool enabled_;
  const bool terminal_;
  const std::chrono::steady_clock::time_point start_;
  std::chrono::steady_clock::time_point last_print_;
  std::string status_;
};

}  // namespace cli
}  // namespace scanserve
