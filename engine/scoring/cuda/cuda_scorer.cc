// CudaScorer's host side: device memory, cuBLAS, the passes. Kernels: scan_kernels.cu.
#include "engine/scoring/cuda_scorer.h"

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <limits>
#include <mutex>
#include <optional>
#include <utility>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "engine/common/status_macros.h"
#include "engine/scoring/cuda/scan_kernels.h"

namespace scanserve {
namespace {

namespace ck = cuda_kernels;

static_assert(static_cast<int>(RawFeatureNorm::kClippedL2Norm) == 0 &&
                  static_cast<int>(RawFeatureNorm::kL2Norm) == 1 &&
                  static_cast<int>(RawFeatureNorm::kClipped) == 2 &&
                  static_cast<int>(RawFeatureNorm::kNoNorm) == 3 &&
                  static_cast<int>(RawFeatureNorm::kSoftmax) == 4,
              "scan_kernels.cu numbers RawFeatureNorm the same way");
static_assert(static_cast<int>(Pooling::kLogSumExp) == 0 && static_cast<int>(Pooling::kMean) == 1 &&
                  static_cast<int>(Pooling::kMax) == 2 && static_cast<int>(Pooling::kSum) == 3,
              "scan_kernels.cu numbers Pooling the same way");

// Every failed runtime call also becomes the thread's "last error", which the next kernel
// launch's cudaGetLastError() check would report as its own: an error handled here is cleared.
// (A sticky error, after which the context is unusable, cannot be cleared: later calls fail too.)
absl::Status CudaStatus(cudaError_t err, const char* what, const char* file, int line) {
  cudaGetLastError();
  const std::string msg = absl::StrCat("CudaScorer: ", what, ": ", cudaGetErrorName(err), " (",
                                       cudaGetErrorString(err), ") at ", file, ":", line);
  if (err == cudaErrorMemoryAllocation) return absl::ResourceExhaustedError(msg);
  return absl::InternalError(msg);
}

absl::Status CublasStatus(cublasStatus_t st, const char* what, const char* file, int line) {
  const std::string msg = absl::StrCat("CudaScorer: ", what, ": cuBLAS status ",
                                       static_cast<int>(st), " at ", file, ":", line);
  if (st == CUBLAS_STATUS_ALLOC_FAILED) return absl::ResourceExhaustedError(msg);
  return absl::InternalError(msg);
}

#define SCANSERVE_CUDA_RETURN_IF_ERROR(expr, what)                                  \
  do {                                                                              \
    const cudaError_t scanserve_cuda_err_ = (expr);                                 \
    if (scanserve_cuda_err_ != cudaSuccess) {                                       \
      return CudaStatus(scanserve_cuda_err_, what, __FILE__, __LINE__);             \
    }                                                                               \
  } while (0)

#define SCANSERVE_CUBLAS_RETURN_IF_ERROR(expr, what)                                \
  do {                                                                              \
    const cublasStatus_t scanserve_cublas_st_ = (expr);                             \
    if (scanserve_cublas_st_ != CUBLAS_STATUS_SUCCESS) {                            \
      return CublasStatus(scanserve_cublas_st_, what, __FILE__, __LINE__);          \
    }                                                                               \
  } while (0)

// Makes `device` current for a scope and restores the previous one.
class DeviceGuard {
 public:
  explicit DeviceGuard(int device) {
    if (cudaGetDevice(&previous_) != cudaSuccess) previous_ = -1;
    if (previous_ != device) cudaSetDevice(device);
  }
  ~DeviceGuard() {
    if (previous_ >= 0) cudaSetDevice(previous_);
  }
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int previous_ = -1;
};

// An owned device allocation (freed on the device current at destruction: the owner's guard).
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  ~DeviceBuffer() { Reset(); }
  DeviceBuffer(DeviceBuffer&& o) noexcept : ptr_(o.ptr_), bytes_(o.bytes_) {
    o.ptr_ = nullptr;
    o.bytes_ = 0;
  }
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept {
    if (this != &o) {
      Reset();
      std::swap(ptr_, o.ptr_);
      std::swap(bytes_, o.bytes_);
    }
    return *this;
  }

  // Room for `host`, then `host` copied in on `stream`. A pageable source may be freed as soon as
  // this returns: the runtime stages it before cudaMemcpyAsync returns.
  template <typename T>
  absl::Status Upload(const std::vector<T>& host, cudaStream_t stream, const char* what) {
    const size_t bytes = host.size() * sizeof(T);
    SCANSERVE_RETURN_IF_ERROR(Reserve(bytes, what));
    SCANSERVE_CUDA_RETURN_IF_ERROR(
        cudaMemcpyAsync(ptr_, host.data(), bytes, cudaMemcpyHostToDevice, stream),
        absl::StrCat("upload ", what).c_str());
    return absl::OkStatus();
  }

