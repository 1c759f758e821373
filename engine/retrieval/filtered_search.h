// Top-k among the stored items a predicate keeps (search filters), through Scorer::Search with
// over-fetching, for scorers that select where the scores are (Scorer::SelectsOnDevice): fetching
// a few k per query moves far less than a score per stored item, and usually holds k that pass.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "engine/common/matrix.h"
#include "engine/scoring/scorer.h"

namespace scanserve {

// The best max(4k, k + 64) per query (at most every stored item).
int64_t OverFetchCount(int64_t k, int64_t stored);

// The k best items per query among those `keep` accepts, best first, ties to the smaller key
// (what TopKPerRow over the kept columns of ScoreAll gives). nullopt when some query's fetch held
// fewer than k kept items although more items are stored: only full scores can then say, and the
// caller falls back to ScoreAll.
absl::StatusOr<std::optional<std::vector<std::vector<ScoredKey>>>> SearchFiltered(
    const Scorer& scorer, absl::Span<const ItemView> queries, int k,
    const std::function<bool(int64_t key)>& keep);

}  // namespace scanserve
