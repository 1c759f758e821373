#include "client/bench.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <limits>
#include <memory>
#include <thread>

#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "client/exit_codes.h"
#include "client/output.h"

namespace scanserve {
namespace cli {
namespace {

using Clock = std::chrono::steady_clock;

// What one client saw during a level's measured period.
struct ClientTally {
  std::vector<double> latency_ms;
  int64_t calls = 0;
  int64_t errors = 0;
  std::map<std::string, int64_t> error_codes;
  std::string first_error;
  Clock::time_point last_end{};
};

// One search call of queries_per_call queries, starting at query `next` of the cycle.
grpc::Status Call(Connection& connection, const BenchOptions& options, size_t* next) {
  const bool text = !options.captions.empty();
  const size_t n = text ? options.captions.size() : options.image_ids.size();
  std::unique_ptr<grpc::ClientContext> context = connection.NewContext();
  if (text) {
    v1::SearchImagesRequest request;
    for (int q = 0; q < options.queries_per_call; ++q) request.add_queries(options.captions[(*next)++ % n]);
    request.set_top_k(options.top_k);
    *request.mutable_filter() = options.filter;
    v1::SearchImagesResponse response;
    return connection.scan().SearchImages(context.get(), request, &response);
  }
  v1::SearchCaptionsRequest request;
  for (int q = 0; q < options.queries_per_call; ++q) {
    request.add_queries()->set_image_id(options.image_ids[(*next)++ % n]);
  }
  request.set_top_k(options.top_k);
  *request.mutable_filter() = options.filter;
  v1::SearchCaptionsResponse response;
  return connection.scan().SearchCaptions(context.get(), request, &response);
}

void RunClient(Connection& connection, const BenchOptions& options, size_t first_query,
               Clock::time_point measure_begin, Clock::time_point measure_end,
               std::atomic<int64_t>* measured_calls_started, ClientTally* tally) {
  size_t next = first_query;
  for (;;) {
    const Clock::time_point start = Clock::now();
    if (start >= measure_end) return;
    const bool measured = start >= measure_begin;
    if (measured && options.max_calls > 0 && measured_calls_started->fetch_add(1) >= options.max_calls) return;
    const grpc::Status status = Call(connection, options, &next);
    const Clock::time_point end = Clock::now();
    if (!measured) continue;
    ++tally->calls;
    tally->last_end = std::max(tally->last_end, end);
    if (status.ok()) {
      tally->latency_ms.push_back(std::chrono::duration<double, std::milli>(end - start).count());
      continue;
    }
    ++tally->errors;
    ++tally->error_codes[StatusCodeName(status.error_code())];
    if (tally->first_error.empty()) {
      tally->first_error = absl::StrCat(StatusCodeName(status.error_code()), ": ", status.error_message());
    }
  }
}

}  // namespace

double BenchLevel::PercentileMs(double p) const {
  if (latency_ms.empty()) return 0;
  const double rank = std::ceil(p / 100.0 * static_cast<double>(latency_ms.size()));
  const size_t index = static_cast<size_t>(std::clamp(rank, 1.0, static_cast<double>(latency_ms.size()))) - 1;
  return latency_ms[index];
}

absl::StatusOr<std::vector<BenchLevel>> RunBench(const ConnectionOptions& connection_options,
                                                 const BenchOptions& options) {
  ConnectionOptions own = connection_options;
  own.dedicated_connection = true;
  const int max_clients = *std::max_element(options.concurrency.begin(), options.concurrency.end());
  // Made once and reused by every level (a level of N clients uses the first N), and connected
  // before any level starts: no measured call pays for connecting, and a connection attempt that
  // fails once is retried rather than failing a client's calls until gRPC's backoff ends.
  std::vector<std::unique_ptr<Connection>> connections;
  for (int i = 0; i < max_clients; ++i) {
    absl::StatusOr<std::unique_ptr<Connection>> made = Connection::Create(own);
    if (!made.ok()) return made.status();
    connections.push_back(*std::move(made));
  }
  for (std::unique_ptr<Connection>& connection : connections) {
    if (absl::Status connected = connection->WaitConnected(own.timeout_s); !connected.ok()) return connected;
  }
  const size_t num_queries = options.captions.empty() ? options.image_ids.size() : options.captions.size();
  const auto seconds = [](double s) { return std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(s)); };

