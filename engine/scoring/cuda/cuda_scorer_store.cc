// CudaScorer's stored items: slabs filled through pinned memory (narrowed to bf16 or fp8 on the
// device), their norms and Gram matrices, compaction on removal, and rollback of a failed Add.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstring>
#include <memory>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "engine/common/status_macros.h"
#include "engine/scoring/cuda/cuda_scorer_impl.h"
#include "engine/scoring/cuda/cuda_status.h"

namespace scanserve {

using cuda_internal::DeviceGuard;

absl::Status CudaScorer::Impl::UploadItems(Slab& s) const {
  // Row tiles: consecutive items while they span at most kFusedTileRows rows (or one item).
  s.tiles.clear();
  const size_t bytes = s.items.size() * sizeof(ck::ItemDev);
  if (bytes == 0) return absl::OkStatus();
  for (size_t i = 0; i < s.items.size(); ++i) {
    const ck::ItemDev& it = s.items[i];
    if (!s.tiles.empty() &&
        it.row_begin + it.rows - s.tiles.back().row_begin <= ck::kFusedTileRows) {
      s.tiles.back().rows = static_cast<int32_t>(it.row_begin + it.rows - s.tiles.back().row_begin);
      ++s.tiles.back().num_items;
      continue;
    }
    ck::RowTileDev t;
    t.row_begin = it.row_begin;
    t.rows = it.rows;
    t.item_begin = static_cast<int32_t>(i);
    t.num_items = 1;
    s.tiles.push_back(t);
  }
  const size_t tile_bytes = s.tiles.size() * sizeof(ck::RowTileDev);
  SCANSERVE_RETURN_IF_ERROR(s.items_dev.Grow(bytes, 0, stream, "item metadata"));
  SCANSERVE_RETURN_IF_ERROR(s.tiles_dev.Grow(tile_bytes, 0, stream, "row tiles"));
  SCANSERVE_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(s.items_dev.get(), s.items.data(), bytes,
                                                 cudaMemcpyHostToDevice, stream),
                                 "upload item metadata");
  SCANSERVE_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(s.tiles_dev.get(), s.tiles.data(), tile_bytes,
                                                 cudaMemcpyHostToDevice, stream),
                                 "upload row tiles");
  // The host vector may change before the copy runs: wait (metadata is small).
  SCANSERVE_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream), "upload item metadata");
  return absl::OkStatus();
}

absl::Status CudaScorer::Impl::WriteRun(Slab& s, absl::Span<const ItemView> items, int64_t row0) {
  const int64_t d = dim;
  const size_t row_bytes = static_cast<size_t>(d) * sizeof(float);
  const int64_t rows_per_step =
      std::max<int64_t>(1, options.upload_bytes / static_cast<int64_t>(row_bytes));
  size_t item = 0;
  int64_t item_row = 0;  // rows of items[item] already copied
  int64_t row = row0;
  int step = 0;
  while (item < items.size()) {
    const int b = step % 2;
    SCANSERVE_CUDA_RETURN_IF_ERROR(cudaEventSynchronize(upload_done[b]), "upload");
    SCANSERVE_RETURN_IF_ERROR(upload_host[b].Reserve(rows_per_step * row_bytes));
    int64_t n = 0;  // rows packed in this step
    while (item < items.size() && n < rows_per_step) {
      const int64_t take = std::min(items[item].rows - item_row, rows_per_step - n);
      std::memcpy(upload_host[b].get() + n * d, items[item].data + item_row * d,
                  static_cast<size_t>(take) * row_bytes);
      n += take;
      item_row += take;
      if (item_row == items[item].rows) {
        ++item;
        item_row = 0;
      }
    }
    const size_t bytes = static_cast<size_t>(n) * row_bytes;
    if (elem != ck::ElemType::kFloat32) {
      SCANSERVE_RETURN_IF_ERROR(upload_dev[b].Reserve(rows_per_step * row_bytes, "upload"));
      SCANSERVE_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(upload_dev[b].get(), upload_host[b].get(),
                                                     bytes, cudaMemcpyHostToDevice, stream),
                                     "upload");
      if (fp8()) {
        SCANSERVE_CUDA_RETURN_IF_ERROR(
            ck::FloatToFp8Rows(upload_dev[b].as<float>(), n, d,
                               s.features.as<uint8_t>() + row * d, s.scales.as<float>() + row,
                               stream),
            "narrow to fp8");
      } else {
        SCANSERVE_CUDA_RETURN_IF_ERROR(
            ck::FloatToBf16(upload_dev[b].as<float>(), s.features.as<uint16_t>() + row * d,
                            n * d, stream),
            "narrow to bf16");
      }
    } else {
      SCANSERVE_CUDA_RETURN_IF_ERROR(
          cudaMemcpyAsync(s.features.as<float>() + row * d, upload_host[b].get(), bytes,
                          cudaMemcpyHostToDevice, stream),
          "upload");
    }
    SCANSERVE_CUDA_RETURN_IF_ERROR(cudaEventRecord(upload_done[b], stream), "upload");
    row += n;
    ++step;
  }
  SCANSERVE_CUDA_RETURN_IF_ERROR(
      ck::RowNorms(Rows(s, row0), row - row0, d, s.norms.as<float>() + row0, stream),
      "row norms");
  return absl::OkStatus();
}

