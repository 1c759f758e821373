#include "engine/common/npy.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <limits>
#include <type_traits>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/string_view.h"
#include "engine/common/status_macros.h"

namespace scanserve {
namespace {

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__,
              "the .npy reader copies little-endian data verbatim");

constexpr char kMagic[] = "\x93NUMPY";
constexpr size_t kMagicSize = 6;
// Bytes per pread/fwrite call: Linux transfers at most ~2 GiB per call anyway.
constexpr int64_t kIoChunkBytes = int64_t{1} << 30;
// Elements converted per step when the stored dtype is wider or narrower than the requested one,
// so a conversion never needs a second full-size buffer.
constexpr int64_t kConvertChunkElements = int64_t{1} << 20;
// A header longer than this is not a real .npy file (numpy itself caps it at 10000 bytes).
constexpr uint32_t kMaxHeaderBytes = 1u << 20;

absl::Status ErrnoError(int err, const std::string& path, absl::string_view what) {
  return absl::ErrnoToStatus(err, absl::StrCat(path, ": ", what));
}

// ---- Header parsing: the header is a Python dict literal, e.g.
// {'descr': '<f4', 'fortran_order': False, 'shape': (5000, 36, 2048), }

class HeaderParser {
 public:
  explicit HeaderParser(absl::string_view text) : text_(text) {}

  absl::Status Parse(NpyHeader* header, const std::string& path) {
    bool have_descr = false, have_order = false, have_shape = false;
    SkipSpace();
    if (!Consume('{')) return Error(path, "expected '{'");
    while (true) {
      SkipSpace();
      if (Consume('}')) break;
      std::string key;
      if (!ParseString(&key)) return Error(path, "expected a quoted key");
      SkipSpace();
      if (!Consume(':')) return Error(path, absl::StrCat("expected ':' after '", key, "'"));
      SkipSpace();
      if (key == "descr") {
        std::string descr;
        if (!ParseString(&descr)) {
          return absl::InvalidArgumentError(absl::StrCat(
              path, ": unsupported dtype (structured or non-string 'descr'); supported: <f4 <f8 "
                    "<i4 <i8"));
        }
        if (descr == "<f4") {
          header->dtype = NpyDtype::kFloat32;
        } else if (descr == "<f8") {
          header->dtype = NpyDtype::kFloat64;
        } else if (descr == "<i4") {
          header->dtype = NpyDtype::kInt32;
        } else if (descr == "<i8") {
          header->dtype = NpyDtype::kInt64;
        } else {
          return absl::InvalidArgumentError(absl::StrCat(
              path, ": unsupported dtype '", descr, "' (supported: <f4 <f8 <i4 <i8)"));
        }
        have_descr = true;
      } else if (key == "fortran_order") {
        bool fortran = false;
        if (ConsumeWord("True")) {
          fortran = true;
        } else if (!ConsumeWord("False")) {
          return Error(path, "'fortran_order' is neither True nor False");
        }
        if (fortran) {
          return absl::InvalidArgumentError(absl::StrCat(
              path, ": fortran_order True is not supported (save a C-ordered array, e.g. "
                    "np.ascontiguousarray)"));
        }
        have_order = true;
      } else if (key == "shape") {
        if (!ParseShape(&header->shape)) return Error(path, "malformed 'shape' tuple");
        have_shape = true;
      } else {
        return Error(path, absl::StrCat("unexpected key '", key, "'"));
      }
      SkipSpace();
      if (Consume(',')) continue;
      SkipSpace();
      if (Consume('}')) break;
      return Error(path, "expected ',' or '}'");
    }
    if (!have_descr || !have_order || !have_shape) {
      return Error(path, "the header lacks one of 'descr', 'fortran_order', 'shape'");
    }
    return absl::OkStatus();
  }

