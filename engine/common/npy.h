// NumPy .npy files: the exchange format of SCAN's precomputed features ({split}_ims.npy) and of our
// tools' outputs (similarity matrices, dumped embeddings). Torch-free.
//
// Supported: format versions 1.0, 2.0 and 3.0; C order only; little-endian float32 ('<f4'),
// float64 ('<f8'), int32 ('<i4') and int64 ('<i8'); any rank (a rank-0 array holds one element).
// Data is read with a few large reads straight into the destination buffer, never parsed per
// element, so a (5000, 36, 2048) float32 split (1.5 GB) loads at disk speed; NpyFile reads a
// sub-range of the first axis without touching the rest of the file.
//
// Errors name the file and what is wrong: NOT_FOUND (no such file), INVALID_ARGUMENT (bad magic,
// fortran_order True, unsupported dtype '<f2', wrong rank/dtype for a typed reader), DATA_LOSS
// (truncated header or data: "expected N bytes, got M").
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "engine/common/matrix.h"

namespace scanserve {

enum class NpyDtype { kFloat32, kFloat64, kInt32, kInt64 };

// "<f4", "<f8", "<i4", "<i8".
const char* NpyDescr(NpyDtype dtype);
int NpyItemSize(NpyDtype dtype);

// What an .npy header says.
struct NpyHeader {
  NpyDtype dtype = NpyDtype::kFloat32;
  std::vector<int64_t> shape;  // empty for a rank-0 array
  int64_t data_offset = 0;     // bytes from the start of the file to the first element

  int64_t num_elements() const;  // product of shape (1 for rank 0)
  int64_t item_size() const { return NpyItemSize(dtype); }
  int64_t data_bytes() const { return num_elements() * item_size(); }
  // Elements per index of the first axis (product of shape[1:]); rank >= 1.
  int64_t row_elements() const;
  std::string ShapeString() const;  // "(5000, 36, 2048)", numpy's spelling
};

// An array read as stored: raw little-endian bytes of `dtype`.
struct NpyArray {
  NpyDtype dtype = NpyDtype::kFloat32;
  std::vector<int64_t> shape;
  std::vector<char> bytes;  // num_elements * item size, C order

  int64_t num_elements() const;
};

// An array converted to element type T on read (float from '<f4'/'<f8', int64 from '<i8'/'<i4').
template <typename T>
struct NpyTensor {
  std::vector<int64_t> shape;
  std::vector<T> data;  // C order
};

// An open .npy file whose header has been parsed and whose data size has been checked against the
// file size. Reads are positional (pread), so const reads may run concurrently.
class NpyFile {
 public:
  static absl::StatusOr<NpyFile> Open(const std::string& path);
  NpyFile(NpyFile&& other) noexcept;
  NpyFile& operator=(NpyFile&& other) noexcept;
  NpyFile(const NpyFile&) = delete;
  NpyFile& operator=(const NpyFile&) = delete;
  ~NpyFile();

  const std::string& path() const { return path_; }
  const NpyHeader& header() const { return header_; }

  // OK when rows [begin, begin + count) lie within the first axis (rank >= 1), else OUT_OF_RANGE.
  absl::Status CheckRowRange(int64_t begin, int64_t count) const;

  // Rows [begin, begin + count) of the first axis (rank >= 1), converted to float32 into `out`,
  // which must hold count * header().row_elements() floats. Float dtypes only.
  absl::Status ReadRowsAsFloat32(int64_t begin, int64_t count, float* out) const;
  // Same for the raw bytes of any dtype; `out` holds count * row_elements * item_size bytes.
  absl::Status ReadRowsRaw(int64_t begin, int64_t count, void* out) const;

  // The whole array: as stored (data_bytes() bytes), as float32 (float dtypes), as int64 (integer
  // dtypes); `out` holds num_elements() values.
  absl::Status ReadAllRaw(void* out) const;
  absl::Status ReadAllAsFloat32(float* out) const;
  absl::Status ReadAllAsInt64(int64_t* out) const;

 private:
  NpyFile(std::string path, int fd, NpyHeader header)
      : path_(std::move(path)), fd_(fd), header_(std::move(header)) {}
  // Elements [first, first + count) of the flattened array, converted to `as` (a widening within
  // the float or the integer family, or none).
  absl::Status ReadElements(int64_t first, int64_t count, NpyDtype as, void* out) const;

  std::string path_;
  int fd_ = -1;  // owned
  NpyHeader header_;
};

// Whole-file readers.
absl::StatusOr<NpyArray> ReadNpy(const std::string& path);
absl::StatusOr<NpyTensor<float>> ReadNpyAsFloat32(const std::string& path);
absl::StatusOr<NpyTensor<int64_t>> ReadNpyAsInt64(const std::string& path);

// Rows [begin, begin + count) of the first axis, as stored; shape[0] of the result is `count`.
absl::StatusOr<NpyArray> ReadNpyRows(const std::string& path, int64_t begin, int64_t count);
absl::StatusOr<NpyTensor<float>> ReadNpyRowsAsFloat32(const std::string& path, int64_t begin,
                                                      int64_t count);

// Typed readers that also check the rank: a 2-D float array as a FloatMatrix, a 1-D integer array.
absl::StatusOr<FloatMatrix> ReadNpyFloatMatrix(const std::string& path);
absl::StatusOr<std::vector<int64_t>> ReadNpyInt64Vector(const std::string& path);

// Writers: a version 1.0 header (2.0 when the header would not fit), C order, little-endian. The
// data holds the product of `shape` elements. An existing file is replaced.
absl::Status WriteNpyFloat32(const std::string& path, absl::Span<const int64_t> shape,
                             const float* data);
absl::Status WriteNpyInt64(const std::string& path, absl::Span<const int64_t> shape,
                           const int64_t* data);
absl::Status WriteNpyFloatMatrix(const std::string& path, const FloatMatrix& matrix);

}  // namespace scanserve
