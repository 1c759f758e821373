#include "engine/scoring/scorer.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "engine/common/status_macros.h"

namespace scanserve {
namespace {

absl::string_view KindName(ItemKind kind) { return kind == ItemKind::kImage ? "image" : "caption"; }

// Duplicate keys within one call are a caller error.
absl::Status CheckUniqueKeys(absl::Span<const int64_t> keys, const char* what) {
  absl::flat_hash_set<int64_t> seen;
  seen.reserve(keys.size());
  for (size_t i = 0; i < keys.size(); ++i) {
    if (!seen.insert(keys[i]).second) {
      return absl::InvalidArgumentError(
          absl::StrCat(what, ": key ", keys[i], " appears more than once (at index ", i, ")"));
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status ValidateScorerConfig(const ScorerConfig& config) {
  if (config.dim < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("ScorerConfig: dim must be >= 1, got ", config.dim));
  }
  if (config.num_threads < 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "ScorerConfig: num_threads must be >= 0 (0 = all cores), got ", config.num_threads));
  }
  const AttentionParams& a = config.attention;
  if (!std::isfinite(a.lambda_softmax)) {
    return absl::InvalidArgumentError(
        absl::StrCat("ScorerConfig: lambda_softmax must be finite, got ", a.lambda_softmax));
  }
  if (a.pooling == Pooling::kLogSumExp && !(std::isfinite(a.lambda_lse) && a.lambda_lse > 0.0f)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "ScorerConfig: lambda_lse must be finite and > 0 for LogSumExp pooling, got ",
        a.lambda_lse));
  }
  return absl::OkStatus();
}

absl::Status Scorer::ValidateItems(absl::Span<const ItemView> items, const char* what) const {
  for (size_t i = 0; i < items.size(); ++i) {
    const ItemView& it = items[i];
    if (it.data == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat(what, ": item ", i, " has null data"));
    }
    if (it.rows < 1 || it.rows > kMaxRows) {
      return absl::InvalidArgumentError(absl::StrCat(what, ": item ", i, " has ", it.rows,
                                                     " rows; expected 1..", kMaxRows));
    }
  }
  return absl::OkStatus();
}

absl::Status Scorer::Add(absl::Span<const int64_t> keys, absl::Span<const ItemView> items) {
  if (keys.size() != items.size()) {
    return absl::InvalidArgumentError(absl::StrCat("Add: ", keys.size(), " keys but ", items.size(),
                                                   " items (", KindName(config_.stored_kind),
                                                   "s)"));
  }
  SCANSERVE_RETURN_IF_ERROR(ValidateItems(items, "Add"));
  SCANSERVE_RETURN_IF_ERROR(CheckUniqueKeys(keys, "Add"));
  if (keys.empty()) return absl::OkStatus();
  return AddImpl(keys, items);
}

absl::Status Scorer::Remove(absl::Span<const int64_t> keys) {
  // A broken backend (Health) knows its keys no better than its contents: it refuses first.
  SCANSERVE_RETURN_IF_ERROR(Health());
  SCANSERVE_RETURN_IF_ERROR(CheckUniqueKeys(keys, "Remove"));
  for (int64_t key : keys) {
    if (!Contains(key)) {
      return absl::NotFoundError(
          absl::StrCat("Remove: key ", key, " is not stored; nothing was removed"));
    }
  }
  if (keys.empty()) return absl::OkStatus();
  return RemoveImpl(keys);
}

absl::Status Scorer::ScoreAll(absl::Span<const ItemView> queries, FloatMatrix* scores) const {
  if (scores == nullptr) return absl::InvalidArgumentError("ScoreAll: scores is null");
  if (queries.empty()) return absl::InvalidArgumentError("ScoreAll: no queries");
  SCANSERVE_RETURN_IF_ERROR(ValidateItems(queries, "ScoreAll query"));
  const int64_t n = size();
  *scores = FloatMatrix(static_cast<int64_t>(queries.size()), n);
  if (n == 0) return absl::OkStatus();
  return ScoreAllImpl(queries, scores);
}

absl::StatusOr<std::vector<std::vector<ScoredKey>>> Scorer::Search(
    absl::Span<const ItemView> queries, int k) const {
  if (queries.empty()) return absl::InvalidArgumentError("Search: no queries");
  if (k < 1) return absl::InvalidArgumentError(absl::StrCat("Search: k must be >= 1, got ", k));
  SCANSERVE_RETURN_IF_ERROR(ValidateItems(queries, "Search query"));
  if (size() == 0) return std::vector<std::vector<ScoredKey>>(queries.size());
  return SearchImpl(queries, k);
}

absl::StatusOr<std::vector<std::vector<ScoredKey>>> Scorer::SearchImpl(
    absl::Span<const ItemView> queries, int k) const {
  FloatMatrix scores;
  SCANSERVE_RETURN_IF_ERROR(ScoreAll(queries, &scores));
  const std::vector<int64_t> column_keys = keys();
  return TopKPerRow(scores, column_keys, k);
}

std::vector<std::vector<ScoredKey>> TopKPerRow(const FloatMatrix& scores,
                                               absl::Span<const int64_t> keys, int k) {
  SCANSERVE_CHECK(static_cast<int64_t>(keys.size()) == scores.cols);
  std::vector<std::vector<ScoredKey>> out(static_cast<size_t>(scores.rows));
  const int64_t take = std::min<int64_t>(std::max(k, 0), scores.cols);
  if (take == 0) return out;
  std::vector<int64_t> order(static_cast<size_t>(scores.cols));
  for (int64_t r = 0; r < scores.rows; ++r) {
    const float* row = scores.row(r);
    // Higher score first, then the smaller key; NaN ranks below every number. A strict total
    // order (keys are unique), so the result does not depend on the algorithm.
    auto better = [&](int64_t a, int64_t b) {
      const float sa = row[a];
      const float sb = row[b];
      const bool na = std::isnan(sa);
      const bool nb = std::isnan(sb);
      if (na != nb) return nb;
      if (!na && sa != sb) return sa > sb;
      return keys[a] < keys[b];
    };
    std::iota(order.begin(), order.end(), int64_t{0});
    if (take < scores.cols) {
      std::nth_element(order.begin(), order.begin() + (take - 1), order.end(), better);
    }
    std::sort(order.begin(), order.begin() + take, better);
    std::vector<ScoredKey>& dst = out[static_cast<size_t>(r)];
    dst.reserve(static_cast<size_t>(take));
    for (int64_t i = 0; i < take; ++i) dst.push_back(ScoredKey{keys[order[i]], row[order[i]]});
  }
  return out;
}

}  // namespace scanserve
