// What the benchmark tools (scan_bench, scan_bench_encoder) share: wall time, percentiles and
// their --name=value flag parsing.
#pragma once

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"

namespace scanserve {
namespace bench {

inline double NowMs() {
  return std::chrono::duration<double, std::milli>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

// The nearest-rank p-th percentile (0 < p <= 100) of a non-empty sample.
inline double Percentile(std::vector<double> v, double p) {
  std::sort(v.begin(), v.end());
  const size_t i = static_cast<size_t>(std::ceil(p / 100.0 * v.size()));
  return v[std::min(v.size() - 1, i == 0 ? 0 : i - 1)];
}

// One tool's --name=value flags. A bad flag ends the run before any work, with exit status 2 and
// the reason and the tool's flag list on stderr: a benchmark that silently ran with a default
// would print a table for a configuration nobody asked for.
class FlagParser {
 public:
  // `flags` is the usage line, "flags: --a=N --b=X,...".
  FlagParser(const char* tool, const char* flags) : tool_(tool), flags_(flags) {}

  [[noreturn]] void Fail(const std::string& why) const {
    std::fprintf(stderr, "%s: %s\n%s\n", tool_, why.c_str(), flags_);
    std::exit(2);
  }

  // The name (without "--") and value of one argument; --help, -h and anything that is not
  // --name=value end the run.
  std::pair<std::string, std::string> Split(const std::string& arg) const {
    if (arg == "--help" || arg == "-h") Fail("help");
    const size_t eq = arg.find('=');
    if (arg.rfind("--", 0) != 0 || eq == std::string::npos) {
      Fail(absl::StrCat("expected --name=value, got '", arg, "'"));
    }
    return {arg.substr(2, eq - 2), arg.substr(eq + 1)};
  }

  int64_t Int(const std::string& name, absl::string_view v) const {
    int64_t x;
    if (!absl::SimpleAtoi(v, &x)) Fail(absl::StrCat("--", name, ": not an integer: '", v, "'"));
    return x;
  }

  // A comma-separated list of integers, each >= min.
  std::vector<int64_t> Ints(const std::string& name, absl::string_view v, int64_t min) const {
    std::vector<int64_t> out;
    for (absl::string_view part : absl::StrSplit(v, ',')) {
      out.push_back(Int(name, part));
      if (out.back() < min) Fail(absl::StrCat("--", name, ": values >= ", min));
    }
    return out;
  }

 private:
  const char* tool_;
  const char* flags_;
};

}  // namespace bench
}  // namespace scanserve