  // At least `bytes`; the contents are lost when it grows.
  absl::Status Reserve(size_t bytes, const char* what) {
    if (bytes <= bytes_) return absl::OkStatus();
    // Refuse before the device is full: the text encoder, the detector and cuBLAS share it, and a
    // store that grows into the last bytes would make their next allocation fail instead.
    size_t free_bytes = 0, total_bytes = 0;
    if (cudaMemGetInfo(&free_bytes, &total_bytes) == cudaSuccess) {
      const size_t headroom = total_bytes / 20;
      if (bytes + headroom > free_bytes + bytes_) {
        return absl::ResourceExhaustedError(absl::StrCat(
            "CudaScorer: ", what, " needs ", bytes, " bytes of device memory; ", free_bytes,
            " are free and 5% of the device (", headroom, " bytes) stays reserved"));
      }
    } else {
      cudaGetLastError();
    }
    Reset();
    void* p = nullptr;
    const cudaError_t err = cudaMalloc(&p, bytes);
    if (err != cudaSuccess) {
      cudaGetLastError();  // clear the sticky-free allocation error
      return absl::ResourceExhaustedError(absl::StrCat("CudaScorer: out of device memory for ", what,
                                                       " (", bytes, " bytes): ",
                                                       cudaGetErrorString(err)));
    }
    ptr_ = p;
    bytes_ = bytes;
    return absl::OkStatus();
  }
  // At least `bytes`, keeping the first `keep` bytes (stream-ordered copy on `stream`).
  absl::Status Grow(size_t bytes, size_t keep, cudaStream_t stream, const char* what) {
    if (bytes <= bytes_) return absl::OkStatus();
    DeviceBuffer bigger;
    SCANSERVE_RETURN_IF_ERROR(bigger.Reserve(std::max(bytes, bytes_ + bytes_ / 2), what));
    if (keep > 0) {
      SCANSERVE_CUDA_RETURN_IF_ERROR(
          cudaMemcpyAsync(bigger.ptr_, ptr_, keep, cudaMemcpyDeviceToDevice, stream), what);
      SCANSERVE_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream), what);
    }
    *this = std::move(bigger);
    return absl::OkStatus();
  }
  void Reset() {
    if (ptr_ != nullptr) cudaFree(ptr_);
    ptr_ = nullptr;
    bytes_ = 0;
  }

  template <typename T>
  T* as() const {
    return static_cast<T*>(ptr_);
  }
  void* get() const { return ptr_; }
  size_t bytes() const { return bytes_; }

 private:
  void* ptr_ = nullptr;
  size_t bytes_ = 0;
};

// Page-locked host memory, for the Add uploads.
class PinnedBuffer {
 public:
  ~PinnedBuffer() {
    if (ptr_ != nullptr) cudaFreeHost(ptr_);
  }
  absl::Status Reserve(size_t bytes) {
    if (bytes <= bytes_) return absl::OkStatus();
    if (ptr_ != nullptr) cudaFreeHost(ptr_);
    ptr_ = nullptr;
    bytes_ = 0;
    SCANSERVE_CUDA_RETURN_IF_ERROR(cudaMallocHost(&ptr_, bytes), "pinned staging buffer");
    bytes_ = bytes;
    return absl::OkStatus();
  }
  float* get() const { return static_cast<float*>(ptr_); }

 private:
  void* ptr_ = nullptr;
  size_t bytes_ = 0;
};

}  // namespace

// ---------------------------------------------------------------------------------------------

struct CudaScorer::Impl {
  // A slab: whole items in consecutive rows. Stored item i of the slab is items[i] (row_begin and
  // gram_begin slab-relative), keys[i] its key; device metadata items_dev mirrors `items`, and
  // tiles_dev mirrors `tiles`, the fused pass's row tiles over them.
  struct Slab {
    DeviceBuffer features;  // capacity_rows x dim, fp32, bf16 or fp8 codes
    DeviceBuffer scales;    // capacity_rows floats, fp8 only: each row's power-of-two scale
    DeviceBuffer norms;     // capacity_rows floats
    DeviceBuffer grams;     // gram_used floats (grown on demand)
    DeviceBuffer items_dev;
    DeviceBuffer tiles_dev;
    std::vector<ck::RowTileDev> tiles;
    int64_t capacity_rows = 0;
    int64_t used_rows = 0;
    int64_t gram_used = 0;
    int32_t max_rows = 0;
    std::vector<ck::ItemDev> items;
    std::vector<int64_t> keys;
  };
  // Where a key is stored.
  struct Location {
    Slab* slab = nullptr;
    int index = 0;
  };

  int device = 0;
  cudaDeviceProp props{};
  cudaStream_t stream = nullptr;
  // The pipelined GEMM path's epilogues; joined back into `stream` before every pass returns.
  cudaStream_t epilogue_stream = nullptr;
  cublasHandle_t cublas = nullptr;
  int64_t dim = 0;
  ck::ElemType elem = ck::ElemType::kFloat32;
  // bf16 and fp8 storage meet the queries on bf16 tensor cores (fp8 rows widened to bf16 first).
  bool bf16_gemm = false;
  bool split_queries = false;
  bool stored_is_context = true;
  AttentionParams attention;
  CudaScorerOptions options;

  std::vector<std::unique_ptr<Slab>> slabs;
  absl::flat_hash_map<int64_t, Location> where;
  int64_t num_items = 0;

  // Per-pass buffers, reused; guarded by pass_mu (const calls may run concurrently).
  mutable std::mutex pass_mu;
  mutable DeviceBuffer q_f32, q_b16, q_norms, q_grams, q_items, product[2], scores, epi_scratch,
      topk_a, topk_b, col_keys, upload_dev[2], compact_tmp, widened, q_groups, fused_slabs;
  mutable PinnedBuffer upload_host[2];
  mutable cudaEvent_t upload_done[2] = {nullptr, nullptr};
  // Pipelined GEMM path: product[b] written (on `stream`) / read by its epilogue (on
  // epilogue_stream); the epilogue stream's last work of a pass.
  mutable cudaEvent_t product_ready[2] = {nullptr, nullptr};
  mutable cudaEvent_t product_free[2] = {nullptr, nullptr};
  mutable cudaEvent_t epilogues_done = nullptr;
  mutable bool col_keys_dirty = true;
  mutable PassCounts passes;  // guarded by pass_mu
  mutable FusedLaunch fused_launch;  // guarded by pass_mu
  // pass_kernels = kAuto: the kernel choices, and the pass in flight that the chooser picked
  // (guarded by pass_mu).
  mutable PassKernelChooser chooser;
  struct ChosenPass {
    PassKernel kernel = PassKernel::kGemm;
    int64_t query_rows = 0;
    int64_t stored_rows = 0;
  };
  mutable std::optional<ChosenPass> timed_pass;
  // Set when a device copy failed midway through a compaction: the slabs and the key map may no
  // longer agree, so every later call fails with it rather than score a half-moved store.
  absl::Status broken;  // guarded by pass_mu