absl::Status CudaScorer::Impl::CompactSlab(Slab& s, const std::vector<int>& dead) {
  std::vector<ck::ItemDev> items;
  std::vector<int64_t> keys;
  items.reserve(s.items.size() - dead.size());
  keys.reserve(items.capacity());
  // The per-row arrays (features, norms, fp8 scales), each packed into its own region of
  // compact_tmp, then the Gram matrices after them.
  struct RowArray {
    DeviceBuffer* buffer;
    size_t row_bytes;
    char* tmp;
  };
  std::vector<RowArray> arrays = {{&s.features, dim * elem_bytes(), nullptr},
                                  {&s.norms, sizeof(float), nullptr}};
  if (fp8()) arrays.push_back({&s.scales, sizeof(float), nullptr});
  char* tmp_grams = compact_tmp.as<char>();
  for (RowArray& a : arrays) {
    a.tmp = tmp_grams;
    tmp_grams += static_cast<size_t>(s.used_rows) * a.row_bytes;
  }
  int64_t row = 0, gram = 0;
  int32_t max_rows = 0;
  // Survivors between two dead items are contiguous in the rows and the Gram matrices: they are
  // copied run by run (a few copies per removal, not several per surviving item).
  int64_t run_src_row = 0, run_rows = 0, run_src_gram = 0, run_grams = 0;
  const auto flush_run = [&]() -> absl::Status {
    for (const RowArray& a : arrays) {
      if (run_rows == 0) break;
      SCANSERVE_CUDA_RETURN_IF_ERROR(
          cudaMemcpyAsync(a.tmp + (row - run_rows) * a.row_bytes,
                          a.buffer->as<char>() + run_src_row * a.row_bytes,
                          run_rows * a.row_bytes, cudaMemcpyDeviceToDevice, stream),
          "compact");
    }
    if (run_grams > 0) {
      SCANSERVE_CUDA_RETURN_IF_ERROR(
          cudaMemcpyAsync(tmp_grams + (gram - run_grams) * sizeof(float),
                          s.grams.as<float>() + run_src_gram, run_grams * sizeof(float),
                          cudaMemcpyDeviceToDevice, stream),
          "compact");
    }
    run_rows = run_grams = 0;
    return absl::OkStatus();
  };
  size_t next_dead = 0;
  for (size_t i = 0; i < s.items.size(); ++i) {
    if (next_dead < dead.size() && dead[next_dead] == static_cast<int>(i)) {
      ++next_dead;
      SCANSERVE_RETURN_IF_ERROR(flush_run());
      continue;
    }
    const ck::ItemDev& it = s.items[i];
    const int64_t grams = stored_is_context ? static_cast<int64_t>(it.rows) * it.rows : 0;
    if (run_rows > 0 && (it.row_begin != run_src_row + run_rows ||
                         (grams > 0 && it.gram_begin != run_src_gram + run_grams))) {
      SCANSERVE_RETURN_IF_ERROR(flush_run());
    }
    if (run_rows == 0) {
      run_src_row = it.row_begin;
      run_src_gram = it.gram_begin;
    }
    ck::ItemDev moved = it;
    moved.row_begin = row;
    moved.gram_begin = gram;
    row += it.rows;
    gram += grams;
    run_rows += it.rows;
    run_grams += grams;
    max_rows = std::max(max_rows, it.rows);
    items.push_back(moved);
    keys.push_back(s.keys[i]);
  }
  SCANSERVE_RETURN_IF_ERROR(flush_run());
  if (row > 0) {
    for (const RowArray& a : arrays) {
      SCANSERVE_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(a.buffer->get(), a.tmp, row * a.row_bytes,
                                                     cudaMemcpyDeviceToDevice, stream),
                                     "compact");
    }
  }
  if (gram > 0) {
    SCANSERVE_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(s.grams.get(), tmp_grams,
                                                   gram * sizeof(float), cudaMemcpyDeviceToDevice,
                                                   stream),
                                   "compact");
  }
  s.items = std::move(items);
  s.keys = std::move(keys);
  s.used_rows = row;
  s.gram_used = gram;
  s.max_rows = max_rows;
  SCANSERVE_RETURN_IF_ERROR(UploadItems(s));
  for (size_t i = 0; i < s.keys.size(); ++i) where[s.keys[i]] = Location{&s, static_cast<int>(i)};
  return absl::OkStatus();
}