 private:
  static absl::Status Error(const std::string& path, absl::string_view what) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": malformed .npy header: ", what));
  }
  void SkipSpace() {
    while (pos_ < text_.size() && absl::ascii_isspace(static_cast<unsigned char>(text_[pos_]))) {
      ++pos_;
    }
  }
  bool Consume(char c) {
    if (pos_ < text_.size() && text_[pos_] == c) {
      ++pos_;
      return true;
    }
    return false;
  }
  bool ConsumeWord(absl::string_view word) {
    if (text_.substr(pos_, word.size()) != word) return false;
    pos_ += word.size();
    return true;
  }
  bool ParseString(std::string* out) {
    if (pos_ >= text_.size() || (text_[pos_] != '\'' && text_[pos_] != '"')) return false;
    const char quote = text_[pos_++];
    const size_t end = text_.find(quote, pos_);
    if (end == absl::string_view::npos) return false;
    *out = std::string(text_.substr(pos_, end - pos_));
    pos_ = end + 1;
    return true;
  }
  // "()", "(3,)", "(3, 4)", and Python 2's "(3L, 4L)".
  bool ParseShape(std::vector<int64_t>* shape) {
    shape->clear();
    if (!Consume('(')) return false;
    while (true) {
      SkipSpace();
      if (Consume(')')) return true;
      const size_t start = pos_;
      while (pos_ < text_.size() && absl::ascii_isdigit(static_cast<unsigned char>(text_[pos_]))) {
        ++pos_;
      }
      int64_t dim = 0;
      if (pos_ == start || !absl::SimpleAtoi(text_.substr(start, pos_ - start), &dim)) return false;
      Consume('L');
      shape->push_back(dim);
      SkipSpace();
      if (Consume(',')) continue;
      SkipSpace();
      if (Consume(')')) return true;
      return false;
    }
  }

  absl::string_view text_;
  size_t pos_ = 0;
};

// Reads exactly `size` bytes at `offset`; a short read means the file shrank or is truncated.
absl::Status PreadFully(int fd, const std::string& path, int64_t offset, int64_t size, void* out) {
  char* dst = static_cast<char*>(out);
  int64_t done = 0;
  while (done < size) {
    const size_t want = static_cast<size_t>(std::min(size - done, kIoChunkBytes));
    const ssize_t got = ::pread(fd, dst + done, want, static_cast<off_t>(offset + done));
    if (got < 0) {
      if (errno == EINTR) continue;
      return ErrnoError(errno, path, "read failed");
    }
    if (got == 0) {
      return absl::DataLossError(absl::StrCat(path, ": truncated: expected ", size,
                                              " bytes at offset ", offset, ", got ", done));
    }
    done += got;
  }
  return absl::OkStatus();
}

bool MultiplyOverflows(int64_t a, int64_t b, int64_t* out) {
  return __builtin_mul_overflow(a, b, out);
}

// Reads `count` stored elements of type Src at `offset`, converting them to Dst, in bounded chunks.
template <typename Src, typename Dst>
absl::Status ReadConverted(int fd, const std::string& path, int64_t offset, int64_t count,
                           Dst* out) {
  if constexpr (std::is_same_v<Src, Dst>) {
    return PreadFully(fd, path, offset, count * static_cast<int64_t>(sizeof(Src)), out);
  } else {
    std::vector<Src> buffer(static_cast<size_t>(std::min(count, kConvertChunkElements)));
    for (int64_t done = 0; done < count;) {
      const int64_t n = std::min(count - done, kConvertChunkElements);
      SCANSERVE_RETURN_IF_ERROR(PreadFully(fd, path, offset + done * int64_t{sizeof(Src)},
                                           n * int64_t{sizeof(Src)}, buffer.data()));
      for (int64_t i = 0; i < n; ++i) out[done + i] = static_cast<Dst>(buffer[static_cast<size_t>(i)]);
      done += n;
    }
    return absl::OkStatus();
  }
}

std::string ShapeToString(absl::Span<const int64_t> shape) {
  if (shape.size() == 1) return absl::StrCat("(", shape[0], ",)");
  return absl::StrCat("(", absl::StrJoin(shape, ", "), ")");
}