  bool fp8() const { return elem == ck::ElemType::kFp8E4M3; }
  size_t elem_bytes() const {
    return elem == ck::ElemType::kFloat32 ? 4 : (elem == ck::ElemType::kBFloat16 ? 2 : 1);
  }
  // Stored bytes per row: values, the fp8 scale, the norm.
  size_t row_bytes() const { return dim * elem_bytes() + (fp8() ? 4 : 0) + sizeof(float); }
  // Slab s's rows from `row` on.
  ck::RowsView Rows(const Slab& s, int64_t row) const {
    return ck::RowsView{s.features.as<char>() + row * dim * elem_bytes(), elem,
                        fp8() ? s.scales.as<float>() + row : nullptr};
  }

  ~Impl() {
    DeviceGuard guard(device);
    if (stream != nullptr) cudaStreamSynchronize(stream);
    if (epilogue_stream != nullptr) cudaStreamSynchronize(epilogue_stream);
    slabs.clear();
    for (DeviceBuffer* b : {&q_f32, &q_b16, &q_norms, &q_grams, &q_items, &product[0],
                            &product[1], &scores, &epi_scratch, &topk_a, &topk_b, &col_keys,
                            &upload_dev[0], &upload_dev[1], &compact_tmp, &widened, &q_groups,
                            &fused_slabs}) {
      b->Reset();
    }
    for (cudaEvent_t* e : Events()) {
      if (*e != nullptr) cudaEventDestroy(*e);
    }
    if (cublas != nullptr) cublasDestroy(cublas);
    if (epilogue_stream != nullptr) cudaStreamDestroy(epilogue_stream);
    if (stream != nullptr) cudaStreamDestroy(stream);
  }

  std::vector<cudaEvent_t*> Events() {
    return {&upload_done[0], &upload_done[1],   &product_ready[0], &product_ready[1],
            &product_free[0], &product_free[1], &epilogues_done};
  }

  int64_t StoredRows() const {
    int64_t rows = 0;
    for (const auto& s : slabs) rows += s->used_rows;
    return rows;
  }
  // A ScoreAll or Search pass, queries in to results on the host: when the chooser picked its
  // kernel, a successful pass's wall time goes to it.
  template <typename Pass>
  absl::Status TimedPass(Pass pass) const {
    const auto start = std::chrono::steady_clock::now();
    const absl::Status status = pass();
    if (timed_pass && status.ok()) {
      const std::chrono::duration<double> seconds = std::chrono::steady_clock::now() - start;
      chooser.Record(timed_pass->query_rows, timed_pass->stored_rows, timed_pass->kernel,
                     seconds.count());
    }
    timed_pass.reset();
    return status;
  }

  int32_t MaxStoredRows() const {
    int32_t m = 0;
    for (const auto& s : slabs) m = std::max(m, s->max_rows);
    return m;
  }

