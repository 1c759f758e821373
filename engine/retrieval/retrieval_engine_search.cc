// ScanRetrievalEngine: both search directions, ranking and explanations.
#include "engine/retrieval/scan_retrieval_engine.h"

#include <algorithm>
#include <array>
#include <chrono>
#include <limits>
#include <numeric>
#include <shared_mutex>
#include <type_traits>
#include <utility>

#include "engine/retrieval/model_mean.h"
#include "engine/retrieval/synthetic_items.h"
#include "engine/retrieval/top_list_search.h"
#include "engine/scoring/attention_explain.h"
#include "engine/text/tokenizer.h"

namespace scanserve {
namespace retrieval_internal {

// ---- Searching --------------------------------------------------------------------------------

namespace {

// The ranked keys as hits, with what the catalog knows of each item (a caption also its text).
template <typename Hit>
std::vector<std::vector<Hit>> HitsOf(const std::vector<std::vector<ScoredKey>>& top,
                                     const Catalog& catalog) {
  std::vector<std::vector<Hit>> hits(top.size());
  for (size_t q = 0; q < top.size(); ++q) {
    hits[q].reserve(top[q].size());
    for (const ScoredKey& scored : top[q]) {
      const CatalogEntry& entry = catalog.Get(scored.key);
      Hit hit;
      hit.id = entry.id;
      hit.score = scored.score;
      if constexpr (std::is_same_v<Hit, CaptionHit>) hit.text = entry.text;
      hit.collection = entry.collection;
      hit.metadata = entry.metadata;
      hits[q].push_back(std::move(hit));
    }
  }
  return hits;
}

}  // namespace

absl::Status ScanRetrievalEngine::ValidateParams(const SearchParams& params,
                                                 size_t num_queries) const {
  if (num_queries == 0) return absl::InvalidArgumentError("no queries");
  if (params.top_k < 1 || params.top_k > options_.max_top_k) {
    return absl::InvalidArgumentError(
        absl::StrCat("top_k must be in 1..", options_.max_top_k, ", got ", params.top_k));
  }
  if (params.explain && params.top_k > RetrievalLimits::kMaxExplainTopK) {
    return absl::InvalidArgumentError(absl::StrCat("explain covers at most the top ", RetrievalLimits::kMaxExplainTopK,
                                                   " hits per query, got top_k ", params.top_k));
  }
  return ValidateCollectionAndMetadata(params.filter.collection, params.filter.metadata);
}

absl::Status ScanRetrievalEngine::ScoreAveraged(const std::vector<std::vector<ItemView>>& queries,
                                                ScorerOf side, FloatMatrix* scores,
                                                std::vector<int64_t>* keys) const {
  *keys = (models_[0].*side)->keys();
  SCANSERVE_RETURN_IF_ERROR((models_[0].*side)->ScoreAll(queries[0], scores));
  FloatMatrix other;
  for (size_t m = 1; m < num_models(); ++m) {
    const Scorer& scorer = *(models_[m].*side);
    SCANSERVE_RETURN_IF_ERROR(scorer.ScoreAll(queries[m], &other));
    // Every scorer of a kind receives the same Add/Remove sequence, so the column orders agree;
    // map through the keys anyway rather than rely on a backend's ordering.
    std::vector<int64_t> column(keys->size());
    const std::vector<int64_t> other_keys = scorer.keys();
    if (other_keys == *keys) {
      for (size_t j = 0; j < column.size(); ++j) column[j] = static_cast<int64_t>(j);
    } else {
      absl::flat_hash_map<int64_t, int64_t> column_of_key;
      for (size_t j = 0; j < other_keys.size(); ++j)
        column_of_key[other_keys[j]] = static_cast<int64_t>(j);
      for (size_t j = 0; j < column.size(); ++j) {
        auto it = column_of_key.find((*keys)[j]);
        if (it == column_of_key.end())
          return absl::InternalError("the models' scorers hold different items");
        column[j] = it->second;
      }
    }
    for (int64_t q = 0; q < scores->rows; ++q) {
      float* row = scores->row(q);
      const float* add = other.row(q);
      // Summed through double, as ComputeSimilarities does, so the ensemble equals it exactly.
      for (size_t j = 0; j < column.size(); ++j) row[j] = AddModelScore(row[j], add[column[j]]);
    }
  }
  const int models = static_cast<int>(num_models());
  for (float& s : scores->data) s = FinishModelMean(s, models);
  return absl::OkStatus();
}

absl::StatusOr<std::vector<std::vector<ScoredKey>>> ScanRetrievalEngine::Rank(
    const std::vector<std::vector<ItemView>>& queries, ScorerOf side, const Catalog& items,
    const SearchParams& params) const {
  const SearchFilter& filter = params.filter;
  const bool filtered = !filter.collection.empty() || !filter.metadata.empty();
  const size_t num_queries = queries[0].size();
  if (num_models() == 1 && !filtered) {
    absl::StatusOr<std::vector<std::vector<ScoredKey>>> found =
        (models_[0].*side)->Search(queries[0], params.top_k);
    if (found.ok()) CountRanked(side, kScorerTopK, num_queries);
    return found;
  }
  size_t ranked_in_full = 0;
  auto rank_in_full = [&](absl::Span<const int> query_indices)
      -> absl::StatusOr<std::vector<std::vector<ScoredKey>>> {
    ranked_in_full += query_indices.size();
    std::vector<std::vector<ItemView>> subset(num_models());
    for (size_t m = 0; m < num_models(); ++m) {
      if (query_indices.size() == queries[m].size()) {
        subset[m] = queries[m];
        continue;
      }
      for (int j : query_indices) subset[m].push_back(queries[m][static_cast<size_t>(j)]);
    }
    FloatMatrix scores;
    std::vector<int64_t> keys;
    SCANSERVE_RETURN_IF_ERROR(ScoreAveraged(subset, side, &scores, &keys));
    CountRanked(side, kFullScores, query_indices.size());
    return TopK(scores, keys, items, params);
  };
  TopListSearch search;
  search.k = params.top_k;
  search.fetch = std::numeric_limits<int64_t>::max();
  for (size_t m = 0; m < num_models(); ++m) {
    const Scorer& scorer = *(models_[m].*side);
    search.scorers.push_back(&scorer);
    search.queries.push_back(queries[m]);
    search.fetch = std::min(search.fetch, scorer.DeviceSearchMaxK());
  }
  if (search.fetch < params.top_k) {
    // A Search that costs a ScoreAll (CPU scorers, or k beyond the device's top-k): full scores.
    std::vector<int> all(num_queries);
    std::iota(all.begin(), all.end(), 0);
    return rank_in_full(all);
  }
  if (filtered) {
    search.keep = [&](int64_t key) {
      const CatalogEntry& entry = items.Get(key);
      return MatchesFilter(filter, entry.collection, entry.metadata);
    };
  }
  absl::StatusOr<std::vector<std::vector<ScoredKey>>> ranked = RankFromTopLists(search, rank_in_full);
  if (ranked.ok()) CountRanked(side, kTopLists, num_queries - ranked_in_full);
  return ranked;
}

std::vector<std::vector<ScoredKey>> ScanRetrievalEngine::TopK(const FloatMatrix& scores,
                                                              const std::vector<int64_t>& keys,
                                                              const Catalog& items,
                                                              const SearchParams& params) const {
  const SearchFilter& filter = params.filter;
  if (filter.collection.empty() && filter.metadata.empty())
    return TopKPerRow(scores, keys, params.top_k);
  // The filter is a column mask: keep the passing columns, then select among them.
  std::vector<int64_t> columns;
  for (size_t j = 0; j < keys.size(); ++j) {
    const CatalogEntry& entry = items.Get(keys[j]);
    if (MatchesFilter(filter, entry.collection, entry.metadata))
      columns.push_back(static_cast<int64_t>(j));
  }
  FloatMatrix kept(scores.rows, static_cast<int64_t>(columns.size()));
  std::vector<int64_t> kept_keys;
  kept_keys.reserve(columns.size());
  for (int64_t j : columns) kept_keys.push_back(keys[static_cast<size_t>(j)]);
  for (int64_t q = 0; q < scores.rows; ++q) {
    const float* src = scores.row(q);
    float* dst = kept.row(q);
    for (size_t c = 0; c < columns.size(); ++c) dst[c] = src[columns[c]];
  }
  return TopKPerRow(kept, kept_keys, params.top_k);
}

absl::StatusOr<std::vector<std::vector<std::vector<int64_t>>>> ScanRetrievalEngine::TokenizeQueries(
    const std::vector<std::string>& queries) const {
  for (size_t q = 0; q < queries.size(); ++q) {
    if (queries[q].size() > RetrievalLimits::kMaxQueryBytes) {
      return absl::InvalidArgumentError(absl::StrCat("query ", q, " has ", queries[q].size(), " bytes; at most ",
                                                     RetrievalLimits::kMaxQueryBytes, " are allowed"));
    }
  }
  std::vector<std::vector<std::vector<int64_t>>> ids(num_models());
  for (size_t m = 0; m < num_models(); ++m) {
    for (size_t q = 0; q < queries.size(); ++q) {
      absl::StatusOr<std::vector<int64_t>> tokens = models_[m].model->CaptionToIds(queries[q]);
      if (!tokens.ok()) return Prefixed(tokens.status(), absl::StrCat("query ", q, ": "));
      if (static_cast<int64_t>(tokens->size()) > options_.max_query_words) {
        return absl::InvalidArgumentError(absl::StrCat(
            "query ", q, " has ", tokens->size(), " tokens (<start> and <end> included); at most ",
            options_.max_query_words, " are allowed"));
      }
      ids[m].push_back(*std::move(tokens));
    }
  }
  return ids;
}

absl::Status ScanRetrievalEngine::ValidateSearchImages(const std::vector<std::string>& queries,
                                                       const SearchParams& params) const {
  SCANSERVE_RETURN_IF_ERROR(ValidateParams(params, queries.size()));
  return TokenizeQueries(queries).status();
}

absl::StatusOr<std::vector<std::vector<ImageHit>>> ScanRetrievalEngine::SearchImages(
    const std::vector<std::string>& queries, const SearchParams& params) const {
  SCANSERVE_RETURN_IF_ERROR(ValidateParams(params, queries.size()));
  // Tokenise and encode with every model before taking the lock: it is the slow part.
  const auto encode_start = std::chrono::steady_clock::now();
  SCANSERVE_ASSIGN_OR_RETURN(const std::vector<std::vector<std::vector<int64_t>>> ids,
                             TokenizeQueries(queries));  // [model][query]
  std::vector<StackedItems> words(num_models());
  for (size_t m = 0; m < num_models(); ++m) {
    SCANSERVE_ASSIGN_OR_RETURN(ModelEmbeddings embeddings,
                               EncodeAll(*models_[m].model, {}, ids[m], encode_options_));
    words[m] = std::move(embeddings.captions);
  }
  std::vector<std::vector<ItemView>> views(num_models());
  for (size_t m = 0; m < num_models(); ++m) {
    for (size_t q = 0; q < queries.size(); ++q)
      views[m].push_back(words[m].item(static_cast<int64_t>(q)));
  }
  AddPhase(kT2i, kEncode, encode_start);

  std::shared_lock<WriterPreferringSharedMutex> state(state_mu_);
  SCANSERVE_RETURN_IF_ERROR(Refusal());
  std::vector<std::vector<ImageHit>> results(queries.size());
  if (images_.size() == 0) return results;
  const auto score_start = std::chrono::steady_clock::now();
  SCANSERVE_ASSIGN_OR_RETURN(const std::vector<std::vector<ScoredKey>> top,
                             Rank(views, &ModelSlot::images, images_, params));
  AddPhase(kT2i, kScore, score_start);
  results = HitsOf<ImageHit>(top, images_);
  if (params.explain) SCANSERVE_RETURN_IF_ERROR(Explain(queries, ids[0], words[0], &results));
  return results;
}

namespace {

// The words of a query as the model scored them: <start>, the tokens, <end>.
std::vector<std::string> QueryWords(const std::string& query, const std::vector<int64_t>& ids,
                                    const Vocabulary& vocabulary) {
  std::vector<std::string> tokens = TokenizeCaption(query);
  if (tokens.size() + 2 == ids.size()) {
    std::vector<std::string> words;
    words.reserve(ids.size());
    words.push_back(vocabulary.WordOf(Vocabulary::kStart));
    for (std::string& t : tokens) words.push_back(std::move(t));
    words.push_back(vocabulary.WordOf(Vocabulary::kEnd));
    return words;
  }
  std::vector<std::string> words;  // (never expected) fall back to the vocabulary's spelling
  for (int64_t id : ids) words.push_back(vocabulary.WordOf(id));
  return words;
}

}  // namespace

absl::Status ScanRetrievalEngine::Explain(const std::vector<std::string>& queries,
                                          const std::vector<std::vector<int64_t>>& ids,
                                          const StackedItems& words,
                                          std::vector<std::vector<ImageHit>>* results) const {
  const ModelConfig& config = models_[0].model->config();
  for (size_t q = 0; q < queries.size(); ++q) {
    // The hits' stored records (the first model's region embeddings, boxes, labels), one query at
    // a time: at most kMaxExplainTopK records in memory, whatever the batch.
    std::vector<std::string> hit_ids;
    for (const ImageHit& hit : (*results)[q]) hit_ids.push_back(hit.id);
    SCANSERVE_ASSIGN_OR_RETURN(std::vector<std::optional<StoredImage>> records, store_->GetImages(hit_ids));
    const std::vector<std::string> query_words =
        QueryWords(queries[q], ids[q], models_[0].model->vocabulary());
    for (size_t h = 0; h < (*results)[q].size(); ++h) {
      ImageHit& hit = (*results)[q][h];
      const std::optional<StoredImage>& record = records[h];
      if (!record.has_value()) continue;  // deleted while this search ran: nothing to explain
      if (record->embeddings.empty() || record->embeddings[0].cols != config.embed_size ||
          record->embeddings[0].rows != record->num_regions) {
        return absl::DataLossError(absl::StrCat("the stored image ", QuoteId(hit.id),
                                                " has no valid embeddings for the first model"));
      }
      SCANSERVE_ASSIGN_OR_RETURN(
          std::vector<WordAttention> best,
          BestRegionPerWord(words.item(static_cast<int64_t>(q)), ItemView(record->embeddings[0]),
                            config.embed_size, config.attention.raw_feature_norm,
                            config.attention.lambda_softmax));
      for (size_t t = 0; t < best.size(); ++t) {
        WordExplanation e;
        e.word = t < query_words.size() ? query_words[t] : std::string();
        e.region = static_cast<int>(best[t].region);
        e.attention = best[t].weight;
        const size_t r = static_cast<size_t>(best[t].region);
        if (r < record->boxes.size()) {
          const std::array<float, 4>& b = record->boxes[r];
          e.box = Box{b[0], b[1], b[2], b[3]};
        }
        if (r < record->labels.size()) e.label = record->labels[r];
        hit.explanation.push_back(std::move(e));
      }
    }
  }
  return absl::OkStatus();
}

absl::Status ScanRetrievalEngine::ValidateSearchCaptions(const std::vector<ImageQuery>& queries,
                                                         const SearchParams& params) const {
  SCANSERVE_RETURN_IF_ERROR(ValidateParams(params, queries.size()));
  for (size_t q = 0; q < queries.size(); ++q) SCANSERVE_RETURN_IF_ERROR(CheckImageQuery(queries[q], q));
  std::shared_lock<WriterPreferringSharedMutex> state(state_mu_);
  for (size_t q = 0; q < queries.size(); ++q) {
    const std::string& id = queries[q].stored_id;
    if (!id.empty() && !images_.key_of_id.contains(id)) {
      return absl::NotFoundError(absl::StrCat("query ", q, ": no stored image ", QuoteId(id)));
    }
  }
  return absl::OkStatus();
}

absl::Status ScanRetrievalEngine::CheckImageQuery(const ImageQuery& query, size_t q) const {
  if (query.stored_id.empty()) {
    return Prefixed(ValidateRegionFeatures(query.region_features, img_dim_), absl::StrCat("query ", q, ": "));
  }
  if (query.region_features.rows != 0 || !query.region_features.data.empty()) {
    return absl::InvalidArgumentError(absl::StrCat("query ", q, ": give a stored image id or region features, not both"));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<std::vector<CaptionHit>>> ScanRetrievalEngine::SearchCaptions(
    const std::vector<ImageQuery>& queries, const SearchParams& params) const {
  SCANSERVE_RETURN_IF_ERROR(ValidateParams(params, queries.size()));
  const auto encode_start = std::chrono::steady_clock::now();
  std::vector<std::vector<FloatMatrix>> regions(queries.size());  // [query][model]
  std::vector<const FloatMatrix*> raw;
  std::vector<size_t> raw_index;
  std::vector<std::string> stored_ids;
  std::vector<size_t> stored_index;
  for (size_t q = 0; q < queries.size(); ++q) {
    const ImageQuery& query = queries[q];
    SCANSERVE_RETURN_IF_ERROR(CheckImageQuery(query, q));
    if (!query.stored_id.empty()) {
      stored_ids.push_back(query.stored_id);
      stored_index.push_back(q);
      continue;
    }
    raw.push_back(&query.region_features);
    raw_index.push_back(q);
  }
  std::vector<Encoded> encoded = EncodeRegions(raw);
  for (size_t j = 0; j < raw.size(); ++j) {
    SCANSERVE_RETURN_IF_ERROR(
        Prefixed(encoded[j].status, absl::StrCat("query ", raw_index[j], ": ")));
    regions[raw_index[j]] = std::move(encoded[j].per_model);
  }

  std::shared_lock<WriterPreferringSharedMutex> state(state_mu_);
  SCANSERVE_RETURN_IF_ERROR(Refusal());
  // Stored images are queried with their stored embeddings: no re-encoding. Synthetic ones are
  // made again from their index.
  if (!stored_ids.empty()) {
    std::vector<std::string> in_store;
    std::vector<size_t> in_store_index;
    for (size_t j = 0; j < stored_ids.size(); ++j) {
      auto it = images_.key_of_id.find(stored_ids[j]);
      if (it == images_.key_of_id.end()) {
        return absl::NotFoundError(
            absl::StrCat("query ", stored_index[j], ": no stored image ", QuoteId(stored_ids[j])));
      }
      const int64_t synthetic = images_.Get(it->second).synthetic_index;
      if (synthetic < 0) {
        in_store.push_back(std::move(stored_ids[j]));
        in_store_index.push_back(stored_index[j]);
        continue;
      }
      for (size_t m = 0; m < num_models(); ++m) {
        regions[stored_index[j]].push_back(
            MakeSyntheticItem(ItemKind::kImage, synthetic % SyntheticPoolSize(options_.synthetic_images),
                              m, models_[m].model->config().embed_size));
      }
    }
    stored_ids = std::move(in_store);
    stored_index = std::move(in_store_index);
  }
  if (!stored_ids.empty()) {
    SCANSERVE_ASSIGN_OR_RETURN(std::vector<std::optional<StoredImage>> records,
                               store_->GetImages(stored_ids));
    for (size_t j = 0; j < stored_ids.size(); ++j) {
      if (!records[j].has_value()) {
        return absl::NotFoundError(
            absl::StrCat("query ", stored_index[j], ": no stored image ", QuoteId(stored_ids[j])));
      }
      if (records[j]->embeddings.size() != num_models()) {
        return absl::DataLossError(absl::StrCat("the stored image ", QuoteId(stored_ids[j]),
                                                " has embeddings for ",
                                                records[j]->embeddings.size(), " models"));
      }
      regions[stored_index[j]] = std::move(records[j]->embeddings);
    }
  }
  AddPhase(kI2t, kEncode, encode_start);
  std::vector<std::vector<CaptionHit>> results(queries.size());
  if (captions_.size() == 0) return results;
  const auto score_start = std::chrono::steady_clock::now();
  std::vector<std::vector<ItemView>> views(num_models());
  for (size_t m = 0; m < num_models(); ++m) {
    for (size_t q = 0; q < queries.size(); ++q) views[m].push_back(ItemView(regions[q][m]));
  }
  SCANSERVE_ASSIGN_OR_RETURN(const std::vector<std::vector<ScoredKey>> top,
                             Rank(views, &ModelSlot::captions, captions_, params));
  AddPhase(kI2t, kScore, score_start);
  return HitsOf<CaptionHit>(top, captions_);
}

}  // namespace retrieval_internal
}  // namespace scanserve
