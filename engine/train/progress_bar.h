// A training progress bar on stderr: `epoch 3/30 [#####.....] 57/117 loss 12.35 | 2104 pairs/s |
// ETA 0:32`. On a terminal it is redrawn in place a few times a second; otherwise (logs, CI) one line
// is printed every `log_interval_s` seconds and at the end of the epoch.
#pragma once

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <string>

namespace scanserve {

class ProgressBar {
 public:
  ProgressBar(bool enabled, int epoch, int num_epochs, int64_t total_iterations,
              int64_t first_iteration, double log_interval_s = 15.0, std::FILE* out = stderr);

  // One finished iteration: its loss and how many (image, caption) pairs it trained on.
  void Update(int64_t iteration_done, double loss, int64_t pairs);
  // Ends the bar's line (the final state is printed once more).
  void Finish();

  // Pairs trained per second since this bar was made.
  double pairs_per_second() const;

  // "1:02:03" / "2:03" for a number of seconds.
  static std::string FormatDuration(double seconds);

 private:
  void Draw(bool final_line);

  bool enabled_;
  bool tty_;
  int epoch_;
  int num_epochs_;
  int64_t total_;
  int64_t first_;
  int64_t done_;
  double log_interval_s_;
  std::FILE* out_;
  double smoothed_loss_ = 0;
  bool have_loss_ = false;
  int64_t pairs_ = 0;
  std::chrono::steady_clock::time_point start_;
  std::chrono::steady_clock::time_point last_draw_;
  bool drawn_ = false;
};

}  // namespace scanserve