absl::Status WriteNpy(const std::string& path, NpyDtype dtype, absl::Span<const int64_t> shape,
                      const void* data) {
  int64_t elements = 1;
  for (int64_t d : shape) {
    if (d < 0 || MultiplyOverflows(elements, d, &elements)) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ": cannot write shape ", ShapeToString(shape)));
    }
  }
  int64_t data_bytes = 0;
  if (MultiplyOverflows(elements, NpyItemSize(dtype), &data_bytes)) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": array too large"));
  }
  if (data_bytes > 0 && data == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": no data for shape ", ShapeToString(shape)));
  }

  // numpy pads the header with spaces and a final newline so the data starts 64-byte aligned.
  std::string dict = absl::StrCat("{'descr': '", NpyDescr(dtype),
                                  "', 'fortran_order': False, 'shape': ", ShapeToString(shape),
                                  ", }");
  int version = 1;
  size_t preamble = kMagicSize + 2 + 2;
  size_t total = preamble + dict.size() + 1;
  if (((total + 63) / 64) * 64 - preamble > 65535) {
    version = 2;
    preamble = kMagicSize + 2 + 4;
    total = preamble + dict.size() + 1;
  }
  const size_t padded = ((total + 63) / 64) * 64;
  dict.append(padded - total, ' ');
  dict.push_back('\n');
  const uint32_t header_len = static_cast<uint32_t>(dict.size());

  std::string head(kMagic, kMagicSize);
  head.push_back(static_cast<char>(version));
  head.push_back(0);
  if (version == 1) {
    head.push_back(static_cast<char>(header_len & 0xff));
    head.push_back(static_cast<char>((header_len >> 8) & 0xff));
  } else {
    for (int i = 0; i < 4; ++i) head.push_back(static_cast<char>((header_len >> (8 * i)) & 0xff));
  }
  head += dict;

  std::FILE* f = std::fopen(path.c_str(), "wb");
  if (f == nullptr) return ErrnoError(errno, path, "cannot open for writing");
  bool ok = std::fwrite(head.data(), 1, head.size(), f) == head.size();
  const char* src = static_cast<const char*>(data);
  for (int64_t done = 0; ok && done < data_bytes;) {
    const size_t n = static_cast<size_t>(std::min(data_bytes - done, kIoChunkBytes));
    ok = std::fwrite(src + done, 1, n, f) == n;
    done += static_cast<int64_t>(n);
  }
  const int write_errno = errno;
  if (std::fclose(f) != 0 && ok) return ErrnoError(errno, path, "write failed");
  if (!ok) return ErrnoError(write_errno, path, "write failed");
  return absl::OkStatus();
}

absl::Status NeedFloat(const NpyFile& file) {
  const NpyDtype dtype = file.header().dtype;
  if (dtype == NpyDtype::kFloat32 || dtype == NpyDtype::kFloat64) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat(file.path(), ": expected a float array (<f4 or <f8), got dtype '",
                                                 NpyDescr(dtype), "'"));
}

absl::Status NeedInteger(const NpyFile& file) {
  const NpyDtype dtype = file.header().dtype;
  if (dtype == NpyDtype::kInt32 || dtype == NpyDtype::kInt64) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat(
      file.path(), ": expected an integer array (<i4 or <i8), got dtype '", NpyDescr(dtype), "'"));
}

absl::Status NeedRank(const NpyFile& file, size_t rank) {
  if (file.header().shape.size() == rank) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat(file.path(), ": expected a ", rank,
                                                 "-D array, got shape ",
                                                 file.header().ShapeString()));
}

}  // namespace

const char* NpyDescr(NpyDtype dtype) {
  switch (dtype) {
    case NpyDtype::kFloat32:
      return "<f4";
    case NpyDtype::kFloat64:
      return "<f8";
    case NpyDtype::kInt32:
      return "<i4";
    case NpyDtype::kInt64:
      return "<i8";
  }
  return "?";
}

int NpyItemSize(NpyDtype dtype) {
  switch (dtype) {
    case NpyDtype::kFloat32:
    case NpyDtype::kInt32:
      return 4;
    case NpyDtype::kFloat64:
    case NpyDtype::kInt64:
      return 8;
  }
  return 0;
}

int64_t NpyHeader::num_elements() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

int64_t NpyHeader::row_elements() const {
  int64_t n = 1;
  for (size_t i = 1; i < shape.size(); ++i) n *= shape[i];
  return n;
}

std::string NpyHeader::ShapeString() const { return ShapeToString(shape); }

int64_t NpyArray::num_elements() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

// ---- NpyFile

