// Scorer: SCAN stacked-cross-attention scoring of many queries against a stored set of items.
//
// Data conventions, shared by every backend (CPU, reference, CUDA):
//  - An item is a set of row vectors of the embedding width `dim`: an image is k region embeddings
//    (k x dim), a caption is n word embeddings (n x dim); row-major, contiguous, fp32 on input, as
//    the SCAN encoders produce them (normally l2-normalised; nothing assumes it). k and n vary per
//    item; 1 is an ordinary value.
//  - A scorer stores items of one kind (ScorerConfig::stored_kind), each under a caller's int64 key.
//    A query is an item of the other kind.
//  - score(image, caption) is SCAN's similarity under ScorerConfig::attention. It depends only on the
//    pair: which side is stored, batching, sharding and the backend never change it beyond rounding.
//  - Dense outputs are row-major (num_queries x size()), column j = the j-th key of keys().
//
// Threading: const methods may run concurrently with each other; Add/Remove need exclusive access
// (the caller serialises writers against readers).
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "engine/common/matrix.h"
#include "engine/scoring/attention_params.h"
#include "engine/scoring/cuda_pass_kernels.h"
#include "engine/scoring/cuda_query_precision.h"
#include "engine/scoring/scorer_backend.h"
#include "engine/scoring/storage_type.h"

namespace scanserve {

enum class ItemKind { kImage, kCaption };

struct ScorerConfig {
  int64_t dim = 1024;                       // embedding width
  ItemKind stored_kind = ItemKind::kImage;  // what Add() receives; queries are the other kind
  AttentionParams attention;
  StorageType storage = StorageType::kFloat32;
  int num_threads = 0;  // CPU threads for scoring; 0 = all cores
};

struct ScoredKey {
  int64_t key = 0;
  float score = 0.0f;
};

class Scorer {
 public:
  virtual ~Scorer() = default;
  Scorer(const Scorer&) = delete;
  Scorer& operator=(const Scorer&) = delete;

  const ScorerConfig& config() const { return config_; }

  // Stores items under keys; a key already stored is replaced (upsert). keys.size() == items.size(),
  // keys unique within the call, every item 1..kMaxRows rows. On error nothing is changed.
  absl::Status Add(absl::Span<const int64_t> keys, absl::Span<const ItemView> items);

  // Removes items. An unknown key is NOT_FOUND and nothing is removed.
  absl::Status Remove(absl::Span<const int64_t> keys);

  virtual int64_t size() const = 0;
  // Stored keys in column order of ScoreAll.
  virtual std::vector<int64_t> keys() const = 0;
  // Bytes held for stored items (features plus any per-item precomputation).
  virtual int64_t memory_bytes() const = 0;
  // The most memory_bytes() this scorer can reach when something other than host memory bounds
  // it (the CUDA backend: device memory free now plus what it holds, less the reserve it keeps
  // for other users of the device); -1 when the backend has no such bound.
  virtual int64_t MemoryCapacityBytes() const { return -1; }
  // The memory of the device the scorer's items live on (CUDA: cudaMemGetInfo), for operators;
  // none for host-memory backends, or when the device cannot say.
  struct DeviceMemory {
    int64_t free_bytes = 0;
    int64_t total_bytes = 0;
  };
  virtual std::optional<DeviceMemory> DeviceMemoryInfo() const { return std::nullopt; }
  // The largest k for which Search selects where the scores are (a GPU), so that it moves k
  // results per query instead of a score per stored item: callers then prefer it to ScoreAll even
  // when they must over-fetch (filters, ensembles; engine/retrieval/top_list_search.h). 0: Search
  // costs a ScoreAll.
  virtual int64_t DeviceSearchMaxK() const { return 0; }
  // OK, or why this scorer can no longer answer (the CUDA backend after a device copy failed
  // midway through a compaction): every later call fails with it; a restart reloads the store.
  virtual absl::Status Health() const { return absl::OkStatus(); }
  // Scoring passes so far per kernel, for operators: the CUDA backend's {"fused", n} and
  // {"gemm", m} (which path its passes took; the fused one falls back to the GEMM path for shapes
  // it cannot take). Empty where a backend has one kind of pass.
  virtual std::vector<std::pair<std::string, int64_t>> KernelPasses() const { return {}; }
  // What a backend that picks its kernel per pass by timing them (the CUDA backend with
  // --cuda-kernels auto) has picked, per range of stacked query rows, for operators. Empty where
  // a backend does not choose.
  struct KernelChoice {
    int64_t min_query_rows = 0;
    int64_t max_query_rows = 0;
    std::string kernel;  // the one it runs; empty while it is still timing both
    // Median wall time of a pass per kernel timed so far, seconds.
    std::vector<std::pair<std::string, double>> median_seconds;
  };
  virtual std::vector<KernelChoice> KernelChoices() const { return {}; }

  // Scores every query against every stored item: (*scores) becomes queries.size() x size().
  absl::Status ScoreAll(absl::Span<const ItemView> queries, FloatMatrix* scores) const;

  // The k best items per query, best first; ties broken by the smaller key. k >= 1; fewer are
  // returned when fewer are stored.
  absl::StatusOr<std::vector<std::vector<ScoredKey>>> Search(absl::Span<const ItemView> queries,
                                                             int k) const;

  static constexpr int64_t kMaxRows = 4096;  // per item; SCAN items are tens of rows

 protected:
  explicit Scorer(const ScorerConfig& config) : config_(config) {}

  // Implementations may assume validated arguments (sizes, rows in range, unique keys).
  virtual absl::Status AddImpl(absl::Span<const int64_t> keys, absl::Span<const ItemView> items) = 0;
  // Every key is known to be stored.
  virtual absl::Status RemoveImpl(absl::Span<const int64_t> keys) = 0;
  virtual bool Contains(int64_t key) const = 0;
  // queries non-empty, every query 1..kMaxRows rows; scores already sized queries x size().
  virtual absl::Status ScoreAllImpl(absl::Span<const ItemView> queries, FloatMatrix* scores) const = 0;
  // Default: ScoreAll then a partial sort; backends with device-side selection override it.
  virtual absl::StatusOr<std::vector<std::vector<ScoredKey>>> SearchImpl(
      absl::Span<const ItemView> queries, int k) const;

 private:
  absl::Status ValidateItems(absl::Span<const ItemView> items, const char* what) const;

  ScorerConfig config_;
};

// The best k entries of each row of `scores` (columns named by `keys`), best first, ties to the
// smaller key. Shared by Scorer::Search and the ensemble, which averages ScoreAll outputs first.
std::vector<std::vector<ScoredKey>> TopKPerRow(const FloatMatrix& scores,
                                               absl::Span<const int64_t> keys, int k);

// INVALID_ARGUMENT unless dim >= 1, num_threads >= 0, lambda_softmax is finite and, for LogSumExp
// pooling, lambda_lse is finite and > 0. Every backend's factory checks it.
absl::Status ValidateScorerConfig(const ScorerConfig& config);

// Tuning that one backend reads and the others ignore. The pass kernels never change what a score
// means; unsplit bf16 queries round the query side too (~2^-9 relative on the products).
struct ScorerTuning {
  CudaPassKernels cuda_pass_kernels = CudaPassKernels::kGemm;
  CudaQueryPrecision cuda_query_precision = CudaQueryPrecision::kBf16Split;
};

// The one place that knows which backends were compiled in.
absl::StatusOr<std::unique_ptr<Scorer>> MakeScorer(ScorerBackend backend, const ScorerConfig& config,
                                                   const ScorerTuning& tuning = {});

}  // namespace scanserve
