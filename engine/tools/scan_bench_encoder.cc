// scan_bench_encoder: a SCAN model's text encoder (embedding, BiGRU, l2norm) per call, as the
// server's batcher calls it: one long-lived thread, --queries random captions of
// --words_min..--words_max words in calls of each --batch size, --reps rounds; p50/p99 per call and
// captions/s, on --device=cpu|cuda|cuda:N. On the CPU once per --openmp value
// (ModelLoadOptions::cpu_openmp_threads: 1 = the default, 0 = LibTorch's intra-op threads), so
// that the table shows what running LibTorch's small ops on the calling thread alone buys.
//
//   scan_bench_encoder --model=DIR [--device=cpu] [--batch=1,4,16,64] [--queries=64] [--reps=3]
//                      [--words_min=12] [--words_max=19] [--threads=0] [--openmp=1,0] [--seed=1]
#include <algorithm>
#include <cinttypes>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "engine/common/openblas_core.h"
#include "engine/common/split_mix64.h"
#include "engine/common/thread_pool.h"
#include "engine/model/scan_model.h"
#include "engine/scoring/gemm.h"
#include "engine/tools/bench_util.h"

namespace scanserve {
namespace {

struct Flags {
  std::string model;
  EncoderDevice device;
  std::vector<int64_t> batches = {1, 4, 16, 64};
  int64_t queries = 64;
  int reps = 3;
  int64_t words_min = 12;
  int64_t words_max = 19;
  int threads = 0;
  std::vector<int64_t> openmp = {1, 0};
  uint64_t seed = 1;
};

constexpr char kFlags[] =
    "flags: --model=DIR --device=cpu|cuda|cuda:N --batch=1,4,16,64 --queries=N --reps=N "
    "--words_min=N --words_max=N --threads=N --openmp=1,0 --seed=N";

Flags ParseFlags(int argc, char** argv) {
  const bench::FlagParser cli("scan_bench_encoder", kFlags);
  Flags f;
  for (int i = 1; i < argc; ++i) {
    const auto [name, v] = cli.Split(argv[i]);
    if (name == "model") {
      f.model = v;
    } else if (name == "device") {
      int index = 0;
      if (v == "cpu") {
        f.device = EncoderDevice::Cpu();
      } else if (v == "cuda") {
        f.device = EncoderDevice::Cuda(0);
      } else if (absl::StartsWith(v, "cuda:") && absl::SimpleAtoi(v.substr(5), &index) && index >= 0) {
        f.device = EncoderDevice::Cuda(index);
      } else {
        cli.Fail(absl::StrCat("--device: cpu, cuda or cuda:N, got '", v, "'"));
      }
    } else if (name == "batch") {
      f.batches = cli.Ints(name, v, 1);
    } else if (name == "queries") {
      f.queries = cli.Int(name, v);
    } else if (name == "reps") {
      f.reps = static_cast<int>(cli.Int(name, v));
    } else if (name == "words_min") {
      f.words_min = cli.Int(name, v);
    } else if (name == "words_max") {
      f.words_max = cli.Int(name, v);
    } else if (name == "threads") {
      f.threads = static_cast<int>(cli.Int(name, v));
    } else if (name == "openmp") {
      f.openmp = cli.Ints(name, v, 0);
    } else if (name == "seed") {
      f.seed = static_cast<uint64_t>(cli.Int(name, v));
    } else {
      cli.Fail(absl::StrCat("unknown flag --", name));
    }
  }
  if (f.model.empty()) cli.Fail("--model is required");
  if (f.queries < 1 || f.reps < 1 || f.words_min < 1 || f.words_min > f.words_max || f.threads < 0) {
    cli.Fail("--queries, --reps and --words_min must be >= 1, words_min <= words_max, threads >= 0");
  }
  return f;
}

using bench::NowMs;
using bench::Percentile;

void Check(const absl::Status& st, const char* what) {
  if (!st.ok()) {
    std::fprintf(stderr, "scan_bench_encoder: %s: %s\n", what, st.ToString().c_str());
    std::exit(1);
  }
}

int Main(int argc, char** argv) {
  const Flags f = ParseFlags(argc, argv);
  const int threads = f.threads > 0 ? f.threads : ThreadPool::DefaultThreadCount();
  SetComputeThreads(threads);
  std::printf("scan_bench_encoder: %s, text encoder on %s, captions of %" PRId64 "..%" PRId64
              " words, %d threads, %s\n",
              f.model.c_str(), f.device.ToString().c_str(), f.words_min, f.words_max, threads,
              BlasDescription());
  std::printf("| %-32s | %5s | %9s | %9s | %10s |\n", "config", "batch", "p50 ms", "p99 ms",
              "captions/s");
  std::printf("|%s|-------|-----------|-----------|------------|\n", std::string(34, '-').c_str());
  // The OpenMP team only applies on the CPU.
  const std::vector<int64_t> teams = f.device.is_cuda() ? std::vector<int64_t>{1} : f.openmp;
  for (int64_t team : teams) {
    ModelLoadOptions options;
    options.num_threads = threads;
    options.device = f.device;
    options.cpu_openmp_threads = static_cast<int>(team);
    absl::StatusOr<std::unique_ptr<ScanModel>> model = ScanModel::Load(f.model, options);
    Check(model.status(), "ScanModel::Load");
    const int64_t vocab = (*model)->config().vocab_size;
    SplitMix64 rng(f.seed);
    std::vector<std::vector<int64_t>> captions(static_cast<size_t>(f.queries));
    for (auto& ids : captions) {
      ids.push_back(Vocabulary::kStart);
      const int64_t words = rng.Between(f.words_min, f.words_max);
      for (int64_t w = 0; w < words; ++w) ids.push_back(rng.Between(Vocabulary::kUnk + 1, vocab - 1));
      ids.push_back(Vocabulary::kEnd);
    }
    const std::string config =
        f.device.is_cuda() ? f.device.ToString()
                           : (team > 0 ? absl::StrCat("cpu, OpenMP team ", team)
                                       : absl::StrCat("cpu, OpenMP team ", threads, " (LibTorch's)"));
    Check((*model)->EncodeCaptions({captions[0]}).status(), "warm-up");
    for (int64_t batch : f.batches) {
      std::vector<double> call_ms;
      double total_ms = 0;
      int64_t encoded = 0;
      for (int rep = 0; rep < f.reps; ++rep) {
        for (int64_t at = 0; at < f.queries; at += batch) {
          const std::vector<std::vector<int64_t>> chunk(
              captions.begin() + at, captions.begin() + std::min(f.queries, at + batch));
          const double t0 = NowMs();
          Check((*model)->EncodeCaptions(chunk).status(), "EncodeCaptions");
          call_ms.push_back(NowMs() - t0);
          total_ms += call_ms.back();
          encoded += static_cast<int64_t>(chunk.size());
        }
      }
      std::printf("| %-32s | %5" PRId64 " | %9.1f | %9.1f | %10.1f |\n", config.c_str(), batch,
                  Percentile(call_ms, 50), Percentile(call_ms, 99), 1000.0 * encoded / total_ms);
    }
  }
  return 0;
}

}  // namespace
}  // namespace scanserve

int main(int argc, char** argv) {
  scanserve::ReexecWithBetterOpenBlasCore(argv);
  return scanserve::Main(argc, argv);
}
