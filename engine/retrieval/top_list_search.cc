#include "engine/retrieval/top_list_search.h"

#include <algorithm>
#include <climits>
#include <cmath>
#include <limits>
#include <utility>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "engine/common/status_macros.h"
#include "engine/retrieval/model_mean.h"

namespace scanserve {
namespace {

constexpr float kMinusInfinity = -std::numeric_limits<float>::infinity();

// One query's top k from its lists (one per model, best first; complete[m]: list m holds every
// stored item), or nullopt when an item outside them, or known under only some models, might
// still rank among the k.
std::optional<std::vector<ScoredKey>> Decide(absl::Span<const std::vector<ScoredKey>* const> lists,
                                             const std::vector<bool>& complete, int k,
                                             const std::function<bool(int64_t)>& keep) {
  const size_t models = lists.size();
  // What an item missing from list m can at most score under model m.
  std::vector<float> ceiling(models, kMinusInfinity);
  bool unseen = true;  // items in no list may exist: no list is complete
  for (size_t m = 0; m < models; ++m) {
    if (complete[m]) {
      unseen = false;
    } else {
      if (lists[m]->empty()) return std::nullopt;
      ceiling[m] = lists[m]->back().score;
    }
  }
  absl::flat_hash_map<int64_t, size_t> slot_of_key;
  std::vector<int64_t> keys;
  std::vector<float> scores;         // keys.size() x models
  std::vector<uint8_t> seen;         // keys.size() x models
  std::vector<size_t> models_seen;  // per key
  for (size_t m = 0; m < models; ++m) {
    for (const ScoredKey& entry : *lists[m]) {
      if (std::isnan(entry.score)) return std::nullopt;  // the full ranking orders NaN
      auto [it, inserted] = slot_of_key.try_emplace(entry.key, keys.size());
      if (inserted) {
        keys.push_back(entry.key);
        scores.resize(scores.size() + models, 0.0f);
        seen.resize(seen.size() + models, 0);
        models_seen.push_back(0);
      }
      const size_t slot = it->second;
      scores[slot * models + m] = entry.score;
      seen[slot * models + m] = 1;
      ++models_seen[slot];
    }
  }
  std::vector<ScoredKey> exact;
  bool open = unseen;  // some item that passes is not fully known
  float bound = unseen ? ModelMean(ceiling) : kMinusInfinity;
  std::vector<float> filled(models);
  for (size_t slot = 0; slot < keys.size(); ++slot) {
    if (keep && !keep(keys[slot])) continue;
    const float* known = &scores[slot * models];
    if (models_seen[slot] == models) {
      exact.push_back(ScoredKey{keys[slot], ModelMean(absl::MakeConstSpan(known, models))});
      continue;
    }
    for (size_t m = 0; m < models; ++m) filled[m] = seen[slot * models + m] ? known[m] : ceiling[m];
    open = true;
    bound = std::max(bound, ModelMean(filled));
  }
  std::sort(exact.begin(), exact.end(), [](const ScoredKey& a, const ScoredKey& b) {
    return a.score != b.score ? a.score > b.score : a.key < b.key;
  });
  if (exact.size() >= static_cast<size_t>(k)) {
    exact.resize(static_cast<size_t>(k));
    // One model: its list is a prefix of the full ranking, so whatever it holds precedes every
    // item it left out. Several: only a strict bound excludes a tie the smaller key would win.
    if (!open || models == 1 || exact.back().score > bound) return exact;
    return std::nullopt;
  }
  if (!open) return exact;  // fewer than k pass at all
  return std::nullopt;
}

}  // namespace

absl::StatusOr<std::vector<std::optional<std::vector<ScoredKey>>>> SearchTopLists(
    const TopListSearch& search) {
  const size_t models = search.scorers.size();
  if (models == 0 || search.queries.size() != models || search.k < 1 ||
      search.fetch < search.k) {
    return absl::InvalidArgumentError(
        absl::StrCat("SearchTopLists: ", models, " scorers, ", search.queries.size(),
                     " query lists, k = ", search.k, ", fetch = ", search.fetch));
  }
  const size_t num_queries = search.queries[0].size();
  std::vector<int64_t> stored(models);
  for (size_t m = 0; m < models; ++m) {
    if (search.queries[m].size() != num_queries) {
      return absl::InvalidArgumentError("SearchTopLists: the models' query lists differ in length");
    }
    stored[m] = search.scorers[m]->size();
  }
  const int64_t most_stored = *std::max_element(stored.begin(), stored.end());

  // One fetch, as deep as the scorers select: on a GPU the scoring pass costs the same for any k,
  // and a second, deeper pass would cost as much as the first.
  const int64_t fetch = std::max<int64_t>(1, std::min(search.fetch, most_stored));
  const int fetch_k = static_cast<int>(std::min<int64_t>(fetch, INT_MAX));
  std::vector<std::vector<std::vector<ScoredKey>>> lists(models);  // [model][query]
  for (size_t m = 0; m < models; ++m) {
    SCANSERVE_ASSIGN_OR_RETURN(lists[m], search.scorers[m]->Search(search.queries[m], fetch_k));
    if (lists[m].size() != num_queries) {
      return absl::InternalError(absl::StrCat("model ", m, "'s scorer answered ", lists[m].size(),
                                              " of ", num_queries, " queries"));
    }
  }
  std::vector<std::optional<std::vector<ScoredKey>>> found(num_queries);
  std::vector<const std::vector<ScoredKey>*> query_lists(models);
  std::vector<bool> complete(models);
  for (size_t j = 0; j < num_queries; ++j) {
    for (size_t m = 0; m < models; ++m) {
      const std::vector<ScoredKey>& list = lists[m][j];
      query_lists[m] = &list;
      const int64_t size = static_cast<int64_t>(list.size());
      complete[m] = size < fetch || size >= stored[m];
    }
    found[j] = Decide(query_lists, complete, search.k, search.keep);
  }
  return found;
}

absl::StatusOr<std::vector<std::vector<ScoredKey>>> RankFromTopLists(
    const TopListSearch& search, const FullRanking& rank_in_full) {
  SCANSERVE_ASSIGN_OR_RETURN(std::vector<std::optional<std::vector<ScoredKey>>> found,
                             SearchTopLists(search));
  std::vector<std::vector<ScoredKey>> ranked(found.size());
  std::vector<int> undecided;
  for (size_t j = 0; j < found.size(); ++j) {
    if (found[j].has_value()) {
      ranked[j] = *std::move(found[j]);
    } else {
      undecided.push_back(static_cast<int>(j));
    }
  }
  if (undecided.empty()) return ranked;
  SCANSERVE_ASSIGN_OR_RETURN(std::vector<std::vector<ScoredKey>> full, rank_in_full(undecided));
  if (full.size() != undecided.size()) {
    return absl::InternalError(absl::StrCat("the full ranking answered ", full.size(), " of ",
                                            undecided.size(), " queries"));
  }
  for (size_t i = 0; i < undecided.size(); ++i) {
    ranked[static_cast<size_t>(undecided[i])] = std::move(full[i]);
  }
  return ranked;
}

}  // namespace scanserve
