// RowArena: the CPU scorer's stored rows in one of the storage types (scorer.h), contiguous and in
// arena order. fp32 rows are read in place; bf16 and fp8 rows are widened to fp32 on demand
// (exactly: a widened value is the stored value).
#pragma once

#include <cstdint>
#include <vector>

#include "engine/scoring/scorer.h"

namespace scanserve {

class RowArena {
 public:
  RowArena(StorageType storage, int64_t dim) : storage_(storage), dim_(dim) {}

  StorageType storage() const { return storage_; }
  int64_t rows() const { return rows_; }
  // True when rows must be widened to be read as fp32.
  bool narrowed() const { return storage_ != StorageType::kFloat32; }

  // To `rows` rows, keeping the first min(rows, rows()); growth reserves geometrically so that
  // many small Adds stay linear. Throws std::bad_alloc (the caller turns it into a status).
  void Resize(int64_t rows);
  // Rounds rows x dim values to the storage type into rows [row, row + rows).
  void Store(const float* values, int64_t rows, int64_t row);
  // Rows [row, row + rows) as fp32 into dst (rows x dim).
  void Widen(int64_t row, int64_t rows, float* dst) const;
  // fp32 storage only: the rows themselves.
  const float* Float32Rows(int64_t row) const { return f32_.data() + row * dim_; }
  // bf16 storage only: the rows themselves.
  const uint16_t* BFloat16Rows(int64_t row) const { return bf16_.data() + row * dim_; }
  // Copies rows [src_row, src_row + rows) of `from` (same storage and dim) to rows from dst_row.
  void CopyRows(const RowArena& from, int64_t src_row, int64_t rows, int64_t dst_row);
  int64_t memory_bytes() const;

 private:
  StorageType storage_;
  int64_t dim_;
  int64_t rows_ = 0;
  std::vector<float> f32_;          // kFloat32: rows x dim
  std::vector<uint16_t> bf16_;      // kBFloat16: rows x dim
  std::vector<uint8_t> fp8_;        // kFp8E4M3: rows x dim codes
  std::vector<float> fp8_scales_;   // kFp8E4M3: one power-of-two scale per row
};

}  // namespace scanserve