absl::Status CudaScorer::Impl::RemoveLocations(const std::vector<Location>& locs) {
  absl::flat_hash_map<Slab*, std::vector<int>> dead;
  for (const Location& l : locs) dead[l.slab].push_back(l.index);
  size_t tmp_bytes = 0;
  for (const auto& [slab, idx] : dead) {
    tmp_bytes = std::max(tmp_bytes, static_cast<size_t>(slab->used_rows) * row_bytes() +
                                        static_cast<size_t>(slab->gram_used) * sizeof(float));
  }
  SCANSERVE_RETURN_IF_ERROR(compact_tmp.Reserve(tmp_bytes, "compaction"));
  // Forget every dead key first: compaction then re-registers the survivors (including a new
  // copy of an upserted key) at their new places.
  for (auto& [slab, idx] : dead) {
    std::sort(idx.begin(), idx.end());
    for (int i : idx) where.erase(slab->keys[i]);
    num_items -= static_cast<int64_t>(idx.size());
  }
  // From here on a failure leaves the store half-moved: it breaks the scorer.
  absl::Status compacted = [&]() -> absl::Status {
    for (auto& [slab, idx] : dead) SCANSERVE_RETURN_IF_ERROR(CompactSlab(*slab, idx));
    slabs.erase(std::remove_if(slabs.begin(), slabs.end(),
                               [](const std::unique_ptr<Slab>& s) { return s->items.empty(); }),
                slabs.end());
    SCANSERVE_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream), "compact");
    return absl::OkStatus();
  }();
  col_keys_dirty = true;
  if (!compacted.ok()) {
    broken = absl::InternalError(absl::StrCat(
        "CudaScorer: a device copy failed while compacting the store (", compacted.message(),
        "); its contents are no longer consistent: restart to reload them from the store"));
    return broken;
  }
  return absl::OkStatus();
}