  // The item metadata and the row tiles to the device, after any change to the slab's items.
  absl::Status UploadItems(Slab& s) const {
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

  // Copies items[first, last) (already given rows in `s` from row `row0`) to the device, then
  // computes their norms and Gram matrices. Double-buffered through pinned memory.
  absl::Status WriteRun(Slab& s, absl::Span<const ItemView> items, int64_t row0) {
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

  // Drops the items at `dead` (indices, ascending) from slab `s` in place, through compact_tmp
  // (already large enough); never allocates.
  absl::Status CompactSlab(Slab& s, const std::vector<int>& dead) {
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

  // Removes the stored items at `locs` (each live), compacting every slab touched and dropping
  // emptied slabs. Allocates compact_tmp first; nothing changes when that fails.
  absl::Status RemoveLocations(const std::vector<Location>& locs) {
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

  // One scoring pass: scores (device, queries x num_items, ld num_items) for every query.
  absl::Status RunPass(absl::Span<const ItemView> queries) const;
  // A chunk of whole items from items[first]: at most chunk_rows rows, at least one item.
  // Returns its end.
  static size_t ChunkEnd(const std::vector<ck::ItemDev>& items, size_t first, int64_t chunk_rows) {
    const int64_t row0 = items[first].row_begin;
    size_t end = first + 1;
    while (end < items.size() && items[end].row_begin + items[end].rows - row0 <= chunk_rows) {
      ++end;
    }
    return end;
  }
  // Slab rows [row0, row0 + rows) as the GEMM's stored operand: in place, or fp8 rows widened
  // to bf16 into `widened` (on `stream`).
  absl::StatusOr<const void*> ChunkOperand(const Slab& s, int64_t row0, int64_t rows) const {
    if (!fp8()) return static_cast<const void*>(s.features.as<char>() + row0 * dim * elem_bytes());
    passes.widened_rows += rows;
    SCANSERVE_CUDA_RETURN_IF_ERROR(
        ck::Fp8RowsToBf16(s.features.as<uint8_t>() + row0 * dim, s.scales.as<float>() + row0, rows,
                          dim, widened.as<uint16_t>(), stream),
        "widen fp8 rows");
    return static_cast<const void*>(widened.get());
  }
  // The GEMM path's chunk loop of RunPass.
  absl::Status ScoreChunks(ck::EpilogueParams p, const ck::EpiloguePlan& plan,
                           const void* q_operand, int64_t ncols, int64_t chunk_rows,
                           bool pipelined) const;
  // RunPass's last step: the scoring kernels' status, passed on.
  absl::Status Scored(absl::Status status) const;
  // The fused pass of RunPass: one launch over every slab's row tiles.
  absl::Status ScoreTiles(const ck::EpilogueParams& p, ck::FusedParams f,
                          const ck::FusedPlan& plan) const;
};

absl::Status CudaScorer::Impl::RunPass(absl::Span<const ItemView> queries) const {
  const int64_t d = dim;
  const int nq = static_cast<int>(queries.size());
  // Queries: stacked rows, metadata, norms, Gram matrices when they are the context.
  std::vector<ck::ItemDev> q_meta(nq);
  int64_t q_rows = 0, q_gram = 0;
  int32_t max_q_rows = 0;
  for (int j = 0; j < nq; ++j) {
    q_meta[j].row_begin = q_rows;
    q_meta[j].rows = static_cast<int32_t>(queries[j].rows);
    q_meta[j].gram_begin = q_gram;
    q_rows += queries[j].rows;
    if (!stored_is_context) q_gram += queries[j].rows * queries[j].rows;
    max_q_rows = std::max<int32_t>(max_q_rows, static_cast<int32_t>(queries[j].rows));
  }
  std::vector<float> packed(static_cast<size_t>(q_rows * d));
  for (int j = 0; j < nq; ++j) {
    std::memcpy(packed.data() + q_meta[j].row_begin * d, queries[j].data,
                static_cast<size_t>(queries[j].rows * d) * sizeof(float));
  }
  SCANSERVE_RETURN_IF_ERROR(q_f32.Reserve(packed.size() * sizeof(float), "queries"));
  SCANSERVE_RETURN_IF_ERROR(q_norms.Reserve(q_rows * sizeof(float), "query norms"));
  SCANSERVE_RETURN_IF_ERROR(q_items.Reserve(nq * sizeof(ck::ItemDev), "query metadata"));
  // packed, q_meta (and groups below) are pageable and freed when the pass returns: safe, since a
  // host-to-device cudaMemcpyAsync from pageable memory returns only once the source has been
  // staged (CUDA runtime API, "API synchronization behavior").
  SCANSERVE_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(q_f32.get(), packed.data(),
                                                 packed.size() * sizeof(float),
                                                 cudaMemcpyHostToDevice, stream),
                                 "upload queries");
  SCANSERVE_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(q_items.get(), q_meta.data(),
                                                 nq * sizeof(ck::ItemDev), cudaMemcpyHostToDevice,
                                                 stream),
                                 "upload queries");
  const ck::RowsView query_rows{q_f32.get(), ck::ElemType::kFloat32, nullptr};
  SCANSERVE_CUDA_RETURN_IF_ERROR(ck::RowNorms(query_rows, q_rows, d, q_norms.as<float>(), stream),
                                 "query norms");
  if (!stored_is_context) {
    SCANSERVE_RETURN_IF_ERROR(q_grams.Reserve(q_gram * sizeof(float), "query Gram matrices"));
    SCANSERVE_CUDA_RETURN_IF_ERROR(
        ck::Grams(query_rows, d, q_items.as<ck::ItemDev>(), nq, q_grams.as<float>(), stream),
        "query Gram matrices");
  }
  // The GEMM's query operand: fp32, or bf16 (hi rows, then lo rows when split).
  const void* q_operand = q_f32.get();
  int64_t ncols = q_rows;
  if (bf16_gemm) {
    ncols = split_queries ? 2 * q_rows : q_rows;
    SCANSERVE_RETURN_IF_ERROR(q_b16.Reserve(ncols * d * sizeof(uint16_t),
                                            "bf16 queries"));
    uint16_t* hi = q_b16.as<uint16_t>();
    SCANSERVE_CUDA_RETURN_IF_ERROR(
        ck::SplitToBf16(q_f32.as<float>(), hi, split_queries ? hi + q_rows * d : nullptr,
                        q_rows * d, stream),
        "split queries");
    q_operand = hi;
  }
  const int32_t max_s_rows = MaxStoredRows();

  // The fused pass, when asked for and the shapes allow it: query groups of whole queries.
  std::vector<ck::QueryGroupDev> groups;
  ck::FusedPlan fused_plan;
  bool fused = false;
  timed_pass.reset();
  if (options.pass_kernels != CudaPassKernels::kGemm) {
    int32_t max_group_rows = 0;
    for (int j = 0; j < nq; ++j) {
      if (groups.empty() || groups.back().rows + q_meta[j].rows > ck::kFusedMaxGroupRows) {
        ck::QueryGroupDev g;
        g.row_begin = q_meta[j].row_begin;
        g.first_query = j;
        groups.push_back(g);
      }
      groups.back().rows += q_meta[j].rows;
      groups.back().num_queries += 1;
      max_group_rows = std::max(max_group_rows, groups.back().rows);
    }
    SCANSERVE_CUDA_RETURN_IF_ERROR(
        ck::PlanFused(device, d, max_s_rows, max_q_rows, max_group_rows, split_queries,
                      stored_is_context, bf16_gemm, options.fused_blocks_per_sm,
                      options.fused_max_stages, &fused_plan),
        "plan the fused pass");
    fused = fused_plan.eligible;
    if (fused && options.pass_kernels == CudaPassKernels::kAuto) {
      const int64_t stored_rows = StoredRows();
      const PassKernel kernel = chooser.Choose(q_rows, stored_rows);
      fused = kernel == PassKernel::kFused;
      timed_pass = ChosenPass{kernel, q_rows, stored_rows};
    }
  }
  ++(fused ? passes.fused : passes.gemm);
  if (fused) {
    fused_launch = FusedLaunch{fused_plan.blocks_per_sm, fused_plan.epilogue_warps,
                               static_cast<int64_t>(fused_plan.shared_bytes), fused_plan.stages};
    SCANSERVE_RETURN_IF_ERROR(q_groups.Upload(groups, stream, "query groups"));
  }

  SCANSERVE_RETURN_IF_ERROR(
      scores.Reserve(static_cast<size_t>(nq) * num_items * sizeof(float), "scores"));
  ck::EpilogueParams p;
  p.raw_feature_norm = static_cast<int>(attention.raw_feature_norm);
  p.pooling = static_cast<int>(attention.pooling);
  p.lambda_softmax = attention.lambda_softmax;
  p.lambda_lse = attention.lambda_lse;
  p.stored_is_context = stored_is_context;
  p.ld_product = ncols;
  p.lo_offset = bf16_gemm && split_queries ? q_rows : 0;
  p.queries = q_items.as<ck::ItemDev>();
  p.num_queries = nq;
  p.query_norms = q_norms.as<float>();
  p.query_grams = stored_is_context ? nullptr : q_grams.as<float>();
  p.scores = scores.as<float>();
  p.ld_scores = num_items;
  if (fused) {
    ck::FusedParams f;
    f.queries = q_b16.as<__nv_bfloat16>();
    f.lo_row_offset = q_rows;
    f.dim = d;
    f.split = split_queries;
    f.groups = q_groups.as<ck::QueryGroupDev>();
    f.num_groups = static_cast<int>(groups.size());
    return Scored(ScoreTiles(p, f, fused_plan));
  }

  // The GEMM path: per-chunk products, of at most max_product_bytes (at least one item).
  int64_t chunk_rows = std::max<int64_t>(
      max_s_rows, options.max_product_bytes / static_cast<int64_t>(ncols * sizeof(float)));
  if (fp8()) {
    // Each chunk is widened to bf16 for the tensor cores, in a buffer of the same budget.
    chunk_rows = std::min(
        chunk_rows,
        std::max<int64_t>(max_s_rows, options.max_product_bytes / static_cast<int64_t>(d * 2)));
  }
  int64_t largest_slab = 0;
  for (const auto& s : slabs) largest_slab = std::max(largest_slab, s->used_rows);
  const int64_t product_rows = std::min(chunk_rows, largest_slab);
  // Two product buffers when a second chunk exists to overlap with.
  const size_t product_bytes = static_cast<size_t>(product_rows) * ncols * sizeof(float);
  SCANSERVE_RETURN_IF_ERROR(product[0].Reserve(product_bytes, "products"));
  int64_t chunks = 0;
  for (const auto& sp : slabs) chunks += (sp->used_rows + chunk_rows - 1) / chunk_rows;
  const bool pipelined = options.pipelined_epilogue && chunks > 1;
  if (pipelined) SCANSERVE_RETURN_IF_ERROR(product[1].Reserve(product_bytes, "products"));
  if (fp8()) {
    SCANSERVE_RETURN_IF_ERROR(widened.Reserve(static_cast<size_t>(product_rows) * d *
                                                  sizeof(uint16_t),
                                              "fp8 rows widened to bf16"));
  }
  ck::EpiloguePlan plan;
  SCANSERVE_CUDA_RETURN_IF_ERROR(
      ck::PlanEpilogue(device, stored_is_context ? max_s_rows : max_q_rows,
                       stored_is_context ? max_q_rows : max_s_rows, &plan),
      "plan the epilogue");
  if (plan.global_scratch_bytes > 0) {
    SCANSERVE_RETURN_IF_ERROR(epi_scratch.Reserve(plan.global_scratch_bytes, "epilogue scratch"));
  }
  return Scored(ScoreChunks(p, plan, q_operand, ncols, chunk_rows, pipelined));
}

absl::Status CudaScorer::Impl::Scored(absl::Status status) const {
  // The kernels themselves failed (a launch the device refused, a fault): the chooser stops
  // choosing this kernel for such passes. Failures before this point (memory for the queries,
  // the scores) would fail either kernel and are not held against one.
  if (!status.ok() && timed_pass) {
    chooser.RecordFailure(timed_pass->query_rows, timed_pass->kernel);
    timed_pass.reset();
  }
  return status;
}

absl::Status CudaScorer::Impl::ScoreTiles(const ck::EpilogueParams& p, ck::FusedParams f,
                                          const ck::FusedPlan& plan) const {
  // Every slab in one launch: the slabs' descriptors, in tile order (pageable, staged at the
  // call like the query groups).
  std::vector<ck::FusedSlabDev> descs;
  int64_t tiles = 0, col = 0;
  for (const auto& sp : slabs) {
    const Slab& s = *sp;
    if (!s.tiles.empty()) {
      ck::FusedSlabDev d;
      d.stored = Rows(s, 0);
      d.norms = s.norms.as<float>();
      d.grams = stored_is_context ? s.grams.as<float>() : nullptr;
      d.items = s.items_dev.as<ck::ItemDev>();
      d.tiles = s.tiles_dev.as<ck::RowTileDev>();
      d.first_tile = tiles;
      d.col0 = col;
      descs.push_back(d);
      tiles += static_cast<int64_t>(s.tiles.size());
    }
    col += static_cast<int64_t>(s.items.size());
  }
  if (descs.empty()) return absl::OkStatus();
  SCANSERVE_RETURN_IF_ERROR(fused_slabs.Upload(descs, stream, "fused pass slabs"));
  f.slabs = fused_slabs.as<ck::FusedSlabDev>();
  f.num_slabs = static_cast<int>(descs.size());
  f.stored_type = elem;
  SCANSERVE_CUDA_RETURN_IF_ERROR(ck::FusedScore(p, f, plan, tiles, stream),
                                 "fused products and epilogue");
  return absl::OkStatus();
}

absl::Status CudaScorer::Impl::ScoreChunks(ck::EpilogueParams p, const ck::EpiloguePlan& plan,
                                           const void* q_operand, int64_t ncols,
                                           int64_t chunk_rows, bool pipelined) const {
  const int64_t d = dim;
  const float one = 1.0f, zero = 0.0f;
  const cudaDataType_t type = bf16_gemm ? CUDA_R_16BF : CUDA_R_32F;
  int chunk = 0;
  // Chunk i's GEMM fills product[i % 2] on `stream` once chunk i - 2's epilogue has read it; its
  // epilogue, on epilogue_stream, waits for that GEMM. The queries, norms and Gram matrices the
  // epilogues read were made on `stream` before any GEMM.
  auto score_chunk = [&](const void* stored_operand, int64_t rows) -> absl::Status {
    const int b = pipelined ? chunk % 2 : 0;
    ++chunk;
    if (pipelined) {
      SCANSERVE_CUDA_RETURN_IF_ERROR(cudaStreamWaitEvent(stream, product_free[b], 0),
                                     "order the product buffers");
    }
    // product (row-major rows x ncols) = stored rows · queriesᵀ; in cuBLAS's column-major
    // terms: C (ncols x rows) = Qᵀ(ncols x d) · F(d x rows).
    SCANSERVE_CUBLAS_RETURN_IF_ERROR(
        cublasGemmEx(cublas, CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(ncols),
                     static_cast<int>(rows), static_cast<int>(d), &one, q_operand, type,
                     static_cast<int>(d), stored_operand, type, static_cast<int>(d), &zero,
                     product[b].get(), CUDA_R_32F, static_cast<int>(ncols), CUBLAS_COMPUTE_32F,
                     CUBLAS_GEMM_DEFAULT),
        "region-word products (cublasGemmEx)");
    p.product = product[b].as<float>();
    if (!pipelined) {
      SCANSERVE_CUDA_RETURN_IF_ERROR(ck::Epilogue(p, plan, epi_scratch.as<float>(), stream),
                                     "fused epilogue");
      return absl::OkStatus();
    }
    SCANSERVE_CUDA_RETURN_IF_ERROR(cudaEventRecord(product_ready[b], stream), "order the epilogue");
    SCANSERVE_CUDA_RETURN_IF_ERROR(cudaStreamWaitEvent(epilogue_stream, product_ready[b], 0),
                                   "order the epilogue");
    SCANSERVE_CUDA_RETURN_IF_ERROR(
        ck::Epilogue(p, plan, epi_scratch.as<float>(), epilogue_stream), "fused epilogue");
    SCANSERVE_CUDA_RETURN_IF_ERROR(cudaEventRecord(product_free[b], epilogue_stream),
                                   "order the product buffers");
    return absl::OkStatus();
  };
  auto score_all = [&]() -> absl::Status {
    int64_t col = 0;
    for (const auto& sp : slabs) {
      const Slab& s = *sp;
      size_t i0 = 0;
      while (i0 < s.items.size()) {
        const size_t i1 = ChunkEnd(s.items, i0, chunk_rows);
        const int64_t row0 = s.items[i0].row_begin;
        const int64_t rows = s.items[i1 - 1].row_begin + s.items[i1 - 1].rows - row0;
        // fp8: widened on `stream`, after the previous chunk's GEMM has read the buffer.
        const absl::StatusOr<const void*> stored_operand = ChunkOperand(s, row0, rows);
        if (!stored_operand.ok()) return stored_operand.status();
        p.chunk_row0 = row0;
        p.items = s.items_dev.as<ck::ItemDev>();
        p.item_begin = static_cast<int>(i0);
        p.num_items = static_cast<int>(i1 - i0);
        p.stored_norms = s.norms.as<float>();
        p.stored_grams = stored_is_context ? s.grams.as<float>() : nullptr;
        p.col0 = col + static_cast<int64_t>(i0);
        SCANSERVE_RETURN_IF_ERROR(score_chunk(*stored_operand, rows));
        i0 = i1;
      }
      col += static_cast<int64_t>(s.items.size());
    }
    return absl::OkStatus();
  };
  absl::Status status = score_all();
  if (pipelined) {
    // Joined even after a failure: what `stream` does next (the scores' copy, the next pass's
    // uploads into buffers the epilogues read) must come after every queued epilogue.
    cudaError_t err = cudaEventRecord(epilogues_done, epilogue_stream);
    if (err == cudaSuccess) err = cudaStreamWaitEvent(stream, epilogues_done, 0);
    const absl::Status join =
        err == cudaSuccess ? absl::OkStatus()
                           : CudaStatus(err, "join the epilogues", __FILE__, __LINE__);
    if (!join.ok()) {
      // Nothing orders the streams: wait for the epilogues on the host instead.
      cudaStreamSynchronize(epilogue_stream);
      cudaGetLastError();
      if (status.ok()) status = join;
    }
  }
  return status;
}

// ---------------------------------------------------------------------------------------------

bool CudaScorer::DeviceAvailable(std::string* why) {
  int count = 0;
  const cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess || count == 0) {
    if (why != nullptr) {
      *why = err != cudaSuccess
                 ? absl::StrCat("cudaGetDeviceCount: ", cudaGetErrorName(err), " (",
                                cudaGetErrorString(err), ")")
                 : std::string("cudaGetDeviceCount found 0 devices");
    }
    cudaGetLastError();
    return false;
  }
  return true;
}

CudaScorer::CudaScorer(const ScorerConfig& config, const CudaScorerOptions& options,
                       std::unique_ptr<Impl> impl)
    : Scorer(config), options_(options), impl_(std::move(impl)) {}

CudaScorer::~CudaScorer() = default;

absl::StatusOr<std::unique_ptr<CudaScorer>> CudaScorer::Create(const ScorerConfig& config,
                                                               const CudaScorerOptions& options) {
  SCANSERVE_RETURN_IF_ERROR(ValidateScorerConfig(config));
  if (options.slab_rows < 1 || options.max_product_bytes < 1 || options.upload_bytes < 1 ||
      options.device < 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "CudaScorerOptions: slab_rows, max_product_bytes and upload_bytes must be >= 1 and "
        "device >= 0, got ",
        options.slab_rows, ", ", options.max_product_bytes, ", ", options.upload_bytes, " and ",
        options.device));
  }
  if (options.fused_blocks_per_sm < 1 || options.fused_blocks_per_sm > 2) {
    return absl::InvalidArgumentError(absl::StrCat(
        "CudaScorerOptions: fused_blocks_per_sm must be 1 or 2, got ", options.fused_blocks_per_sm));
  }
  if (options.fused_max_stages < ck::kFusedMinStages ||
      options.fused_max_stages > ck::kFusedMaxStages) {
    return absl::InvalidArgumentError(absl::StrCat(
        "CudaScorerOptions: fused_max_stages must be ", ck::kFusedMinStages, " to ",
        ck::kFusedMaxStages, ", got ", options.fused_max_stages));
  }
  if (config.dim > (int64_t{1} << 30)) {
    return absl::InvalidArgumentError(
        absl::StrCat("CudaScorer: dim ", config.dim, " is beyond cuBLAS's int sizes"));
  }
  std::string why;
  if (!DeviceAvailable(&why)) {
    return absl::FailedPreconditionError(absl::StrCat(
        "CudaScorer: no CUDA device is available (", why,
        "); use the cpu backend, or run on a machine with an NVIDIA GPU and driver"));
  }
  int count = 0;
  cudaGetDeviceCount(&count);
  if (options.device >= count) {
    return absl::FailedPreconditionError(absl::StrCat("CudaScorer: device ", options.device,
                                                      " requested but only ", count,
                                                      " CUDA device(s) present"));
  }
  auto impl = std::make_unique<Impl>();
  impl->device = options.device;
  DeviceGuard guard(options.device);
  SCANSERVE_CUDA_RETURN_IF_ERROR(cudaGetDeviceProperties(&impl->props, options.device),
                                 "cudaGetDeviceProperties");
  SCANSERVE_CUDA_RETURN_IF_ERROR(cudaStreamCreateWithFlags(&impl->stream, cudaStreamNonBlocking),
                                 "cudaStreamCreate");
  SCANSERVE_CUDA_RETURN_IF_ERROR(
      cudaStreamCreateWithFlags(&impl->epilogue_stream, cudaStreamNonBlocking), "cudaStreamCreate");
  for (cudaEvent_t* e : impl->Events()) {
    SCANSERVE_CUDA_RETURN_IF_ERROR(cudaEventCreateWithFlags(e, cudaEventDisableTiming),
                                   "cudaEventCreate");
  }
  SCANSERVE_CUBLAS_RETURN_IF_ERROR(cublasCreate(&impl->cublas), "cublasCreate");
  SCANSERVE_CUBLAS_RETURN_IF_ERROR(cublasSetStream(impl->cublas, impl->stream), "cublasSetStream");
  // fp32 products stay fp32 (no TF32): CUBLAS_COMPUTE_32F is passed explicitly as well.
  SCANSERVE_CUBLAS_RETURN_IF_ERROR(cublasSetMathMode(impl->cublas, CUBLAS_DEFAULT_MATH),
                                   "cublasSetMathMode");
  impl->dim = config.dim;
  impl->elem = config.storage == StorageType::kFloat32
                   ? ck::ElemType::kFloat32
                   : (config.storage == StorageType::kBFloat16 ? ck::ElemType::kBFloat16
                                                                : ck::ElemType::kFp8E4M3);
  impl->bf16_gemm = config.storage != StorageType::kFloat32;
  impl->split_queries = options.query_precision == CudaQueryPrecision::kBf16Split;
  const bool t2i = config.attention.cross_attn == CrossAttention::kTextToImage;
  impl->stored_is_context = t2i == (config.stored_kind == ItemKind::kImage);
  impl->attention = config.attention;
  impl->options = options;
  return std::unique_ptr<CudaScorer>(new CudaScorer(config, options, std::move(impl)));
}

