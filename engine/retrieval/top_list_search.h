// Exact top-k searches answered from each scorer's own top lists (Scorer::Search), for scorers that
// select where the scores are (Scorer::DeviceSearchMaxK() > 0, a GPU): a few k results per query
// and model leave the device instead of a score per stored item.
//
// Two searches need more than one model's best k: a filter (the best k that pass may lie further
// down) and an ensemble (the best mean of several models' scores, engine/retrieval/model_mean.h).
// Both are decided with bounds. An item missing from model m's list scores at most that list's
// last score, and the mean only grows with each model's score, so every item not known under all
// models has an upper bound on its mean; once the k-th best fully known candidate beats every
// such bound, nothing else can enter the top k. Where it does not (a rare filter, models that
// disagree, a tie exactly at a bound), the caller ranks that query from full scores.
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

// scorers[m] holds model m's items (every scorer the same keys) and answers queries[m] (the same
// queries as model m encodes them). keep: the items a filter passes; empty = every item.
struct TopListSearch {
  std::vector<const Scorer*> scorers;
  std::vector<absl::Span<const ItemView>> queries;
  int k = 1;
  std::function<bool(int64_t key)> keep;
  // How many each list holds (the scorers' DeviceSearchMaxK(): as deep as they select), >= k;
  // at most every stored item.
  int64_t fetch = 1;
};

// Per query, the k best items by ModelMean among those `keep` passes, best first, ties to the
// smaller key: what TopKPerRow over the mean, filtered ScoreAll gives, bit for bit. nullopt for a
// query the lists could not decide.
absl::StatusOr<std::vector<std::optional<std::vector<ScoredKey>>>> SearchTopLists(
    const TopListSearch& search);

// Ranks the queries given `query_indices` from full scores.
using FullRanking = std::function<absl::StatusOr<std::vector<std::vector<ScoredKey>>>(
    absl::Span<const int> query_indices)>;

// SearchTopLists, then rank_in_full for the queries it left undecided (not called when none).
absl::StatusOr<std::vector<std::vector<ScoredKey>>> RankFromTopLists(
    const TopListSearch& search, const FullRanking& rank_in_full);

}  // namespace scanserve
