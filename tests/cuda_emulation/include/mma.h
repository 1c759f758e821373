// CUDA emulation (tests only): nvcuda::wmma for 16x16x16 tiles with bf16 or fp32 elements. As on
// the device, a fragment is spread over the warp (lane l holds elements 8l .. 8l + 7 of the tile
// in row-major order: a mapping code must not rely on, and cannot here), loads and stores are per
// lane, and mma_sync is warp-collective: it runs once the 32 lanes have all arrived. Loads and
// stores check the documented pointer alignment (256 bits) and leading-dimension rules.
#pragma once

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <type_traits>

#include "cuda_bf16.h"
#include "scanserve_emu/kernel_language.h"

namespace nvcuda {
namespace wmma {

struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
enum layout_t { mem_row_major, mem_col_major };

template <typename Use, int M, int N, int K, typename T, typename Layout = void>
class fragment {
  static_assert(M == 16 && N == 16 && K == 16, "the emulation has 16x16x16 tiles only");

 public:
  static constexpr int num_elements = 8;
  T x[num_elements];
};

}  // namespace wmma
}  // namespace nvcuda

namespace scanserve_emu {
namespace wmma_detail {

constexpr int kTile = 16;
constexpr int kPerLane = 8;

inline int Lane() { return static_cast<int>(ThreadIdx().x + BlockDim().x * (ThreadIdx().y + BlockDim().y * ThreadIdx().z)) % 32; }

inline float ToFloat(float v) { return v; }
inline float ToFloat(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T>
void CheckOperand(const void* ptr, unsigned ldm, const char* what) {
  const unsigned ldm_multiple = 16 / sizeof(T);
  if (reinterpret_cast<uintptr_t>(ptr) % 32 != 0 || ldm % ldm_multiple != 0) {
    std::fprintf(stderr,
                 "CUDA emulation: wmma::%s with pointer %p (must be 256-bit aligned) and ldm %u "
                 "(must be a multiple of %u elements)\n",
                 what, ptr, ldm, ldm_multiple);
    std::abort();
  }
}

// Element e of this lane: row and column of the tile.
inline int RowOf(int lane, int e) { return (lane * kPerLane + e) / kTile; }
inline int ColOf(int lane, int e) { return (lane * kPerLane + e) % kTile; }

template <typename T>
void Load(T* x, const T* ptr, unsigned ldm, bool row_major_memory) {
  CheckOperand<T>(ptr, ldm, "load_matrix_sync");
  const int lane = Lane();
  for (int e = 0; e < kPerLane; ++e) {
    const int r = RowOf(lane, e), c = ColOf(lane, e);
    x[e] = row_major_memory ? ptr[r * static_cast<int64_t>(ldm) + c]
                            : ptr[c * static_cast<int64_t>(ldm) + r];
  }
}

template <typename T>
struct MmaLane {
  float* d;
  const T* a;
  const T* b;
  const float* c;
};

template <typename T>
void ResolveMma(void* const* lanes, unsigned /*mask*/) {
  auto lane = [&](int l) { return static_cast<const MmaLane<T>*>(lanes[l]); };
  float d[kTile][kTile];
  for (int m = 0; m < kTile; ++m) {
    for (int n = 0; n < kTile; ++n) {
      const int f = m * kTile + n;
      float acc = lane(f / kPerLane)->c[f % kPerLane];
      for (int k = 0; k < kTile; ++k) {
        const int fa = m * kTile + k, fb = k * kTile + n;
        acc += ToFloat(lane(fa / kPerLane)->a[fa % kPerLane]) *
               ToFloat(lane(fb / kPerLane)->b[fb % kPerLane]);
      }
      d[m][n] = acc;
    }
  }
  for (int l = 0; l < 32; ++l) {
    for (int e = 0; e < kPerLane; ++e) lane(l)->d[e] = d[RowOf(l, e)][ColOf(l, e)];
  }
}

}  // namespace wmma_detail
}  // namespace scanserve_emu

namespace nvcuda {
namespace wmma {

template <typename Use, typename T, typename Layout>
void load_matrix_sync(fragment<Use, 16, 16, 16, T, Layout>& a, const T* ptr, unsigned ldm) {
  static_assert(!std::is_same<Use, accumulator>::value, "accumulators load with a layout_t");
  scanserve_emu::wmma_detail::Load(a.x, ptr, ldm, std::is_same<Layout, row_major>::value);
}

template <typename T>
void load_matrix_sync(fragment<accumulator, 16, 16, 16, T>& a, const T* ptr, unsigned ldm,
                      layout_t layout) {
  scanserve_emu::wmma_detail::Load(a.x, ptr, ldm, layout == mem_row_major);
}

template <typename T>
void store_matrix_sync(T* ptr, const fragment<accumulator, 16, 16, 16, T>& a, unsigned ldm,
                       layout_t layout) {
  using namespace scanserve_emu::wmma_detail;
  CheckOperand<T>(ptr, ldm, "store_matrix_sync");
  const int lane = Lane();
  for (int e = 0; e < kPerLane; ++e) {
    const int r = RowOf(lane, e), c = ColOf(lane, e);
    if (layout == mem_row_major) {
      ptr[r * static_cast<int64_t>(ldm) + c] = a.x[e];
    } else {
      ptr[c * static_cast<int64_t>(ldm) + r] = a.x[e];
    }
  }
}

template <typename Use, typename T, typename Layout>
void fill_fragment(fragment<Use, 16, 16, 16, T, Layout>& a, T value) {
  for (T& v : a.x) v = value;
}

template <typename T, typename LayoutA, typename LayoutB>
void mma_sync(fragment<accumulator, 16, 16, 16, float>& d,
              const fragment<matrix_a, 16, 16, 16, T, LayoutA>& a,
              const fragment<matrix_b, 16, 16, 16, T, LayoutB>& b,
              const fragment<accumulator, 16, 16, 16, float>& c, int line = __builtin_LINE()) {
  scanserve_emu::wmma_detail::MmaLane<T> lane{d.x, a.x, b.x, c.x};
  scanserve_emu::WarpCollective(0xffffffffu, line, &scanserve_emu::wmma_detail::ResolveMma<T>,
                                &lane);
}

}  // namespace wmma
}  // namespace nvcuda