  std::vector<BenchLevel> levels;
  for (int concurrency : options.concurrency) {
    const Clock::time_point measure_begin = Clock::now() + seconds(options.warmup_s);
    const Clock::time_point measure_end =
        options.max_calls > 0 ? Clock::time_point::max() : measure_begin + seconds(options.duration_s);
    std::atomic<int64_t> measured_calls_started{0};
    std::vector<ClientTally> tallies(static_cast<size_t>(concurrency));
    std::vector<std::thread> clients;
    for (int c = 0; c < concurrency; ++c) {
      // Clients start at different places in the query cycle, so concurrent calls differ.
      const size_t first_query = (static_cast<size_t>(c) * 7919) % num_queries;
      clients.emplace_back(RunClient, std::ref(*connections[static_cast<size_t>(c)]), std::cref(options), first_query,
                           measure_begin, measure_end, &measured_calls_started, &tallies[static_cast<size_t>(c)]);
    }
    for (std::thread& client : clients) client.join();

    BenchLevel level;
    level.concurrency = concurrency;
    Clock::time_point last_end = measure_begin;
    for (ClientTally& tally : tallies) {
      level.calls += tally.calls;
      level.errors += tally.errors;
      level.latency_ms.insert(level.latency_ms.end(), tally.latency_ms.begin(), tally.latency_ms.end());
      for (const auto& [code, count] : tally.error_codes) level.error_codes[code] += count;
      if (level.first_error.empty()) level.first_error = tally.first_error;
      last_end = std::max(last_end, tally.last_end);
    }
    std::sort(level.latency_ms.begin(), level.latency_ms.end());
    level.queries = static_cast<int64_t>(level.latency_ms.size()) * options.queries_per_call;
    level.seconds = std::chrono::duration<double>(last_end - measure_begin).count();
    levels.push_back(std::move(level));
  }
  return levels;
}

int ReportBench(const BenchOptions& options, const std::vector<BenchLevel>& levels, bool json) {
  const bool text = !options.captions.empty();
  const char* direction = text ? "text_to_image" : "image_to_text";
  int exit_code = kExitOk;
  bool all_unavailable = !levels.empty();
  for (const BenchLevel& level : levels) {
    if (level.errors > 0) {
      exit_code = kExitError;
      std::string codes;
      for (const auto& [code, count] : level.error_codes) absl::StrAppend(&codes, codes.empty() ? "" : ", ", code, " x", count);
      std::fprintf(stderr, "scanctl: bench: concurrency %d: %lld of %lld calls failed (%s); first: %s\n",
                   level.concurrency, static_cast<long long>(level.errors), static_cast<long long>(level.calls),
                   codes.c_str(), level.first_error.c_str());
    }
    const auto unavailable = level.error_codes.find("UNAVAILABLE");
    if (level.calls == 0 || unavailable == level.error_codes.end() || unavailable->second != level.calls) {
      all_unavailable = false;
    }
  }
  if (all_unavailable) exit_code = kExitUnavailable;

  if (json) {
    nlohmann::json doc;
    doc["direction"] = direction;
    doc["queries_per_call"] = options.queries_per_call;
    doc["top_k"] = options.top_k;
    doc["warmup_s"] = options.warmup_s;
    doc["levels"] = nlohmann::json::array();
    for (const BenchLevel& level : levels) {
      double mean = 0;
      for (double ms : level.latency_ms) mean += ms;
      if (!level.latency_ms.empty()) mean /= static_cast<double>(level.latency_ms.size());
      doc["levels"].push_back({{"concurrency", level.concurrency},
                               {"calls", level.calls},
                               {"errors", level.errors},
                               {"error_codes", level.error_codes},
                               {"seconds", level.seconds},
                               {"queries_per_second", level.QueriesPerSecond()},
                               {"calls_per_second", level.CallsPerSecond()},
                               {"mean_ms", mean},
                               {"p50_ms", level.PercentileMs(50)},
                               {"p90_ms", level.PercentileMs(90)},
                               {"p99_ms", level.PercentileMs(99)},
                               {"max_ms", level.PercentileMs(100)}});
    }
    std::printf("%s\n", doc.dump().c_str());
    return exit_code;
  }
  std::printf("%s, %d quer%s per call, top-%d, %.1f s warm-up per level; latency as the clients saw it\n",
              text ? "text -> image" : "image -> text", options.queries_per_call,
              options.queries_per_call == 1 ? "y" : "ies", options.top_k, options.warmup_s);
  Table table({"concurrency", "calls", "errors", "seconds", "queries/s", "p50 ms", "p90 ms", "p99 ms", "max ms"});
  for (const BenchLevel& level : levels) {
    table.AddRow({absl::StrCat(level.concurrency), absl::StrCat(level.calls), absl::StrCat(level.errors),
                  absl::StrFormat("%.1f", level.seconds), absl::StrFormat("%.1f", level.QueriesPerSecond()),
                  absl::StrFormat("%.2f", level.PercentileMs(50)), absl::StrFormat("%.2f", level.PercentileMs(90)),
                  absl::StrFormat("%.2f", level.PercentileMs(99)), absl::StrFormat("%.2f", level.PercentileMs(100))});
  }
  table.Print(stdout);
  return exit_code;
}

}  // namespace cli
}  // namespace scanserve
