#include "client/progress.h"

#include <cstdio>
#include <unistd.h>

#include "absl/strings/str_format.h"

namespace scanserve {
namespace cli {
namespace {

std::string FormatDuration(double seconds) {
  if (!(seconds >= 0) || seconds > 99 * 3600) return "--:--";
  const int64_t s = static_cast<int64_t>(seconds + 0.5);
  if (s >= 3600) return absl::StrFormat("%d:%02d:%02d", s / 3600, (s / 60) % 60, s % 60);
  return absl::StrFormat("%d:%02d", s / 60, s % 60);
}

}  // namespace

Progress::Progress(int64_t total, int64_t already_done, bool enabled)
    : total_(total),
      already_done_(already_done),
      enabled_(enabled),
      terminal_(isatty(STDERR_FILENO) != 0),
      start_(std::chrono::steady_clock::now()),
      last_print_(start_) {}

double Progress::elapsed_seconds() const {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
}

std::string Progress::Line(int64_t done, int64_t failed) const {
  const double elapsed = elapsed_seconds();
  const double rate = elapsed > 0 ? static_cast<double>(done - already_done_) / elapsed : 0;
  if (total_ < 0) {
    std::string line = absl::StrFormat("%d items  %.1f items/s", done, rate);
    if (failed > 0) line += absl::StrFormat("  %d failed", failed);
    if (!status_.empty()) line += "  " + status_;
    return line;
  }
  const double percent = total_ > 0 ? 100.0 * static_cast<double>(done) / static_cast<double>(total_) : 100.0;
  const double eta = rate > 0 ? static_cast<double>(total_ - done) / rate : -1;
  constexpr int kBar = 24;
  const int filled = total_ > 0 ? static_cast<int>(kBar * static_cast<double>(done) / static_cast<double>(total_)) : kBar;
  std::string bar(static_cast<size_t>(filled), '#');
  bar.resize(kBar, '.');
  std::string line = absl::StrFormat("[%s] %d/%d items %5.1f%%  %.1f items/s  ETA %s", bar, done, total_, percent, rate,
                                     FormatDuration(eta));
  if (failed > 0) line += absl::StrFormat("  %d failed", failed);
  if (!status_.empty()) line += "  " + status_;
  return line;
}

void Progress::Update(int64_t done, int64_t failed) {
  if (!enabled_) return;
  const auto now = std::chrono::steady_clock::now();
  const auto interval = terminal_ ? std::chrono::milliseconds(200) : std::chrono::milliseconds(10000);
  if (now - last_print_ < interval) return;
  last_print_ = now;
  if (terminal_) {
    std::fprintf(stderr, "\r%s\033[K", Line(done, failed).c_str());
  } else {
    std::fprintf(stderr, "%s\n", Line(done, failed).c_str());
  }
  std::fflush(stderr);
}

void Progress::Finish(int64_t done, int64_t failed) {
  if (!enabled_) return;
  if (terminal_) {
    std::fprintf(stderr, "\r%s\033[K\n", Line(done, failed).c_str());
  } else {
    std::fprintf(stderr, "%s\n", Line(done, failed).c_str());
  }
  std::fflush(stderr);
}

}  // namespace cli
}  // namespace scanserve