std::string CudaScorer::DeviceDescription() const {
  const cudaDeviceProp& p = impl_->props;
  return absl::StrCat(p.name, " (sm_", p.major, p.minor, ", ",
                      absl::SixDigits(static_cast<double>(p.totalGlobalMem) / (1 << 30)), " GiB, ",
                      p.multiProcessorCount, " SMs)");
}

absl::Status CudaScorer::Synchronize() const {
  DeviceGuard guard(impl_->device);
  SCANSERVE_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(impl_->stream), "synchronize");
  return absl::OkStatus();
}

CudaScorer::PassCounts CudaScorer::pass_counts() const {
  std::lock_guard<std::mutex> lock(impl_->pass_mu);
  return impl_->passes;
}

void CudaScorer::set_pass_kernels(CudaPassKernels kernels) {
  std::lock_guard<std::mutex> lock(impl_->pass_mu);
  impl_->options.pass_kernels = kernels;
  options_.pass_kernels = kernels;
}

void CudaScorer::set_query_precision(CudaQueryPrecision precision) {
  std::lock_guard<std::mutex> lock(impl_->pass_mu);
  if (impl_->options.query_precision == precision) return;
  impl_->options.query_precision = precision;
  impl_->split_queries = precision == CudaQueryPrecision::kBf16Split;
  options_.query_precision = precision;
  impl_->chooser.Reset();
}

