#include "engine/train/progress_bar.h"

#include <unistd.h>

#include <algorithm>
#include <cmath>

#include "absl/strings/str_format.h"

namespace scanserve {

ProgressBar::ProgressBar(bool enabled, int epoch, int num_epochs, int64_t total_iterations,
                         int64_t first_iteration, double log_interval_s, std::FILE* out)
    : enabled_(enabled && total_iterations > 0),
      tty_(isatty(fileno(out)) != 0),
      epoch_(epoch),
      num_epochs_(num_epochs),
      total_(total_iterations),
      first_(first_iteration),
      done_(first_iteration),
      log_interval_s_(log_interval_s),
      out_(out),
      start_(std::chrono::steady_clock::now()),
      last_draw_(start_) {}

std::string ProgressBar::FormatDuration(double seconds) {
  if (!std::isfinite(seconds) || seconds < 0) return "?";
  const int64_t s = static_cast<int64_t>(std::llround(seconds));
  if (s >= 3600) return absl::StrFormat("%d:%02d:%02d", s / 3600, (s / 60) % 60, s % 60);
  return absl::StrFormat("%d:%02d", s / 60, s % 60);
}

double ProgressBar::pairs_per_second() const {
  const double elapsed =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  return elapsed > 0 ? static_cast<double>(pairs_) / elapsed : 0.0;
}

void ProgressBar::Update(int64_t iteration_done, double loss, int64_t pairs) {
  done_ = iteration_done;
  pairs_ += pairs;
  // An exponential moving average: the per-batch hinge loss is noisy.
  smoothed_loss_ = have_loss_ ? 0.9 * smoothed_loss_ + 0.1 * loss : loss;
  have_loss_ = true;
  if (!enabled_) return;
  const auto now = std::chrono::steady_clock::now();
  const double since = std::chrono::duration<double>(now - last_draw_).count();
  if (since < (tty_ ? 0.2 : log_interval_s_)) return;
  last_draw_ = now;
  Draw(/*final_line=*/false);
}

void ProgressBar::Finish() {
  if (!enabled_) return;
  Draw(/*final_line=*/true);
}

void ProgressBar::Draw(bool final_line) {
  constexpr int kWidth = 24;
  const int filled = static_cast<int>(kWidth * std::min<int64_t>(done_, total_) / total_);
  const double elapsed =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  const int64_t done_here = done_ - first_;
  const double eta = done_here > 0 ? elapsed / static_cast<double>(done_here) *
                                         static_cast<double>(total_ - done_)
                                   : NAN;
  const std::string bar = std::string(static_cast<size_t>(filled), '#') +
                          std::string(static_cast<size_t>(kWidth - filled), '.');
  std::fprintf(out_, "%sepoch %d/%d [%s] %lld/%lld loss %.4f | %.0f pairs/s | %s %s%s",
               tty_ ? "\r" : "", epoch_, num_epochs_, bar.c_str(), static_cast<long long>(done_),
               static_cast<long long>(total_), smoothed_loss_, pairs_per_second(),
               final_line ? "took" : "ETA", FormatDuration(final_line ? elapsed : eta).c_str(),
               tty_ ? "\033[K" : "");
  if (!tty_ || final_line) std::fputc('\n', out_);
  std::fflush(out_);
  drawn_ = true;
}

}  // namespace scanserve