absl::StatusOr<NpyFile> NpyFile::Open(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return ErrnoError(errno, path, "cannot open");
  // From here on the NpyFile (or this guard) owns fd.
  NpyFile file(path, fd, NpyHeader{});

  struct stat st;
  if (::fstat(fd, &st) != 0) return ErrnoError(errno, path, "cannot stat");
  if (S_ISDIR(st.st_mode)) return absl::InvalidArgumentError(absl::StrCat(path, ": is a directory"));
  const int64_t file_size = st.st_size;

  unsigned char preamble[12];
  const int64_t preamble_read = std::min<int64_t>(file_size, sizeof(preamble));
  SCANSERVE_RETURN_IF_ERROR(PreadFully(fd, path, 0, preamble_read, preamble));
  if (file_size < static_cast<int64_t>(kMagicSize) ||
      std::memcmp(preamble, kMagic, kMagicSize) != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": bad magic: not a NumPy .npy file (expected \\x93NUMPY)"));
  }
  if (file_size < 10) {
    return absl::DataLossError(absl::StrCat(path, ": truncated header: file has ", file_size, " bytes"));
  }
  const int major = preamble[6], minor = preamble[7];
  if ((major != 1 && major != 2 && major != 3) || minor != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": unsupported .npy format version ", major, ".", minor,
                     " (supported: 1.0, 2.0, 3.0)"));
  }
  int64_t header_start = 0;
  uint32_t header_len = 0;
  if (major == 1) {
    header_start = 10;
    header_len = preamble[8] | (uint32_t{preamble[9]} << 8);
  } else {
    if (file_size < 12) {
      return absl::DataLossError(absl::StrCat(path, ": truncated header: file has ", file_size, " bytes"));
    }
    header_start = 12;
    header_len = preamble[8] | (uint32_t{preamble[9]} << 8) | (uint32_t{preamble[10]} << 16) |
                 (uint32_t{preamble[11]} << 24);
  }
  if (header_len > kMaxHeaderBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": malformed .npy header: header length ", header_len, " is implausible"));
  }
  if (header_start + header_len > file_size) {
    return absl::DataLossError(absl::StrCat(path, ": truncated header: expected ", header_len,
                                            " bytes, got ", file_size - header_start));
  }
  std::string text(header_len, '\0');
  SCANSERVE_RETURN_IF_ERROR(PreadFully(fd, path, header_start, header_len, text.data()));

  NpyHeader header;
  SCANSERVE_RETURN_IF_ERROR(HeaderParser(text).Parse(&header, path));
  header.data_offset = header_start + header_len;
  int64_t elements = 1, bytes = 0;
  for (int64_t d : header.shape) {
    if (MultiplyOverflows(elements, d, &elements)) {
      return absl::InvalidArgumentError(absl::StrCat(path, ": shape ", header.ShapeString(), " overflows"));
    }
  }
  if (MultiplyOverflows(elements, header.item_size(), &bytes)) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": shape ", header.ShapeString(), " overflows"));
  }
  const int64_t available = file_size - header.data_offset;
  if (available < bytes) {
    return absl::DataLossError(absl::StrCat(path, ": truncated: expected ", bytes,
                                            " bytes of data for shape ", header.ShapeString(), " ",
                                            NpyDescr(header.dtype), ", got ", available));
  }
  file.header_ = std::move(header);
  return file;
}

NpyFile::NpyFile(NpyFile&& other) noexcept
    : path_(std::move(other.path_)), fd_(std::exchange(other.fd_, -1)),
      header_(std::move(other.header_)) {}

NpyFile& NpyFile::operator=(NpyFile&& other) noexcept {
  if (this != &other) {
    if (fd_ >= 0) ::close(fd_);
    path_ = std::move(other.path_);
    fd_ = std::exchange(other.fd_, -1);
    header_ = std::move(other.header_);
  }
  return *this;
}

NpyFile::~NpyFile() {
  if (fd_ >= 0) ::close(fd_);
}