std::vector<PassKernelChooser::Bucket> CudaScorer::pass_kernel_choices() const {
  return impl_->chooser.Buckets();
}

std::vector<Scorer::KernelChoice> CudaScorer::KernelChoices() const {
  std::vector<KernelChoice> out;
  for (const PassKernelChooser::Bucket& b : pass_kernel_choices()) {
    KernelChoice c;
    c.min_query_rows = b.min_query_rows;
    c.max_query_rows = b.max_query_rows;
    if (b.decided()) c.kernel = PassKernelName(b.choice);
    for (PassKernel k : {PassKernel::kGemm, PassKernel::kFused}) {
      const double seconds = b.median_seconds[static_cast<int>(k)];
      if (seconds > 0) c.median_seconds.emplace_back(PassKernelName(k), seconds);
    }
    out.push_back(std::move(c));
  }
  return out;
}

void CudaScorer::set_fused_blocks_per_sm(int blocks) {
  std::lock_guard<std::mutex> lock(impl_->pass_mu);
  impl_->options.fused_blocks_per_sm = std::clamp(blocks, 1, 2);
  options_.fused_blocks_per_sm = impl_->options.fused_blocks_per_sm;
}

void CudaScorer::set_fused_max_stages(int stages) {
  std::lock_guard<std::mutex> lock(impl_->pass_mu);
  impl_->options.fused_max_stages = std::clamp(stages, ck::kFusedMinStages, ck::kFusedMaxStages);
  options_.fused_max_stages = impl_->options.fused_max_stages;
}