absl::Status CudaScorer::AddImpl(absl::Span<const int64_t> keys, absl::Span<const ItemView> items) {
  Impl& m = *impl_;
  std::lock_guard<std::mutex> lock(m.pass_mu);
  if (!m.broken.ok()) return m.broken;
  DeviceGuard guard(m.device);
  const int64_t d = m.dim;

  // Remember the state to roll back to: slab sizes and how many slabs there were.
  struct Mark {
    size_t items;
    int64_t rows, gram;
    int32_t max_rows;
  };
  std::vector<Mark> marks;
  for (const auto& s : m.slabs) {
    marks.push_back(Mark{s->items.size(), s->used_rows, s->gram_used, s->max_rows});
  }
  const size_t old_slabs = m.slabs.size();
  auto rollback = [&] {
    if (cudaStreamSynchronize(m.stream) != cudaSuccess) cudaGetLastError();
    m.slabs.resize(old_slabs);
    for (size_t i = 0; i < old_slabs; ++i) {
      Impl::Slab& s = *m.slabs[i];
      const bool touched = s.items.size() != marks[i].items;
      s.items.resize(marks[i].items);
      s.keys.resize(marks[i].items);
      s.used_rows = marks[i].rows;
      s.gram_used = marks[i].gram;
      s.max_rows = marks[i].max_rows;
      // Its device metadata may have been reallocated or half-written: upload it again.
      if (touched && !s.items.empty()) {
        const absl::Status uploaded = m.UploadItems(s);
        if (!uploaded.ok() && m.broken.ok()) {
          m.broken = absl::InternalError(absl::StrCat(
              "CudaScorer: restoring the store's metadata after a failed Add failed (",
              uploaded.message(), "): restart to reload it from the store"));
        }
      }
    }
  };

  // Place the new items: runs of consecutive items per slab.
  struct Run {
    Impl::Slab* slab;
    size_t first, last;  // items[first, last)
    int64_t row0;
    size_t item0;  // first slab item index
  };
  std::vector<Run> runs;
  std::vector<Impl::Location> placed;  // per new item, before any compaction
  placed.reserve(items.size());
  absl::Status st = [&]() -> absl::Status {
    for (size_t i = 0; i < items.size(); ++i) {
      const int64_t rows = items[i].rows;
      Impl::Slab* s = m.slabs.empty() ? nullptr : m.slabs.back().get();
      if (s == nullptr || s->used_rows + rows > s->capacity_rows) {
        auto fresh = std::make_unique<Impl::Slab>();
        fresh->capacity_rows = std::max(m.options.slab_rows, rows);
        SCANSERVE_RETURN_IF_ERROR(fresh->features.Reserve(
            static_cast<size_t>(fresh->capacity_rows) * d * m.elem_bytes(),
            "stored features"));
        SCANSERVE_RETURN_IF_ERROR(fresh->norms.Reserve(
            static_cast<size_t>(fresh->capacity_rows) * sizeof(float), "stored row norms"));
        if (m.fp8()) {
          SCANSERVE_RETURN_IF_ERROR(fresh->scales.Reserve(
              static_cast<size_t>(fresh->capacity_rows) * sizeof(float), "stored fp8 row scales"));
        }
        m.slabs.push_back(std::move(fresh));
        s = m.slabs.back().get();
      }
      if (runs.empty() || runs.back().slab != s) {
        runs.push_back(Run{s, i, i, s->used_rows, s->items.size()});
      }
      runs.back().last = i + 1;
      ck::ItemDev it;
      it.row_begin = s->used_rows;
      it.rows = static_cast<int32_t>(rows);
      it.gram_begin = s->gram_used;
      placed.push_back(Impl::Location{s, static_cast<int>(s->items.size())});
      s->items.push_back(it);
      s->keys.push_back(keys[i]);
      s->used_rows += rows;
      if (m.stored_is_context) s->gram_used += rows * rows;
      s->max_rows = std::max(s->max_rows, it.rows);
    }
    for (const Run& r : runs) {
      Impl::Slab& s = *r.slab;
      const size_t keep = static_cast<size_t>(r.item0 == 0 ? 0 : s.items[r.item0].gram_begin);
      if (m.stored_is_context) {
        SCANSERVE_RETURN_IF_ERROR(
            s.grams.Grow(s.gram_used * sizeof(float), keep * sizeof(float), m.stream,
                         "stored Gram matrices"));
      }
      SCANSERVE_RETURN_IF_ERROR(m.UploadItems(s));
      SCANSERVE_RETURN_IF_ERROR(m.WriteRun(s, items.subspan(r.first, r.last - r.first), r.row0));
      if (m.stored_is_context) {
        SCANSERVE_CUDA_RETURN_IF_ERROR(
            ck::Grams(m.Rows(s, 0), d, s.items_dev.as<ck::ItemDev>() + r.item0,
                      static_cast<int>(r.last - r.first), s.grams.as<float>(), m.stream),
            "stored Gram matrices");
      }
    }
    SCANSERVE_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(m.stream), "Add");
    return absl::OkStatus();
  }();
  if (!st.ok()) {
    rollback();
    return st;
  }

  // Upserts: the old copies go (compaction); on failure the new items go again.
  std::vector<Impl::Location> old;
  for (int64_t key : keys) {
    auto found = m.where.find(key);
    if (found != m.where.end()) old.push_back(found->second);
  }
  if (!old.empty()) {
    // Compaction reads compact_tmp only; reserve it before anything is committed.
    st = m.RemoveLocations(old);
    if (!st.ok()) {
      // Unless the compaction broke the scorer, it failed before changing anything (compact_tmp
      // could not be had).
      if (m.broken.ok()) rollback();
      return st;
    }
  }
  // Commit the keys of the new items. A key already present was re-registered by a compaction
  // of its slab (which moved it); the others sit where they were placed.
  for (size_t i = 0; i < keys.size(); ++i) {
    if (!m.where.contains(keys[i])) m.where[keys[i]] = placed[i];
  }
  m.num_items += static_cast<int64_t>(keys.size());
  m.col_keys_dirty = true;
  return absl::OkStatus();
}

absl::Status CudaScorer::Health() const {
  std::lock_guard<std::mutex> lock(impl_->pass_mu);
  return impl_->broken;
}

absl::Status CudaScorer::RemoveImpl(absl::Span<const int64_t> keys) {
  Impl& m = *impl_;
  std::lock_guard<std::mutex> lock(m.pass_mu);
  if (!m.broken.ok()) return m.broken;
  DeviceGuard guard(m.device);
  std::vector<Impl::Location> locs;
  locs.reserve(keys.size());
  for (int64_t key : keys) locs.push_back(m.where.at(key));
  return m.RemoveLocations(locs);
}

}  // namespace scanserve