absl::Status NpyFile::CheckRowRange(int64_t begin, int64_t count) const {
  if (header_.shape.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(path_, ": cannot read rows of a 0-D array"));
  }
  const int64_t rows = header_.shape[0];
  if (begin < 0 || count < 0 || begin > rows || count > rows - begin) {
    return absl::OutOfRangeError(absl::StrCat(path_, ": rows [", begin, ", ", begin + count,
                                              ") are outside the first axis of shape ",
                                              header_.ShapeString()));
  }
  return absl::OkStatus();
}

absl::Status NpyFile::ReadElements(int64_t first, int64_t count, NpyDtype as, void* out) const {
  const int64_t offset = header_.data_offset + first * header_.item_size();
  switch (header_.dtype) {
    case NpyDtype::kFloat32:
      if (as == NpyDtype::kFloat32) {
        return ReadConverted<float, float>(fd_, path_, offset, count, static_cast<float*>(out));
      }
      break;
    case NpyDtype::kFloat64:
      if (as == NpyDtype::kFloat32) {
        return ReadConverted<double, float>(fd_, path_, offset, count, static_cast<float*>(out));
      }
      if (as == NpyDtype::kFloat64) {
        return ReadConverted<double, double>(fd_, path_, offset, count, static_cast<double*>(out));
      }
      break;
    case NpyDtype::kInt32:
      if (as == NpyDtype::kInt64) {
        return ReadConverted<int32_t, int64_t>(fd_, path_, offset, count,
                                               static_cast<int64_t*>(out));
      }
      if (as == NpyDtype::kInt32) {
        return ReadConverted<int32_t, int32_t>(fd_, path_, offset, count,
                                               static_cast<int32_t*>(out));
      }
      break;
    case NpyDtype::kInt64:
      if (as == NpyDtype::kInt64) {
        return ReadConverted<int64_t, int64_t>(fd_, path_, offset, count,
                                               static_cast<int64_t*>(out));
      }
      break;
  }
  const bool want_float = as == NpyDtype::kFloat32 || as == NpyDtype::kFloat64;
  return absl::InvalidArgumentError(absl::StrCat(
      path_, ": expected ", want_float ? "a float array (<f4 or <f8)" : "an integer array (<i4 or <i8)",
      ", got dtype '", NpyDescr(header_.dtype), "'"));
}

absl::Status NpyFile::ReadRowsRaw(int64_t begin, int64_t count, void* out) const {
  SCANSERVE_RETURN_IF_ERROR(CheckRowRange(begin, count));
  const int64_t row_elements = header_.row_elements();
  return ReadElements(begin * row_elements, count * row_elements, header_.dtype, out);
}

absl::Status NpyFile::ReadRowsAsFloat32(int64_t begin, int64_t count, float* out) const {
  SCANSERVE_RETURN_IF_ERROR(CheckRowRange(begin, count));
  const int64_t row_elements = header_.row_elements();
  return ReadElements(begin * row_elements, count * row_elements, NpyDtype::kFloat32, out);
}

absl::Status NpyFile::ReadAllRaw(void* out) const {
  return ReadElements(0, header_.num_elements(), header_.dtype, out);
}

absl::Status NpyFile::ReadAllAsFloat32(float* out) const {
  return ReadElements(0, header_.num_elements(), NpyDtype::kFloat32, out);
}

absl::Status NpyFile::ReadAllAsInt64(int64_t* out) const {
  return ReadElements(0, header_.num_elements(), NpyDtype::kInt64, out);
}

// ---- Whole-file and typed readers

absl::StatusOr<NpyArray> ReadNpy(const std::string& path) {
  SCANSERVE_ASSIGN_OR_RETURN(NpyFile file, NpyFile::Open(path));
  NpyArray array;
  array.dtype = file.header().dtype;
  array.shape = file.header().shape;
  array.bytes.resize(static_cast<size_t>(file.header().data_bytes()));
  SCANSERVE_RETURN_IF_ERROR(file.ReadAllRaw(array.bytes.data()));
  return array;
}

absl::StatusOr<NpyTensor<float>> ReadNpyAsFloat32(const std::string& path) {
  SCANSERVE_ASSIGN_OR_RETURN(NpyFile file, NpyFile::Open(path));
  SCANSERVE_RETURN_IF_ERROR(NeedFloat(file));
  NpyTensor<float> tensor;
  tensor.shape = file.header().shape;
  tensor.data.resize(static_cast<size_t>(file.header().num_elements()));
  SCANSERVE_RETURN_IF_ERROR(file.ReadAllAsFloat32(tensor.data.data()));
  return tensor;
}

