#include "engine/retrieval/filtered_search.h"

#include <algorithm>
#include <utility>

namespace scanserve {

int64_t OverFetchCount(int64_t k, int64_t stored) {
  return std::max<int64_t>(1, std::min(stored, std::max(4 * k, k + 64)));
}

absl::StatusOr<std::optional<std::vector<std::vector<ScoredKey>>>> SearchFiltered(
    const Scorer& scorer, absl::Span<const ItemView> queries, int k,
    const std::function<bool(int64_t key)>& keep) {
  const int64_t stored = scorer.size();
  const int64_t fetch = OverFetchCount(k, stored);
  absl::StatusOr<std::vector<std::vector<ScoredKey>>> found =
      scorer.Search(queries, static_cast<int>(fetch));
  if (!found.ok()) return found.status();
  for (std::vector<ScoredKey>& row : *found) {
    std::vector<ScoredKey> kept;
    for (const ScoredKey& scored : row) {
      if (static_cast<int64_t>(kept.size()) == k) break;
      if (keep(scored.key)) kept.push_back(scored);
    }
    // Fewer than k among the best `fetch`: more may pass further down, unless nothing is left.
    if (static_cast<int64_t>(kept.size()) < k && fetch < stored) return std::nullopt;
    row = std::move(kept);
  }
  return std::optional<std::vector<std::vector<ScoredKey>>>(*std::move(found));
}

}  // namespace scanserve
