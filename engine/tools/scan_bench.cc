// scan_bench: text -> image SCAN scoring throughput on the CPU, against the reference-style
// baseline measured in the same run (performance.md, "How to measure").
//
// Stores --images random images (--regions x --dim, rows l2-normalised) in a CpuScorer per
// --storage (and --parallelism), scores --queries random captions (lengths uniform in
// --words_min..--words_max, or --words=AVG for AVG ± 3.5) in passes of each --batch size, and
// reports medians over --reps rounds. The baseline is the ReferenceScorer (the published code's
// two batched products, one caption per call) on --ref_queries captions spread over the rounds,
// so that every row samples the same machine load, once per --ref_blas_threads setting (0 = the
// BLAS library on --threads threads; 1 = single-threaded BLAS, which suits its thousands of small
// products better); ratios are taken against the fastest of them. Model: t2i, clipped_l2norm, LogSumExp,
// λ1 = 9, λ2 = 6 (the released Flickr30K/COCO t2i settings). --streaming_rows=0,64 makes one scorer
// per value of CpuScorerOptions::streaming_max_query_rows (0: every product on the BLAS), and the
// lines after the table say how many products each scorer streamed.
//
//   scan_bench [--images=10000] [--regions=36] [--dim=1024] [--queries=32] [--batch=1,4,16,32]
//              [--storage=fp32,bf16,fp8] [--threads=0] [--words_min=12] [--words_max=19] [--reps=3]
//              [--ref_queries=3] [--ref_blas_threads=0,1] [--parallelism=per_thread,shared]
//              [--block_rows=1024] [--streaming_rows=64] [--seed=1]
//
// --backend=cuda runs the GPU table instead (CudaScorer through MakeScorer; needs a CUDA build and
// a device): for each of --images (default 100000,1000000) stored images and each --batch
// (default 1,2,4,8,16,32,64), Search(k=10) passes over --queries (default 64) captions; p50/p99
// latency per pass, queries/s, achieved TB/s and TFLOP/s against the H200 floors of
// performance.md (4.3 TB/s, 790 TFLOP/s bf16), and the ratio to the reference-style PyTorch
// numbers quoted there (a different run, marked *), or with --ref_ms=IMAGES:STORAGE=MS,... the
// same-run baseline that scripts/gpu-check.sh measures first (tools/reference_scan_baseline.py).
// Stored images are --pool distinct random images (default 4096) repeated under distinct keys,
// so that 1M images need no 147 GB of host data; the scoring cost does not depend on the values.
//   scan_bench --backend=cuda [--images=100000,1000000] [--storage=bf16] [--batch=1,2,...,64]
//              [--queries=64] [--reps=3] [--pool=4096] [--query_precision=bf16x2|bf16]
//              [--kernels=gemm,gemm-serial,fused,fused-1,fused-s2,auto[:q-bf16|:q-bf16x2]]
//              [--ref_ms=100000:bf16=25.3,...]
//              [--product_mb=256,32 (gemm: product
//              chunk budgets to compare)]
// Kernels: gemm = cuBLAS products + the epilogue kernel, the epilogues on a second stream
// (CudaScorerOptions::pipelined_epilogue); gemm-serial = the same on one stream; fused = one
// kernel over the whole store (pass_kernels kFused), two blocks per SM where they fit; fused-1 = the
// same, one block per SM with more epilogue warps (fused_blocks_per_sm); fused-s2 = fused with two
// copy stages only (fused_max_stages 2: one k step in flight instead of up to seven); auto = the
// scorer times gemm and fused on each batch size's first passes (untimed warm-up passes here) and
// runs the faster: the row says which it picked ("auto->fused"). A kernel named with ":q-bf16" or
// ":q-bf16x2" runs with that query precision instead of --query_precision's, on the same loaded
// store (CudaScorer::set_query_precision), e.g. --kernels=gemm,auto,auto:q-bf16; each precision's
// mean top-10 overlap with fp32 storage is printed when fp32 is among --storage.
#include <algorithm>
#include <cinttypes>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include <sys/resource.h>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "engine/common/matrix.h"
#include "engine/common/split_mix64.h"
#include "engine/common/openblas_core.h"
#include "engine/common/thread_pool.h"
#include "engine/scoring/cpu_scorer.h"
#include "engine/scoring/gemm.h"
#include "engine/scoring/streaming_gemm.h"
#include "engine/scoring/reference_scorer.h"
#include "engine/scoring/scorer.h"
#include "engine/tools/bench_util.h"
#ifdef SCANSERVE_WITH_CUDA
#include "engine/scoring/cuda_scorer.h"
#endif