std::vector<std::pair<std::string, int64_t>> CudaScorer::KernelPasses() const {
  const PassCounts counts = pass_counts();
  return {{"fused", counts.fused}, {"gemm", counts.gemm}};
}

CudaScorer::FusedLaunch CudaScorer::fused_launch() const {
  std::lock_guard<std::mutex> lock(impl_->pass_mu);
  return impl_->fused_launch;
}

void CudaScorer::set_pipelined_epilogue(bool on) {
  std::lock_guard<std::mutex> lock(impl_->pass_mu);
  impl_->options.pipelined_epilogue = on;
  options_.pipelined_epilogue = on;
}

void CudaScorer::set_max_product_bytes(int64_t bytes) {
  std::lock_guard<std::mutex> lock(impl_->pass_mu);
  impl_->options.max_product_bytes = std::max<int64_t>(1, bytes);
  options_.max_product_bytes = impl_->options.max_product_bytes;
}

int64_t CudaScorer::size() const { return impl_->num_items; }

bool CudaScorer::Contains(int64_t key) const { return impl_->where.contains(key); }

std::vector<int64_t> CudaScorer::keys() const {
  std::vector<int64_t> out;
  out.reserve(impl_->num_items);
  for (const auto& s : impl_->slabs) out.insert(out.end(), s->keys.begin(), s->keys.end());
  return out;
}

