#include "engine/scoring/row_arena.h"

#include <cstring>

#include "engine/common/bfloat16.h"
#include "engine/common/fp8_e4m3.h"
#include "engine/common/vector_growth.h"

namespace scanserve {

void RowArena::Resize(int64_t rows) {
  switch (storage_) {
    case StorageType::kFloat32:
      GrowTo(f32_, rows * dim_);
      break;
    case StorageType::kBFloat16:
      GrowTo(bf16_, rows * dim_);
      break;
    case StorageType::kFp8E4M3:
      GrowTo(fp8_, rows * dim_);
      GrowTo(fp8_scales_, rows);
      break;
  }
  rows_ = rows;
}

void RowArena::Store(const float* values, int64_t rows, int64_t row) {
  switch (storage_) {
    case StorageType::kFloat32:
      std::memcpy(f32_.data() + row * dim_, values, rows * dim_ * sizeof(float));
      break;
    case StorageType::kBFloat16:
      FloatToBFloat16(values, bf16_.data() + row * dim_, rows * dim_);
      break;
    case StorageType::kFp8E4M3:
      for (int64_t r = 0; r < rows; ++r) {
        FloatRowToFp8E4M3(values + r * dim_, dim_, fp8_.data() + (row + r) * dim_,
                          fp8_scales_.data() + row + r);
      }
      break;
  }
}

void RowArena::Widen(int64_t row, int64_t rows, float* dst) const {
  switch (storage_) {
    case StorageType::kFloat32:
      std::memcpy(dst, f32_.data() + row * dim_, rows * dim_ * sizeof(float));
      break;
    case StorageType::kBFloat16:
      BFloat16ToFloat(bf16_.data() + row * dim_, dst, rows * dim_);
      break;
    case StorageType::kFp8E4M3:
      Fp8E4M3RowsToFloat(fp8_.data() + row * dim_, fp8_scales_.data() + row, rows, dim_, dst);
      break;
  }
}

void RowArena::CopyRows(const RowArena& from, int64_t src_row, int64_t rows, int64_t dst_row) {
  const size_t n = static_cast<size_t>(rows * dim_);
  switch (storage_) {
    case StorageType::kFloat32:
      std::memcpy(f32_.data() + dst_row * dim_, from.f32_.data() + src_row * dim_, n * sizeof(float));
      break;
    case StorageType::kBFloat16:
      std::memcpy(bf16_.data() + dst_row * dim_, from.bf16_.data() + src_row * dim_,
                  n * sizeof(uint16_t));
      break;
    case StorageType::kFp8E4M3:
      std::memcpy(fp8_.data() + dst_row * dim_, from.fp8_.data() + src_row * dim_, n);
      std::memcpy(fp8_scales_.data() + dst_row, from.fp8_scales_.data() + src_row,
                  rows * sizeof(float));
      break;
  }
}

int64_t RowArena::memory_bytes() const {
  return static_cast<int64_t>(f32_.size() * sizeof(float) + bf16_.size() * sizeof(uint16_t) +
                              fp8_.size() + fp8_scales_.size() * sizeof(float));
}

}  // namespace scanserve
