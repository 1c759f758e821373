// `scanctl bench`: closed-loop load against a running server, end to end through gRPC. For each
// concurrency level, that many clients (each on its own connection) send searches back to back,
// cycling through the given captions (text->image) or stored image ids (image->text), for a warm-up
// and then a measured period; the level reports calls, errors, queries/s and the latency
// distribution as the clients saw it. Concurrency 1 measures a lone query's latency; higher levels
// let the server's dynamic batcher merge concurrent searches.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "client/connection.h"
#include "scanserve/v1/scanserve.pb.h"

namespace scanserve {
namespace cli {

struct BenchOptions {
  std::vector<std::string> captions;   // text->image queries, or
  std::vector<std::string> image_ids;  // image->text queries (stored images)
  std::vector<int> concurrency = {1};  // one measured level per entry, in order
  double warmup_s = 1.0;               // per level, not measured
  double duration_s = 10.0;            // measured, per level
  int64_t max_calls = 0;               // per level: stop the level after this many calls (0 = by time)
  int queries_per_call = 1;
  int top_k = 10;
  v1::Filter filter;
};

struct BenchLevel {
  int concurrency = 0;
  int64_t calls = 0;   // measured calls that completed, OK or not
  int64_t errors = 0;  // of those, failed
  int64_t queries = 0; // queries answered by the OK calls
  double seconds = 0;  // measured wall time
  std::vector<double> latency_ms;  // of the OK calls, sorted
  std::map<std::string, int64_t> error_codes;  // code name -> count
  std::string first_error;                     // "CODE: message"

  double QueriesPerSecond() const { return seconds > 0 ? static_cast<double>(queries) / seconds : 0; }
  double CallsPerSecond() const { return seconds > 0 ? static_cast<double>(calls - errors) / seconds : 0; }
  // Nearest-rank percentile of the OK calls' latencies (p in (0, 100]); 0 without any.
  double PercentileMs(double p) const;
};

// Runs every level; connections are made from `connection`'s options, one per client (an error
// only when those options cannot make one: unreadable TLS files).
absl::StatusOr<std::vector<BenchLevel>> RunBench(const ConnectionOptions& connection, const BenchOptions& options);

// Prints the table (or, with json, one JSON document) and returns the exit code: 0 when every
// measured call succeeded, 1 otherwise (4 when every call failed UNAVAILABLE).
int ReportBench(const BenchOptions& options, const std::vector<BenchLevel>& levels, bool json);

}  // namespace cli
}  // namespace scanserve