absl::StatusOr<NpyTensor<int64_t>> ReadNpyAsInt64(const std::string& path) {
  SCANSERVE_ASSIGN_OR_RETURN(NpyFile file, NpyFile::Open(path));
  SCANSERVE_RETURN_IF_ERROR(NeedInteger(file));
  NpyTensor<int64_t> tensor;
  tensor.shape = file.header().shape;
  tensor.data.resize(static_cast<size_t>(file.header().num_elements()));
  SCANSERVE_RETURN_IF_ERROR(file.ReadAllAsInt64(tensor.data.data()));
  return tensor;
}

absl::StatusOr<NpyArray> ReadNpyRows(const std::string& path, int64_t begin, int64_t count) {
  SCANSERVE_ASSIGN_OR_RETURN(NpyFile file, NpyFile::Open(path));
  SCANSERVE_RETURN_IF_ERROR(file.CheckRowRange(begin, count));
  NpyArray array;
  array.dtype = file.header().dtype;
  array.shape = file.header().shape;
  array.shape[0] = count;
  array.bytes.resize(static_cast<size_t>(array.num_elements() * file.header().item_size()));
  SCANSERVE_RETURN_IF_ERROR(file.ReadRowsRaw(begin, count, array.bytes.data()));
  return array;
}

absl::StatusOr<NpyTensor<float>> ReadNpyRowsAsFloat32(const std::string& path, int64_t begin,
                                                      int64_t count) {
  SCANSERVE_ASSIGN_OR_RETURN(NpyFile file, NpyFile::Open(path));
  SCANSERVE_RETURN_IF_ERROR(NeedFloat(file));
  SCANSERVE_RETURN_IF_ERROR(file.CheckRowRange(begin, count));
  NpyTensor<float> tensor;
  tensor.shape = file.header().shape;
  tensor.shape[0] = count;
  tensor.data.resize(static_cast<size_t>(count * file.header().row_elements()));
  SCANSERVE_RETURN_IF_ERROR(file.ReadRowsAsFloat32(begin, count, tensor.data.data()));
  return tensor;
}

absl::StatusOr<FloatMatrix> ReadNpyFloatMatrix(const std::string& path) {
  SCANSERVE_ASSIGN_OR_RETURN(NpyFile file, NpyFile::Open(path));
  SCANSERVE_RETURN_IF_ERROR(NeedRank(file, 2));
  SCANSERVE_RETURN_IF_ERROR(NeedFloat(file));
  FloatMatrix matrix(file.header().shape[0], file.header().shape[1]);
  SCANSERVE_RETURN_IF_ERROR(file.ReadAllAsFloat32(matrix.data.data()));
  return matrix;
}

absl::StatusOr<std::vector<int64_t>> ReadNpyInt64Vector(const std::string& path) {
  SCANSERVE_ASSIGN_OR_RETURN(NpyFile file, NpyFile::Open(path));
  SCANSERVE_RETURN_IF_ERROR(NeedRank(file, 1));
  SCANSERVE_RETURN_IF_ERROR(NeedInteger(file));
  std::vector<int64_t> values(static_cast<size_t>(file.header().shape[0]));
  SCANSERVE_RETURN_IF_ERROR(file.ReadAllAsInt64(values.data()));
  return values;
}

// ---- Writers

absl::Status WriteNpyFloat32(const std::string& path, absl::Span<const int64_t> shape,
                             const float* data) {
  return WriteNpy(path, NpyDtype::kFloat32, shape, data);
}

absl::Status WriteNpyInt64(const std::string& path, absl::Span<const int64_t> shape,
                           const int64_t* data) {
  return WriteNpy(path, NpyDtype::kInt64, shape, data);
}

absl::Status WriteNpyFloatMatrix(const std::string& path, const FloatMatrix& matrix) {
  const int64_t shape[2] = {matrix.rows, matrix.cols};
  return WriteNpy(path, NpyDtype::kFloat32, shape, matrix.data.data());
}

}  // namespace scanserve