namespace scanserve {
namespace {

struct Flags {
  std::string backend = "cpu";  // cpu or cuda
  int64_t images = 10000;
  std::vector<int64_t> image_counts;  // --images as given (cuda: several)
  int64_t pool = 4096;
  std::string query_precision = "bf16x2";
  std::set<std::string> given;  // flags set on the command line
  int64_t regions = 36;
  int64_t dim = 1024;
  int64_t queries = 32;
  std::vector<int64_t> batches = {1, 4, 16, 32};
  std::vector<std::string> storages = {"fp32", "bf16"};
  // cuda: gemm (cuBLAS + epilogue), fused, ...; each with its query precision ("bf16x2" or
  // "bf16": --query_precision's unless the name says ":q-bf16" or ":q-bf16x2").
  std::vector<std::pair<std::string, std::string>> kernels = {{"gemm", ""}};
  // cuda, gemm kernels: product chunk budgets (MB) to compare; empty = CudaScorerOptions' default.
  // A chunk small enough to stay in L2 (H200: 50 MB) saves writing and re-reading the products
  // through HBM, for more launches.
  std::vector<int64_t> product_mb;
  // cuda: the reference-style baseline measured in this run, ms per query by (images, storage).
  std::map<std::pair<int64_t, std::string>, double> ref_ms;
  int threads = 0;
  int64_t words_min = 12;
  int64_t words_max = 19;
  int reps = 3;
  int64_t ref_queries = 3;
  int64_t block_rows = CpuScorerOptions().block_rows;
  std::vector<std::string> modes = {"per_thread"};  // CpuParallelism: per_thread, shared
  // CpuScorerOptions::streaming_max_query_rows values, one scorer each (0: GemmNT only).
  std::vector<int64_t> streaming_rows = {CpuScorerOptions().streaming_max_query_rows};
  std::vector<int64_t> ref_blas_threads = {0, 1};    // 0 = --threads
  uint64_t seed = 1;
};

constexpr char kFlags[] =
    "flags: --images=N --regions=N --dim=N --queries=N "
    "--batch=1,4,16 --storage=fp32,bf16,fp8 --threads=N --words_min=N --words_max=N "
    "--words=AVG --reps=N --ref_queries=N --ref_blas_threads=0,1 "
    "--parallelism=per_thread,shared --block_rows=N --streaming_rows=0,64 "
    "--seed=N --backend=cpu|cuda --pool=N --query_precision=bf16x2|bf16 "
    "--kernels=gemm,gemm-serial,fused,fused-1,fused-s2,auto "
    "--product_mb=256,32 --ref_ms=IMAGES:STORAGE=MS,...";

Flags ParseFlags(int argc, char** argv) {
  const bench::FlagParser cli("scan_bench", kFlags);
  Flags f;
  double words_avg = -1;
  for (int i = 1; i < argc; ++i) {
    const auto [name, v] = cli.Split(argv[i]);
    f.given.insert(name);
    if (name == "images") {
      f.image_counts = cli.Ints(name, v, 1);
      f.images = f.image_counts.front();
    } else if (name == "backend") {
      f.backend = v;
    } else if (name == "pool") {
      f.pool = cli.Int(name, v);
    } else if (name == "query_precision") {
      f.query_precision = v;
    } else if (name == "regions") {
      f.regions = cli.Int(name, v);
    } else if (name == "dim") {
      f.dim = cli.Int(name, v);
    } else if (name == "queries") {
      f.queries = cli.Int(name, v);
    } else if (name == "batch") {
      f.batches = cli.Ints(name, v, 1);
    } else if (name == "kernels") {
      f.kernels.clear();
      for (absl::string_view entry : absl::StrSplit(v, ',')) {
        const std::vector<std::string> parts = absl::StrSplit(entry, ':');
        const std::string& b = parts[0];
        if (b != "gemm" && b != "gemm-serial" && b != "fused" && b != "fused-1" &&
            b != "fused-s2" && b != "auto") {
          cli.Fail("--kernels: gemm, gemm-serial, fused, fused-1, fused-s2 and/or auto");
        }
        std::string precision;  // "": --query_precision's
        if (parts.size() == 2 && absl::StartsWith(parts[1], "q-") &&
            ParseCudaQueryPrecision(parts[1].substr(2)).ok()) {
          precision = parts[1].substr(2);
        } else if (parts.size() != 1) {
          cli.Fail(absl::StrCat("--kernels: KERNEL or KERNEL:q-bf16 or KERNEL:q-bf16x2, got '", entry, "'"));
        }
        f.kernels.emplace_back(b, precision);
      }
    } else if (name == "ref_ms") {
      for (absl::string_view entry : absl::StrSplit(v, ',')) {
        // IMAGES:STORAGE=MS
        const std::vector<std::string> kv = absl::StrSplit(entry, '=');
        const std::vector<std::string> key =
            kv.empty() ? std::vector<std::string>{} : absl::StrSplit(kv[0], ':');
        double ms = 0;
        if (kv.size() != 2 || key.size() != 2 || !absl::SimpleAtod(kv[1], &ms) || ms <= 0) {
          cli.Fail(absl::StrCat("--ref_ms: expected IMAGES:STORAGE=MS entries, got '", entry, "'"));
        }
        f.ref_ms[{cli.Int(name, key[0]), key[1]}] = ms;
      }
    } else if (name == "product_mb") {
      f.product_mb = cli.Ints(name, v, 1);
    } else if (name == "storage") {
      f.storages.clear();
      for (absl::string_view s : absl::StrSplit(v, ',')) f.storages.emplace_back(s);
    } else if (name == "threads") {
      f.threads = static_cast<int>(cli.Int(name, v));
    } else if (name == "words_min") {
      f.words_min = cli.Int(name, v);
    } else if (name == "words_max") {
      f.words_max = cli.Int(name, v);
    } else if (name == "words") {
      if (!absl::SimpleAtod(v, &words_avg) || words_avg < 1) cli.Fail("--words: expected a number >= 1");
    } else if (name == "reps") {
      f.reps = static_cast<int>(cli.Int(name, v));
    } else if (name == "ref_queries") {
      f.ref_queries = cli.Int(name, v);
    } else if (name == "ref_blas_threads") {
      f.ref_blas_threads = cli.Ints(name, v, 0);
    } else if (name == "parallelism") {
      f.modes.clear();
      for (absl::string_view m : absl::StrSplit(v, ',')) f.modes.emplace_back(m);
    } else if (name == "block_rows") {
      f.block_rows = cli.Int(name, v);
    } else if (name == "streaming_rows") {
      f.streaming_rows = cli.Ints(name, v, 0);
    } else if (name == "seed") {
      f.seed = static_cast<uint64_t>(cli.Int(name, v));
    } else {
      cli.Fail(absl::StrCat("unknown flag --", name));
    }
  }
  if (words_avg > 0) {  // an average: lengths drawn uniformly from avg ± 3.5 (15.5 -> 12..19)
    f.words_min = std::max<int64_t>(1, static_cast<int64_t>(std::ceil(words_avg - 3.5)));
    f.words_max = std::max<int64_t>(f.words_min, static_cast<int64_t>(std::floor(words_avg + 3.5)));
  }
  if (f.backend != "cpu" && f.backend != "cuda") {
    cli.Fail(absl::StrCat("--backend: cpu or cuda, got '", f.backend, "'"));
  }
  if (f.backend == "cuda") {  // GPU defaults (performance.md's table), unless given
    if (!f.given.count("images")) f.image_counts = {100000, 1000000};
    if (!f.given.count("batch")) f.batches = {1, 2, 4, 8, 16, 32, 64};
    if (!f.given.count("queries")) f.queries = 64;
    if (!f.given.count("storage")) f.storages = {"bf16"};
    if (!ParseCudaQueryPrecision(f.query_precision).ok()) {
      cli.Fail("--query_precision: bf16x2 or bf16");
    }
    for (auto& [kernel, precision] : f.kernels) {
      if (precision.empty()) precision = f.query_precision;
    }
    f.images = *std::max_element(f.image_counts.begin(), f.image_counts.end());
  } else if (f.image_counts.size() > 1) {
    cli.Fail("--images: one value for the cpu backend");
  }
  if (f.backend != "cuda" && !f.product_mb.empty()) cli.Fail("--product_mb: cuda backend only");
  if (f.backend != "cuda" && !f.ref_ms.empty()) {
    cli.Fail("--ref_ms: cuda backend only (the cpu table measures its baseline itself)");
  }

  if (f.pool < 1) cli.Fail("--pool must be >= 1");
  if (f.images < 1 || f.regions < 1 || f.dim < 1 || f.queries < 1 || f.reps < 1 ||
      f.words_min < 1 || f.words_max < f.words_min || f.ref_queries < 0 || f.batches.empty()) {
    cli.Fail("sizes must be >= 1 (ref_queries >= 0) and words_min <= words_max");
  }
  for (const std::string& s : f.storages) {
    absl::StatusOr<StorageType> storage = ParseStorageType(s);
    if (!storage.ok()) cli.Fail(std::string(storage.status().message()));
  }
  for (const std::string& m : f.modes) {
    if (m != "per_thread" && m != "shared") {
      cli.Fail(absl::StrCat("--parallelism: per_thread or shared, got '", m, "'"));
    }
  }
  return f;
}


using bench::NowMs;
using bench::Percentile;

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

// Mean over queries of |top(a) ∩ top(b)| / |top(a)|: how far a rounded storage moves rankings.
double MeanTopOverlap(const std::vector<std::vector<ScoredKey>>& a,
                      const std::vector<std::vector<ScoredKey>>& b) {
  double overlap = 0;
  for (size_t j = 0; j < a.size(); ++j) {
    std::set<int64_t> keys;
    for (const ScoredKey& sk : a[j]) keys.insert(sk.key);
    int hit = 0;
    for (const ScoredKey& sk : b[j]) hit += keys.count(sk.key) ? 1 : 0;
    overlap += a[j].empty() ? 1.0 : static_cast<double>(hit) / a[j].size();
  }
  return a.empty() ? 1.0 : overlap / a.size();
}

void Check(const absl::Status& st, const char* what) {
  if (!st.ok()) {
    std::fprintf(stderr, "scan_bench: %s: %s\n", what, st.ToString().c_str());
    std::exit(1);
  }
}

// CPU time of the whole process (all threads), in ms.
double CpuMs() {
  rusage u;
  getrusage(RUSAGE_SELF, &u);
  return (u.ru_utime.tv_sec + u.ru_stime.tv_sec) * 1e3 +
         (u.ru_utime.tv_usec + u.ru_stime.tv_usec) / 1e3;
}

// One table row: a scorer and how many queries share a pass.
struct Row {
  std::string config;
  const Scorer* scorer = nullptr;
  int64_t batch = 0;
  double flop_per_query = 0;  // in the form this path computes
  double bytes_per_pass = 0;  // stored bytes read per pass
  std::vector<double> wall_ms, cpu_ms;  // per query, one entry per round
};

void PrintRow(const Row& r, int64_t images, double ref_wall, double ref_cpu) {
  const double wall = Median(r.wall_ms);
  const double cpu = Median(r.cpu_ms);
  auto ratio = [](double ref, double x) {
    return ref > 0 ? absl::StrCat(absl::SixDigits(ref / x), "x") : std::string("-");
  };
  std::printf("| %-40s | %6" PRId64 " | %5" PRId64 " | %9.1f | %9.1f | %9.2f | %7.1f | %6.2f | %8s | %8s |\n",
              r.config.c_str(), images, r.batch, wall, cpu, 1000.0 / wall,
              r.flop_per_query / (wall * 1e6), r.bytes_per_pass / r.batch / (wall * 1e6),
              ratio(ref_wall, wall).c_str(), ratio(ref_cpu, cpu).c_str());
}

// ---------------------------------------------------------------------------------------------
// --backend=cuda

int RunCuda(const Flags& f) {
#ifndef SCANSERVE_WITH_CUDA
  std::fprintf(stderr, "scan_bench: --backend=cuda: this build has no CUDA backend "
                       "(configure with -DSCANSERVE_WITH_CUDA=ON)\n");
  return 1;
#else
  std::string why;
  if (!CudaScorer::DeviceAvailable(&why)) {
    std::fprintf(stderr, "scan_bench: --backend=cuda: no CUDA device: %s\n", why.c_str());
    return 1;
  }
  // H200 ceilings of performance.md.
  constexpr double kPeakBytesPerS = 4.3e12;
  constexpr double kPeakBf16FlopPerS = 790e12;
  constexpr int kTopK = 10;

  AttentionParams attention;  // t2i, clipped_l2norm, LogSumExp, λ1 = 9, λ2 = 6
  SplitMix64 rng(f.seed);
  const int64_t pool = std::min(f.pool, f.images);
  const double t_gen = NowMs();
  std::vector<float> images(static_cast<size_t>(pool * f.regions * f.dim));
  FillUnitRows(rng, images.data(), pool * f.regions, f.dim);
  std::vector<FloatMatrix> captions;
  int64_t total_words = 0;
  for (int64_t j = 0; j < f.queries; ++j) {
    FloatMatrix c(rng.Between(f.words_min, f.words_max), f.dim);
    FillUnitRows(rng, c.data.data(), c.rows, f.dim);
    total_words += c.rows;
    captions.push_back(std::move(c));
  }
  std::vector<ItemView> caption_views;
  for (const FloatMatrix& c : captions) caption_views.emplace_back(c);
  std::vector<ItemView> pool_views(pool);
  for (int64_t i = 0; i < pool; ++i) {
    pool_views[i] = ItemView(images.data() + i * f.regions * f.dim, f.regions);
  }
  const double words_avg = static_cast<double>(total_words) / f.queries;
  const double k = static_cast<double>(f.regions);
  std::printf("scan_bench --backend=cuda: text->image, t2i clipped_l2norm LogSumExp l1=9 l2=6, "
              "Search k=%d\n", kTopK);
  std::printf("  %" PRId64 " distinct random images (repeated under distinct keys) x %" PRId64
              " regions x d=%" PRId64 ", %" PRId64 " captions of %" PRId64 "..%" PRId64
              " words (mean %.2f), query precision %s unless a kernel names one\n",
              pool, f.regions, f.dim, f.queries, f.words_min, f.words_max, words_avg,
              f.query_precision.c_str());
  std::printf("  data generated in %.0f ms\n", NowMs() - t_gen);

  // The reference-style PyTorch baseline of performance.md (H200, PyTorch 2.11, one caption per
  // call), ms per query: a different run, so only indicative, where --ref_ms has no same-run one.
  auto spec_ref_ms = [](int64_t images, const std::string& storage) -> double {
    if (images == 100000) return storage == "fp32" ? 34.0 : 26.0;
    if (images == 1000000 && storage == "bf16") return 257.0;
    return 0.0;
  };

  struct CudaRow {
    std::string config;
    int64_t images = 0, batch = 0;
    double p50 = 0, p99 = 0, ms_per_query = 0, qps = 0, tflops = 0, tbps = 0, floor_ms = 0;
    double ref_ms = 0;
    bool ref_same_run = false;
  };
  std::vector<CudaRow> table;
  auto print_row = [](const CudaRow& r, const char* indent) {
    const std::string vs =
        r.ref_ms > 0 ? absl::StrCat(absl::SixDigits(r.ref_ms / r.ms_per_query), "x",
                                    r.ref_same_run ? "" : "*")
                     : "-";
    std::printf("%s| %-36s | %8" PRId64 " | %5" PRId64
                " | %9.2f | %9.2f | %9.3f | %9.1f | %8.1f | %6.2f | %10.2f | %6.1f%% | %9s |\n",
                indent, r.config.c_str(), r.images, r.batch, r.p50, r.p99, r.ms_per_query, r.qps,
                r.tflops, r.tbps, r.floor_ms, 100.0 * r.floor_ms / r.p50, vs.c_str());
  };
  std::vector<int64_t> counts = f.image_counts;
  std::sort(counts.begin(), counts.end());
  // Top-10 lists at the smallest store per storage and query precision ("fp32", "bf16 q-bf16x2",
  // ...), for the agreement of the narrow ones with fp32.
  std::map<std::string, std::vector<std::vector<ScoredKey>>> top_lists;
  const bool compare_with_fp32 =
      std::find(f.storages.begin(), f.storages.end(), "fp32") != f.storages.end();
  auto precision_label = [](const std::string& storage, const std::string& precision) {
    return storage == "fp32" ? std::string("q-fp32") : absl::StrCat("q-", precision);
  };

  for (const std::string& storage : f.storages) {
    for (int64_t n : counts) {
      ScorerConfig config;
      config.dim = f.dim;
      config.stored_kind = ItemKind::kImage;
      config.attention = attention;
      config.storage = *ParseStorageType(storage);
      CudaScorerOptions options;
      options.query_precision = *ParseCudaQueryPrecision(f.query_precision);
      auto created = CudaScorer::Create(config, options);
      if (!created.ok()) {
        std::printf("  cuda %s, %" PRId64 " images: skipped: %s\n", storage.c_str(), n,
                    created.status().ToString().c_str());
        continue;
      }
      std::unique_ptr<CudaScorer> scorer = std::move(created).value();
      const double t_add = NowMs();
      absl::Status st;
      std::vector<int64_t> keys;
      for (int64_t i0 = 0; i0 < n && st.ok(); i0 += pool) {
        const int64_t cnt = std::min(pool, n - i0);
        keys.resize(cnt);
        for (int64_t i = 0; i < cnt; ++i) keys[i] = i0 + i;
        st = scorer->Add(keys, absl::MakeConstSpan(pool_views).first(cnt));
      }
      if (!st.ok()) {
        std::printf("  cuda %s, %" PRId64 " images: skipped: Add: %s\n", storage.c_str(), n,
                    st.ToString().c_str());
        continue;
      }
      const double add_ms = NowMs() - t_add;
      const double bytes = static_cast<double>(scorer->memory_bytes());
      std::printf("  cuda %s on %s: %" PRId64 " images stored in %.1f s (%.0f images/s), "
                  "%.2f GB (features + norms + Gram)\n",
                  storage.c_str(), scorer->DeviceDescription().c_str(), n, add_ms / 1e3,
                  1000.0 * n / add_ms, bytes / 1e9);
      // Warm-up (cuBLAS heuristics, buffers at their largest).
      Check(scorer->Search(absl::MakeConstSpan(caption_views)
                               .first(std::min<int64_t>(f.queries, *std::max_element(
                                                                        f.batches.begin(),
                                                                        f.batches.end()))),
                           kTopK)
                .status(),
            "cuda Search (warm-up)");
      const double gram_flop_per_query =
          n * (2.0 * k * words_avg * f.dim + 2.0 * words_avg * k * k);
      // (kernel, query precision, product chunk MB; 0 = the scorer's default) in table order.
      struct Variant {
        std::string kernel, precision;
        int64_t product_mb = 0;
      };
      std::vector<Variant> variants;
      for (const auto& [kernel, precision] : f.kernels) {
        // fp32 storage has one query precision (fp32): the first of each kernel only.
        if (storage == "fp32" &&
            std::any_of(variants.begin(), variants.end(),
                        [&kernel = kernel](const Variant& v) { return v.kernel == kernel; })) {
          continue;
        }
        if ((kernel == "gemm" || kernel == "gemm-serial") && !f.product_mb.empty()) {
          for (int64_t mb : f.product_mb) variants.push_back({kernel, precision, mb});
        } else {
          variants.push_back({kernel, precision, 0});
        }
      }
      const int64_t default_product_bytes = scorer->options().max_product_bytes;
      for (const Variant& variant : variants) {
        const std::string& kernel = variant.kernel;
        const int64_t product_mb = variant.product_mb;
        scorer->set_query_precision(*ParseCudaQueryPrecision(variant.precision));
        const std::string query_label = precision_label(storage, variant.precision);
        const bool fused = absl::StartsWith(kernel, "fused");
        const bool chosen = kernel == "auto";
        scorer->set_pass_kernels(fused    ? CudaPassKernels::kFused
                                 : chosen ? CudaPassKernels::kAuto
                                          : CudaPassKernels::kGemm);
        scorer->set_fused_blocks_per_sm(kernel == "fused-1" ? 1 : 2);
        scorer->set_fused_max_stages(kernel == "fused-s2" ? 2
                                                          : CudaScorerOptions{}.fused_max_stages);
        scorer->set_pipelined_epilogue(kernel != "gemm-serial");
        scorer->set_max_product_bytes(product_mb > 0 ? (product_mb << 20) : default_product_bytes);
        const std::string lists_key =
            storage == "fp32" ? storage : absl::StrCat(storage, " ", query_label);
        if (n == counts.front() && compare_with_fp32 && !top_lists.count(lists_key)) {
          std::vector<std::vector<ScoredKey>>& lists = top_lists[lists_key];
          for (int64_t j = 0; j < f.queries; ++j) {
            auto one = scorer->Search({caption_views[j]}, kTopK);
            Check(one.status(), "cuda Search");
            lists.push_back((*one)[0]);
          }
        }
        const CudaScorer::PassCounts before = scorer->pass_counts();
        if (fused) {  // warm-up of the fused path
          Check(scorer->Search(absl::MakeConstSpan(caption_views).first(1), kTopK).status(),
                "cuda Search (fused warm-up)");
        }
        for (int64_t batch0 : f.batches) {
          const int64_t batch = std::min(batch0, f.queries);
          // One round: every caption once, in passes of `batch`; each pass's time to *pass_ms.
          auto round_of_passes = [&](std::vector<double>* pass_ms) {
            for (int64_t j = 0; j < f.queries; j += batch) {
              const int64_t cnt = std::min(batch, f.queries - j);
              const double t0 = NowMs();
              Check(scorer->Search(absl::MakeConstSpan(caption_views).subspan(j, cnt), kTopK)
                        .status(),
                    "cuda Search");
              if (pass_ms != nullptr) pass_ms->push_back(NowMs() - t0);
            }
          };
          if (chosen) {
            // Untimed rounds of the same passes first, until the chooser has timed both kernels
            // in every bucket of query rows they reach (captions of 12-19 rows fall in two).
            const int max_rounds = 2 * (1 + PassKernelChooserOptions{}.timed_passes);
            for (int round = 0; round < max_rounds; ++round) {
              round_of_passes(nullptr);
              bool decided = true;
              for (const PassKernelChooser::Bucket& b : scorer->pass_kernel_choices()) {
                decided = decided && b.decided();
              }
              if (decided) break;
            }
          }
          const CudaScorer::PassCounts batch_before = scorer->pass_counts();
          std::vector<double> pass_ms, round_ms;
          for (int round = 0; round < f.reps; ++round) {
            const double r0 = NowMs();
            round_of_passes(&pass_ms);
            round_ms.push_back(NowMs() - r0);
          }
          CudaRow r;
          // "fused" only when every pass took the fused kernel (it falls back to the GEMM path
          // when the shapes do not fit it).
          const CudaScorer::PassCounts now = scorer->pass_counts();
          const bool all_fused = now.gemm == before.gemm && now.fused > before.fused;
          // A fused pass says how many blocks shared an SM, their epilogue warps and the k steps
          // staged at once: "fused 2x4 s8".
          const CudaScorer::FusedLaunch launch = scorer->fused_launch();
          // auto: the kernel of (nearly) every measured pass; re-probes of the other are rare.
          std::string auto_label;
          if (chosen) {
            const int64_t by_fused = now.fused - batch_before.fused;
            const int64_t by_gemm = now.gemm - batch_before.gemm;
            auto_label = by_fused >= 9 * by_gemm   ? " auto->fused"
                         : by_gemm >= 9 * by_fused ? " auto->gemm"
                                                   : " auto mixed";
          }
          r.config = absl::StrCat("cuda ", storage, " ", query_label,
                                  fused ? (all_fused ? absl::StrCat(" fused ", launch.blocks_per_sm,
                                                                    "x", launch.epilogue_warps,
                                                                    " s", launch.stages)
                                                     : std::string(" fused->gemm"))
                                  : kernel == "gemm-serial" ? std::string(" serial")
                                                            : auto_label,
                                  product_mb > 0 ? absl::StrCat(" ", product_mb, "MB") : "");
          r.images = n;
          r.batch = batch;
          r.p50 = Percentile(pass_ms, 50);
          r.p99 = Percentile(pass_ms, 99);
          r.ms_per_query = Median(round_ms) / f.queries;
          r.qps = 1000.0 / r.ms_per_query;
          r.tflops = gram_flop_per_query * r.qps / 1e12;
          const double passes_per_s = r.qps / batch;
          r.tbps = bytes * passes_per_s / 1e12;
          // Floor per pass: read the store once, or the products on the tensor cores.
          const double floor_s = std::max(bytes / kPeakBytesPerS,
                                          batch * gram_flop_per_query / kPeakBf16FlopPerS);
          r.floor_ms = floor_s * 1e3;
          if (const auto it = f.ref_ms.find({n, storage}); it != f.ref_ms.end()) {
            r.ref_ms = it->second;
            r.ref_same_run = true;
          } else {
            r.ref_ms = spec_ref_ms(n, storage);
          }
          table.push_back(r);
          // Each row as soon as it is measured, so that a run cut short keeps what it measured.
          print_row(r, "  ");
          std::fflush(stdout);
        }
      }
    }
  }

  // "cuda bf16 q-bf16x2 auto->fused 256MB" is the longest name.
  std::printf("\n| %-36s | %8s | %5s | %9s | %9s | %9s | %9s | %8s | %6s | %10s | %7s | %9s |\n",
              "config", "images", "batch", "p50 ms", "p99 ms", "ms/query", "queries/s", "TFLOP/s",
              "TB/s", "floor ms", "% floor", "vs ref");
  std::printf("|%s|%s|%s|%s|%s|%s|%s|%s|%s|%s|%s|%s|\n", std::string(38, '-').c_str(),
              std::string(10, '-').c_str(), std::string(7, '-').c_str(),
              std::string(11, '-').c_str(), std::string(11, '-').c_str(),
              std::string(11, '-').c_str(), std::string(11, '-').c_str(),
              std::string(10, '-').c_str(), std::string(8, '-').c_str(),
              std::string(12, '-').c_str(), std::string(9, '-').c_str(),
              std::string(11, '-').c_str());
  for (const CudaRow& r : table) print_row(r, "");
  std::printf(
      "\np50/p99 ms: latency of one Search(k=%d) pass of `batch` captions (all rounds). ms/query, "
      "queries/s: median round over %" PRId64 " captions.\nTFLOP/s: Gram-form FLOPs 2kn(d+k) per "
      "pair (bf16x2 queries run twice the GEMM FLOPs). TB/s: stored bytes read per pass.\nfloor: "
      "max(stored bytes / 4.3 TB/s, batch x FLOPs / 790 TFLOP/s); %% floor = floor / p50.\nvs ref: "
      "the reference-style PyTorch per-query time / ms/query: measured in this run "
      "(--ref_ms, tools/reference_scan_baseline.py), or, marked *, performance.md's H200 numbers "
      "(100k fp32 34 ms, 100k bf16 26 ms, 1M bf16 257 ms; a different run).\n",
      kTopK, f.queries);
  for (const auto& [key, ms] : f.ref_ms) {
    std::printf("same-run reference-style baseline: %" PRId64 " images, %s: %.1f ms/query\n",
                key.first, key.second.c_str(), ms);
  }
  for (const auto& [narrow, lists] : top_lists) {
    if (narrow == "fp32" || !top_lists.count("fp32")) continue;
    const auto& a = top_lists["fp32"];
    std::printf("cuda %s vs fp32 storage, %" PRId64 " images, %zu captions: mean top-10 overlap "
                "%.3f%s\n",
                narrow.c_str(), counts.front(), a.size(), MeanTopOverlap(a, lists),
                pool < counts.front()
                    ? absl::StrCat(" (images repeat every ", pool, " keys, so ties are common)").c_str()
                    : "");
  }
  return 0;
#endif
}

int Main(int argc, char** argv) {
  const Flags f = ParseFlags(argc, argv);
  if (f.backend == "cuda") return RunCuda(f);
  const int threads = f.threads > 0 ? f.threads : ThreadPool::DefaultThreadCount();
  SetComputeThreads(threads);

  AttentionParams attention;  // t2i, clipped_l2norm, LogSumExp, λ1 = 9, λ2 = 6
  attention.cross_attn = CrossAttention::kTextToImage;
  attention.raw_feature_norm = RawFeatureNorm::kClippedL2Norm;
  attention.pooling = Pooling::kLogSumExp;
  attention.lambda_softmax = 9.0f;
  attention.lambda_lse = 6.0f;

  // Data.
  SplitMix64 rng(f.seed);
  const double t_gen = NowMs();
  std::vector<float> images(static_cast<size_t>(f.images * f.regions * f.dim));
  FillUnitRows(rng, images.data(), f.images * f.regions, f.dim);
  std::vector<FloatMatrix> captions;
  int64_t total_words = 0;
  const int64_t num_captions = std::max(f.queries, f.ref_queries);
  for (int64_t j = 0; j < num_captions; ++j) {
    FloatMatrix c(rng.Between(f.words_min, f.words_max), f.dim);
    FillUnitRows(rng, c.data.data(), c.rows, f.dim);
    if (j < f.queries) total_words += c.rows;
    captions.push_back(std::move(c));
  }
  std::vector<int64_t> keys(f.images);
  std::vector<ItemView> image_views(f.images);
  for (int64_t i = 0; i < f.images; ++i) {
    keys[i] = i;
    image_views[i] = ItemView(images.data() + i * f.regions * f.dim, f.regions);
  }
  std::vector<ItemView> caption_views;
  for (const FloatMatrix& c : captions) caption_views.emplace_back(c);
  const double words_avg = static_cast<double>(total_words) / f.queries;

  std::printf("scan_bench: text->image, t2i clipped_l2norm LogSumExp l1=9 l2=6\n");
  std::printf("  %" PRId64 " images x %" PRId64 " regions x d=%" PRId64 ", %" PRId64
              " captions of %" PRId64 "..%" PRId64 " words (mean %.2f), %d threads\n  %s\n",
              f.images, f.regions, f.dim, f.queries, f.words_min, f.words_max, words_avg, threads,
              BlasDescription());
  {
    const StreamingGemmIsa isa = BestStreamingGemmIsa();
    auto form = [&](StreamedRowType type, int64_t n) {
      return std::string(StreamingGemmFormName(ChooseStreamingGemmForm(isa, type, n)));
    };
    std::printf("  streaming kernels (--streaming_rows): %s; form for 16 | 64 query rows: fp32 "
                "%s | %s, bf16 %s | %s\n",
                std::string(StreamingGemmIsaName(isa)).c_str(),
                form(StreamedRowType::kFloat32, 16).c_str(),
                form(StreamedRowType::kFloat32, 64).c_str(),
                form(StreamedRowType::kBFloat16, 16).c_str(),
                form(StreamedRowType::kBFloat16, 64).c_str());
  }
  std::printf("  data generated in %.0f ms\n", NowMs() - t_gen);

  // Gram-form FLOPs per query (scan-model.md "Cheaper exact forms"): S = V Eᵀ (2 k n d) plus the
  // quadratic form |a|² = wᵀ G w for every word (2 n k²). Reference form: S and W·V (4 k n d).
  const double k = static_cast<double>(f.regions);
  const double gram_flop = f.images * (2.0 * k * words_avg * f.dim + 2.0 * words_avg * k * k);
  const double ref_flop = f.images * 4.0 * k * words_avg * f.dim;

  ScorerConfig config;
  config.dim = f.dim;
  config.stored_kind = ItemKind::kImage;
  config.attention = attention;
  config.num_threads = threads;

  // Scorers: one CpuScorer per (storage, parallelism, streaming rows), then the reference.
  std::vector<std::unique_ptr<Scorer>> scorers;
  std::vector<std::string> scorer_storage;
  std::vector<Row> rows;
  for (const std::string& storage : f.storages) {
    for (const std::string& mode : f.modes) {
      for (int64_t streaming_rows : f.streaming_rows) {
        ScorerConfig c = config;
        c.storage = *ParseStorageType(storage);
        CpuScorerOptions options;
        options.block_rows = f.block_rows;
        options.parallelism =
            mode == "shared" ? CpuParallelism::kSharedGemm : CpuParallelism::kPerThreadUnits;
        options.streaming_max_query_rows = streaming_rows;
        auto scorer = CpuScorer::Create(c, options);
        Check(scorer.status(), "CpuScorer::Create");
        std::string label = absl::StrCat("cpu gram-form ", storage, " ", mode);
        if (f.streaming_rows.size() > 1) {
          absl::StrAppend(&label, streaming_rows > 0 ? absl::StrCat(" stream<=", streaming_rows)
                                                     : std::string(" blas"));
        }
        const double t_add = NowMs();
        Check((*scorer)->Add(keys, image_views), "Add");
        const double add_ms = NowMs() - t_add;
        const double bytes = static_cast<double>((*scorer)->memory_bytes());
        std::printf("  %s: stored in %.0f ms (%.0f images/s), %.1f MB (features + Gram)\n",
                    label.c_str(), add_ms, 1000.0 * f.images / add_ms, bytes / 1e6);
        for (int64_t batch : f.batches) {
          Row r;
          r.config = label;
          r.scorer = scorer->get();
          r.batch = std::min(batch, f.queries);
          r.flop_per_query = gram_flop;
          r.bytes_per_pass = bytes;
          rows.push_back(r);
        }
        scorers.push_back(std::move(scorer).value());
        scorer_storage.push_back(storage);
      }
    }
  }
  std::unique_ptr<Scorer> ref;
  std::vector<Row> ref_rows;  // one per --ref_blas_threads value
  if (f.ref_queries > 0) {
    auto created = ReferenceScorer::Create(config);
    Check(created.status(), "ReferenceScorer::Create");
    ref = std::move(created).value();
    Check(ref->Add(keys, image_views), "reference Add");
    for (int64_t blas : f.ref_blas_threads) {
      Row r;
      r.config = absl::StrCat("reference-style fp32, BLAS x", blas < 1 ? threads : blas);
      r.scorer = ref.get();
      r.batch = blas;  // reused below as the BLAS thread setting; printed as 1
      r.flop_per_query = ref_flop;
      r.bytes_per_pass = static_cast<double>(f.images * f.regions * f.dim * 4);
      ref_rows.push_back(r);
    }
  }

  // Rounds: every configuration once per round, and the reference captions spread over the
  // rounds, so that on a shared machine every row samples the same load.
  FloatMatrix ref_scores(f.ref_queries, f.images);
  std::printf("  %d rounds:", f.reps);
  for (int round = 0; round < f.reps; ++round) {
    for (Row& r : ref_rows) {
      SetBlasThreads(static_cast<int>(r.batch));
      for (int64_t j = round; j < f.ref_queries; j += f.reps) {
        FloatMatrix one;
        const double t0 = NowMs(), c0 = CpuMs();
        Check(ref->ScoreAll({caption_views[j]}, &one), "reference ScoreAll");
        r.wall_ms.push_back(NowMs() - t0);
        r.cpu_ms.push_back(CpuMs() - c0);
        std::copy(one.data.begin(), one.data.end(), ref_scores.row(j));
      }
      SetBlasThreads(0);
    }
    for (Row& r : rows) {
      FloatMatrix scores;
      const double t0 = NowMs(), c0 = CpuMs();
      for (int64_t j = 0; j < f.queries; j += r.batch) {
        const int64_t n = std::min(r.batch, f.queries - j);
        Check(r.scorer->ScoreAll(absl::MakeConstSpan(caption_views).subspan(j, n), &scores),
              "ScoreAll");
      }
      r.wall_ms.push_back((NowMs() - t0) / f.queries);
      r.cpu_ms.push_back((CpuMs() - c0) / f.queries);
    }
    std::printf(" %d", round + 1);
    std::fflush(stdout);
  }
  std::printf("\n");

  double ref_wall = 0, ref_cpu = 0;  // the fastest reference setting
  for (Row& r : ref_rows) {
    r.batch = 1;
    ref_wall = ref_wall == 0 ? Median(r.wall_ms) : std::min(ref_wall, Median(r.wall_ms));
    ref_cpu = ref_cpu == 0 ? Median(r.cpu_ms) : std::min(ref_cpu, Median(r.cpu_ms));
  }
  std::printf("\n| %-40s | %6s | %5s | %9s | %9s | %9s | %7s | %6s | %8s | %8s |\n", "config",
              "images", "batch", "ms/query", "cpu-ms/q", "queries/s", "GFLOP/s", "GB/s", "vs ref",
              "cpu vs ref");
  std::printf("|%s|%s|%s|%s|%s|%s|%s|%s|%s|%s|\n", std::string(42, '-').c_str(),
              std::string(8, '-').c_str(), std::string(7, '-').c_str(),
              std::string(11, '-').c_str(), std::string(11, '-').c_str(),
              std::string(11, '-').c_str(), std::string(9, '-').c_str(),
              std::string(8, '-').c_str(), std::string(10, '-').c_str(),
              std::string(10, '-').c_str());
  for (const Row& r : ref_rows) PrintRow(r, f.images, ref_wall, ref_cpu);
  for (const Row& r : rows) PrintRow(r, f.images, ref_wall, ref_cpu);
  std::printf(
      "\nms/query: median over %d rounds of the wall time of a pass over the queries / queries "
      "(reference: %" PRId64 " captions, one per call; ratios against the fastest reference row)."
      "\ncpu-ms/q: process CPU time (all threads) "
      "per query, which shared cores do not inflate.\nGFLOP/s: the form each path computes, Gram "
      "2kn(d+k), reference 4knd per pair. GB/s: stored bytes read per query.\n",
      f.reps, f.ref_queries);

  // Which kernel took each CPU scorer's region-word products (CpuScorerOptions::
  // streaming_max_query_rows, --streaming_rows).
  std::set<const Scorer*> counted;
  for (const Row& r : rows) {
    const auto* cpu = dynamic_cast<const CpuScorer*>(r.scorer);
    if (cpu == nullptr || !counted.insert(cpu).second) continue;
    const CpuScorer::PassCounts counts = cpu->pass_counts();
    std::printf("%s: %" PRId64 " (block, query group) products streamed, %" PRId64
                " on the BLAS, over all its batches\n",
                r.config.c_str(), counts.streamed, counts.blas);
  }

  // Agreement: cpu fp32 against the reference on its captions, bf16 and fp8 against fp32 on all.
  std::map<std::string, FloatMatrix> all_scores;
  for (size_t i = 0; i < scorers.size(); ++i) {
    if (all_scores.count(scorer_storage[i])) continue;
    Check(scorers[i]->ScoreAll(absl::MakeConstSpan(caption_views).first(f.queries),
                               &all_scores[scorer_storage[i]]),
          "ScoreAll");
  }
  if (ref && all_scores.count("fp32")) {
    double max_err = 0;
    const FloatMatrix& cpu = all_scores["fp32"];
    for (int64_t j = 0; j < std::min(f.ref_queries, f.queries); ++j) {
      for (int64_t i = 0; i < f.images; ++i) {
        const double y = ref_scores.at(j, i);
        max_err = std::max(max_err, std::abs(cpu.at(j, i) - y) / std::max(std::abs(y), 1.0));
      }
    }
    std::printf("cpu fp32 vs reference on %" PRId64 " captions: max |diff| / max(|ref|, 1) = %.3g\n",
                std::min(f.ref_queries, f.queries), max_err);
  }
  for (const char* narrow : {"bf16", "fp8"}) {
    if (!all_scores.count("fp32") || !all_scores.count(narrow)) continue;
    const FloatMatrix& exact = all_scores["fp32"];
    const FloatMatrix& rounded = all_scores[narrow];
    double max_err = 0;
    for (size_t i = 0; i < exact.data.size(); ++i) {
      max_err = std::max<double>(max_err, std::abs(rounded.data[i] - exact.data[i]));
    }
    std::printf("%s vs fp32 storage on %" PRId64 " captions: mean top-10 overlap %.3f, max |diff| %.3g\n",
                narrow, f.queries,
                MeanTopOverlap(TopKPerRow(exact, keys, 10), TopKPerRow(rounded, keys, 10)), max_err);
  }
  return 0;
}

}  // namespace
}  // namespace scanserve

int main(int argc, char** argv) {
  scanserve::ReexecWithBetterOpenBlasCore(argv);
  return scanserve::Main(argc, argv);
}