int64_t CudaScorer::memory_bytes() const {
  int64_t bytes = 0;
  for (const auto& s : impl_->slabs) {
    bytes += s->used_rows * static_cast<int64_t>(impl_->row_bytes()) +
             s->gram_used * static_cast<int64_t>(sizeof(float)) +
             static_cast<int64_t>(s->items.size() * sizeof(ck::ItemDev) +
                                  s->tiles.size() * sizeof(ck::RowTileDev));
  }
  return bytes;
}

std::optional<Scorer::DeviceMemory> CudaScorer::DeviceMemoryInfo() const {
  DeviceGuard guard(impl_->device);
  size_t free_bytes = 0, total_bytes = 0;
  if (cudaMemGetInfo(&free_bytes, &total_bytes) != cudaSuccess) {
    cudaGetLastError();
    return std::nullopt;
  }
  return DeviceMemory{static_cast<int64_t>(free_bytes), static_cast<int64_t>(total_bytes)};
}

int64_t CudaScorer::MemoryCapacityBytes() const {
  const Impl& m = *impl_;
  const std::optional<DeviceMemory> device = DeviceMemoryInfo();
  if (!device.has_value()) return -1;
  int64_t allocated = 0;
  for (const auto& s : m.slabs) {
    for (const DeviceBuffer* b :
         {&s->features, &s->scales, &s->norms, &s->grams, &s->items_dev, &s->tiles_dev}) {
      allocated += static_cast<int64_t>(b->bytes());
    }
  }
  const int64_t slab = m.options.slab_rows * static_cast<int64_t>(m.row_bytes());
  return std::max<int64_t>(0, device->free_bytes + allocated - device->total_bytes / 20 - slab);
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

absl::Status CudaScorer::ScoreAllImpl(absl::Span<const ItemView> queries,
                                      FloatMatrix* scores) const {
  const Impl& m = *impl_;
  std::lock_guard<std::mutex> lock(m.pass_mu);
  if (!m.broken.ok()) return m.broken;
  DeviceGuard guard(m.device);
  return m.TimedPass([&]() -> absl::Status {
    SCANSERVE_RETURN_IF_ERROR(m.RunPass(queries));
    SCANSERVE_CUDA_RETURN_IF_ERROR(
        cudaMemcpyAsync(scores->data.data(), m.scores.get(), scores->data.size() * sizeof(float),
                        cudaMemcpyDeviceToHost, m.stream),
        "download scores");
    SCANSERVE_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(m.stream), "ScoreAll");
    return absl::OkStatus();
  });
}

absl::StatusOr<std::vector<std::vector<ScoredKey>>> CudaScorer::SearchImpl(
    absl::Span<const ItemView> queries, int k) const {
  if (k > kMaxDeviceTopK) return Scorer::SearchImpl(queries, k);
  const Impl& m = *impl_;
  std::lock_guard<std::mutex> lock(m.pass_mu);
  if (!m.broken.ok()) return m.broken;
  DeviceGuard guard(m.device);
  const int nq = static_cast<int>(queries.size());
  const int64_t n = m.num_items;
  if (m.col_keys_dirty) {
    const std::vector<int64_t> column_keys = keys();
    SCANSERVE_RETURN_IF_ERROR(m.col_keys.Upload(column_keys, m.stream, "column keys"));
    SCANSERVE_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(m.stream), "upload column keys");
    m.col_keys_dirty = false;
  }
  std::vector<ck::TopKCand> best(static_cast<size_t>(nq) * k);
  SCANSERVE_RETURN_IF_ERROR(m.TimedPass([&]() -> absl::Status {
    SCANSERVE_RETURN_IF_ERROR(m.RunPass(queries));
    const int64_t tile = ck::kTopKTile;
    int64_t tiles = (n + tile - 1) / tile;
    const size_t cand_bytes = static_cast<size_t>(nq) * tiles * k * sizeof(ck::TopKCand);
    SCANSERVE_RETURN_IF_ERROR(m.topk_a.Reserve(cand_bytes, "top-k candidates"));
    SCANSERVE_RETURN_IF_ERROR(m.topk_b.Reserve(cand_bytes, "top-k candidates"));
    SCANSERVE_CUDA_RETURN_IF_ERROR(
        ck::TopKFromScores(m.scores.as<float>(), n, n, m.col_keys.as<int64_t>(), nq, k,
                           m.topk_a.as<ck::TopKCand>(), m.stream),
        "top-k");
    const DeviceBuffer* cur = &m.topk_a;
    const DeviceBuffer* other = &m.topk_b;
    while (tiles > 1) {
      const int64_t cands = tiles * k;
      SCANSERVE_CUDA_RETURN_IF_ERROR(
          ck::TopKFromCandidates(cur->as<ck::TopKCand>(), cands, nq, k, other->as<ck::TopKCand>(),
                                 m.stream),
          "top-k merge");
      std::swap(cur, other);
      tiles = (cands + tile - 1) / tile;
    }
    SCANSERVE_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(best.data(), cur->get(),
                                                   best.size() * sizeof(ck::TopKCand),
                                                   cudaMemcpyDeviceToHost, m.stream),
                                   "download top-k");
    SCANSERVE_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(m.stream), "Search");
    return absl::OkStatus();
  }));
  std::vector<std::vector<ScoredKey>> out(nq);
  const int64_t take = std::min<int64_t>(k, n);
  for (int j = 0; j < nq; ++j) {
    out[j].reserve(take);
    for (int64_t t = 0; t < take; ++t) {
      const ck::TopKCand& c = best[static_cast<size_t>(j) * k + t];
      if (c.valid) out[j].push_back(ScoredKey{c.key, c.score});
    }
  }
  return out;
}

}  // namespace scanserve
