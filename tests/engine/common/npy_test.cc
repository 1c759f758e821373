// engine/common/npy: round trips, every header version, every error, row ranges, and files written
// by numpy itself (skipped when /usr/bin/python3 lacks numpy).
#include "engine/common/npy.h"

#include <stdlib.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <numeric>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"

namespace scanserve {
namespace {

constexpr char kPython[] = "/usr/bin/python3";

class NpyTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string tmpl = ::testing::TempDir() + "npy_test_XXXXXX";
    ASSERT_NE(mkdtemp(tmpl.data()), nullptr);
    dir_ = tmpl;
  }
  void TearDown() override { std::system(("rm -rf '" + dir_ + "'").c_str()); }

  std::string Path(const std::string& name) const { return dir_ + "/" + name; }

  // Writes `bytes` verbatim.
  void WriteFile(const std::string& name, const std::string& bytes) const {
    std::ofstream out(Path(name), std::ios::binary);
    out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    ASSERT_TRUE(out.good());
  }

  // A hand-made .npy file: magic, version, header length, the dict text (padded to 64 bytes as
  // numpy does) and the payload.
  static std::string RawNpy(const std::string& dict, const std::string& payload, int major = 1) {
    const size_t preamble = major == 1 ? 10 : 12;
    std::string header = dict;
    const size_t total = preamble + header.size() + 1;
    header.append((64 - total % 64) % 64, ' ');
    header.push_back('\n');
    std::string out("\x93NUMPY", 6);
    out.push_back(static_cast<char>(major));
    out.push_back(0);
    const uint32_t len = static_cast<uint32_t>(header.size());
    const int len_bytes = major == 1 ? 2 : 4;
    for (int i = 0; i < len_bytes; ++i) out.push_back(static_cast<char>((len >> (8 * i)) & 0xff));
    return out + header + payload;
  }

  template <typename T>
  static std::string Bytes(const std::vector<T>& values) {
    return std::string(reinterpret_cast<const char*>(values.data()), values.size() * sizeof(T));
  }

  // Runs a Python snippet with numpy imported as np and DIR bound to the temp dir.
  bool RunPython(const std::string& body) const {
    const std::string script_path = Path("script.py");
    std::ofstream(script_path) << "import numpy as np\nDIR = '" << dir_ << "'\n" << body << "\n";
    const std::string cmd = absl::StrCat(kPython, " '", script_path, "'");
    return std::system(cmd.c_str()) == 0;
  }

  static bool HaveNumpy() {
    static const bool have = [] {
      if (access(kPython, X_OK) != 0) return false;
      const std::string cmd = absl::StrCat(kPython, " -c 'import numpy' >/dev/null 2>&1");
      return std::system(cmd.c_str()) == 0;
    }();
    return have;
  }

  std::string dir_;
};

std::vector<float> Iota(size_t n, float start = 0.5f) {
  std::vector<float> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = start + static_cast<float>(i) * 0.25f;
  return v;
}

// ---- Round trips

TEST_F(NpyTest, Float32RoundTripRank3) {
  const std::vector<int64_t> shape = {4, 3, 5};
  const std::vector<float> values = Iota(60);
  ASSERT_TRUE(WriteNpyFloat32(Path("a.npy"), shape, values.data()).ok());
  auto read = ReadNpyAsFloat32(Path("a.npy"));
  ASSERT_TRUE(read.ok()) << read.status();
  EXPECT_EQ(read->shape, shape);
  EXPECT_EQ(read->data, values);

  auto raw = ReadNpy(Path("a.npy"));
  ASSERT_TRUE(raw.ok()) << raw.status();
  EXPECT_EQ(raw->dtype, NpyDtype::kFloat32);
  EXPECT_EQ(raw->shape, shape);
  EXPECT_EQ(raw->num_elements(), 60);
  EXPECT_EQ(std::string(raw->bytes.begin(), raw->bytes.end()), Bytes(values));
}

TEST_F(NpyTest, HeaderIsVersion1AndAligned) {
  const std::vector<float> values = Iota(6);
  ASSERT_TRUE(WriteNpyFloat32(Path("a.npy"), {2, 3}, values.data()).ok());
  auto file = NpyFile::Open(Path("a.npy"));
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ(file->header().data_offset % 64, 0);
  EXPECT_EQ(file->header().ShapeString(), "(2, 3)");
  std::ifstream in(Path("a.npy"), std::ios::binary);
  std::string head(128, '\0');
  in.read(head.data(), 128);
  EXPECT_EQ(head[6], 1);
  EXPECT_EQ(head[7], 0);
  EXPECT_NE(head.find("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }"),
            std::string::npos);
  EXPECT_EQ(head[file->header().data_offset - 1], '\n');
}

TEST_F(NpyTest, Int64RoundTripAndVector) {
  const std::vector<int64_t> values = {36, 1, 0, -5, int64_t{1} << 40};
  ASSERT_TRUE(WriteNpyInt64(Path("i.npy"), {5}, values.data()).ok());
  auto read = ReadNpyInt64Vector(Path("i.npy"));
  ASSERT_TRUE(read.ok()) << read.status();
  EXPECT_EQ(*read, values);
  auto as_float = ReadNpyAsFloat32(Path("i.npy"));
  EXPECT_EQ(as_float.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(as_float.status().message().find("expected a float array"), std::string::npos)
      << as_float.status();
}

TEST_F(NpyTest, Rank0Rank1AndEmptyShapes) {
  const float one = 7.0f;
  ASSERT_TRUE(WriteNpyFloat32(Path("s.npy"), {}, &one).ok());
  auto scalar = ReadNpyAsFloat32(Path("s.npy"));
  ASSERT_TRUE(scalar.ok()) << scalar.status();
  EXPECT_TRUE(scalar->shape.empty());
  EXPECT_EQ(scalar->data, std::vector<float>{7.0f});
  EXPECT_EQ(ReadNpyRows(Path("s.npy"), 0, 1).status().code(), absl::StatusCode::kInvalidArgument);

  const std::vector<float> v = Iota(3);
  ASSERT_TRUE(WriteNpyFloat32(Path("v.npy"), {3}, v.data()).ok());
  auto file = NpyFile::Open(Path("v.npy"));
  ASSERT_TRUE(file.ok());
  EXPECT_EQ(file->header().ShapeString(), "(3,)");

  ASSERT_TRUE(WriteNpyFloat32(Path("e.npy"), {0, 2048}, nullptr).ok());
  auto empty = ReadNpyFloatMatrix(Path("e.npy"));
  ASSERT_TRUE(empty.ok()) << empty.status();
  EXPECT_EQ(empty->rows, 0);
  EXPECT_EQ(empty->cols, 2048);
}

TEST_F(NpyTest, FloatMatrixRoundTripAndRankCheck) {
  FloatMatrix m(3, 4);
  for (size_t i = 0; i < m.data.size(); ++i) m.data[i] = static_cast<float>(i) - 2.5f;
  ASSERT_TRUE(WriteNpyFloatMatrix(Path("m.npy"), m).ok());
  auto read = ReadNpyFloatMatrix(Path("m.npy"));
  ASSERT_TRUE(read.ok()) << read.status();
  EXPECT_EQ(read->rows, 3);
  EXPECT_EQ(read->cols, 4);
  EXPECT_EQ(read->data, m.data);

  const std::vector<float> cube = Iota(8);
  ASSERT_TRUE(WriteNpyFloat32(Path("c.npy"), {2, 2, 2}, cube.data()).ok());
  auto wrong = ReadNpyFloatMatrix(Path("c.npy"));
  EXPECT_EQ(wrong.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(wrong.status().message().find("expected a 2-D array, got shape (2, 2, 2)"),
            std::string::npos)
      << wrong.status();
  EXPECT_NE(wrong.status().message().find("c.npy"), std::string::npos);
  EXPECT_EQ(ReadNpyInt64Vector(Path("m.npy")).status().code(), absl::StatusCode::kInvalidArgument);
}

// ---- Header versions and dtypes, hand-made

TEST_F(NpyTest, ReadsVersion2And3Headers) {
  const std::vector<float> values = Iota(6);
  for (int major : {2, 3}) {
    const std::string name = absl::StrCat("v", major, ".npy");
    WriteFile(name, RawNpy("{'descr': '<f4', 'fortran_order': False, 'shape': (3, 2), }",
                           Bytes(values), major));
    auto read = ReadNpyAsFloat32(Path(name));
    ASSERT_TRUE(read.ok()) << read.status();
    EXPECT_EQ(read->shape, (std::vector<int64_t>{3, 2}));
    EXPECT_EQ(read->data, values);
  }
}

TEST_F(NpyTest, ToleratesHeaderSpellings) {
  // Double quotes, Python 2 long suffixes, key order, no trailing comma.
  const std::vector<float> values = Iota(6);
  WriteFile("s.npy", RawNpy("{\"shape\": (2L, 3L), \"fortran_order\": False, \"descr\": \"<f4\"}",
                            Bytes(values)));
  auto read = ReadNpyAsFloat32(Path("s.npy"));
  ASSERT_TRUE(read.ok()) << read.status();
  EXPECT_EQ(read->shape, (std::vector<int64_t>{2, 3}));
}

TEST_F(NpyTest, ConvertsFloat64AndInt32) {
  // More than one conversion chunk (2^20 elements) to exercise the chunked path.
  const size_t n = (size_t{1} << 20) + 37;
  std::vector<double> doubles(n);
  for (size_t i = 0; i < n; ++i) doubles[i] = 0.1 * static_cast<double>(i % 1000) - 3.0;
  WriteFile("d.npy", RawNpy(absl::StrCat("{'descr': '<f8', 'fortran_order': False, 'shape': (", n,
                                         ",), }"),
                            Bytes(doubles)));
  auto f = ReadNpyAsFloat32(Path("d.npy"));
  ASSERT_TRUE(f.ok()) << f.status();
  ASSERT_EQ(f->data.size(), n);
  for (size_t i = 0; i < n; i += 9973) EXPECT_EQ(f->data[i], static_cast<float>(doubles[i])) << i;
  EXPECT_EQ(f->data[n - 1], static_cast<float>(doubles[n - 1]));

  const std::vector<int32_t> ints = {3, 36, -1, 2147483647};
  WriteFile("i4.npy", RawNpy("{'descr': '<i4', 'fortran_order': False, 'shape': (4,), }",
                             Bytes(ints)));
  auto wide = ReadNpyInt64Vector(Path("i4.npy"));
  ASSERT_TRUE(wide.ok()) << wide.status();
  EXPECT_EQ(*wide, (std::vector<int64_t>{3, 36, -1, 2147483647}));
  auto raw = ReadNpy(Path("i4.npy"));
  ASSERT_TRUE(raw.ok());
  EXPECT_EQ(raw->dtype, NpyDtype::kInt32);
  EXPECT_EQ(raw->bytes.size(), 16u);
}

// ---- Errors

TEST_F(NpyTest, MissingFileIsNotFound) {
  auto read = ReadNpy(Path("nope.npy"));
  EXPECT_EQ(read.status().code(), absl::StatusCode::kNotFound);
  EXPECT_NE(read.status().message().find("nope.npy"), std::string::npos) << read.status();
}

TEST_F(NpyTest, BadMagic) {
  WriteFile("bad.npy", "PK\x03\x04 this is a zip, not an npy file");
  auto read = ReadNpy(Path("bad.npy"));
  EXPECT_EQ(read.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(read.status().message().find("bad magic"), std::string::npos) << read.status();
  EXPECT_NE(read.status().message().find("bad.npy"), std::string::npos);

  WriteFile("short.npy", "\x93NU");
  EXPECT_EQ(ReadNpy(Path("short.npy")).status().code(), absl::StatusCode::kInvalidArgument);
  WriteFile("empty.npy", "");
  EXPECT_EQ(ReadNpy(Path("empty.npy")).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(NpyTest, UnsupportedVersion) {
  std::string bytes = RawNpy("{'descr': '<f4', 'fortran_order': False, 'shape': (1,), }",
                             std::string(4, '\0'));
  bytes[6] = 4;
  WriteFile("v4.npy", bytes);
  auto read = ReadNpy(Path("v4.npy"));
  EXPECT_EQ(read.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(read.status().message().find("version 4.0"), std::string::npos) << read.status();
}

TEST_F(NpyTest, FortranOrderIsRejected) {
  WriteFile("f.npy", RawNpy("{'descr': '<f4', 'fortran_order': True, 'shape': (2, 2), }",
                            std::string(16, '\0')));
  auto read = ReadNpy(Path("f.npy"));
  EXPECT_EQ(read.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(read.status().message().find("fortran_order True"), std::string::npos) << read.status();
}

TEST_F(NpyTest, UnsupportedDtypes) {
  for (const char* descr : {"<f2", ">f4", "|u1", "<c8", "|b1"}) {
    WriteFile("t.npy", RawNpy(absl::StrCat("{'descr': '", descr,
                                           "', 'fortran_order': False, 'shape': (2,), }"),
                              std::string(16, '\0')));
    auto read = ReadNpy(Path("t.npy"));
    EXPECT_EQ(read.status().code(), absl::StatusCode::kInvalidArgument) << descr;
    EXPECT_NE(read.status().message().find(absl::StrCat("unsupported dtype '", descr, "'")),
              std::string::npos)
        << read.status();
  }
  // A structured dtype's descr is a list, not a string.
  WriteFile("rec.npy", RawNpy("{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (1,), }",
                              std::string(4, '\0')));
  auto rec = ReadNpy(Path("rec.npy"));
  EXPECT_EQ(rec.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(rec.status().message().find("unsupported dtype"), std::string::npos) << rec.status();
}

TEST_F(NpyTest, MalformedHeaders) {
  const char* dicts[] = {
      "not a dict",
      "{'descr': '<f4', 'fortran_order': False, }",                         // no shape
      "{'descr': '<f4', 'fortran_order': False, 'shape': (2, x), }",        // bad dim
      "{'descr': '<f4', 'fortran_order': Maybe, 'shape': (2,), }",          // bad bool
      "{'descr': '<f4', 'fortran_order': False, 'shape': (2,), 'extra': 1}",  // unknown key
      "{'descr': '<f4' 'fortran_order': False, 'shape': (2,)}",             // missing comma
      "{'descr': '<f4', 'fortran_order': False, 'shape': (-2,), }",         // negative dim
  };
  for (const char* dict : dicts) {
    WriteFile("h.npy", RawNpy(dict, std::string(8, '\0')));
    auto read = ReadNpy(Path("h.npy"));
    EXPECT_EQ(read.status().code(), absl::StatusCode::kInvalidArgument) << dict;
    EXPECT_NE(read.status().message().find("malformed .npy header"), std::string::npos)
        << read.status();
  }
}

TEST_F(NpyTest, TruncatedDataIsDataLoss) {
  const std::vector<float> values = Iota(5);  // 20 bytes where 24 are needed
  WriteFile("t.npy", RawNpy("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }",
                            Bytes(values)));
  for (const auto& status : {ReadNpy(Path("t.npy")).status(),
                             ReadNpyAsFloat32(Path("t.npy")).status(),
                             ReadNpyRows(Path("t.npy"), 0, 1).status()}) {
    EXPECT_EQ(status.code(), absl::StatusCode::kDataLoss);
    EXPECT_NE(status.message().find("truncated: expected 24 bytes"), std::string::npos) << status;
    EXPECT_NE(status.message().find("got 20"), std::string::npos) << status;
    EXPECT_NE(status.message().find("t.npy"), std::string::npos) << status;
  }
}

TEST_F(NpyTest, TruncatedHeaderIsDataLoss) {
  const std::string full = RawNpy("{'descr': '<f4', 'fortran_order': False, 'shape': (1,), }",
                                  std::string(4, '\0'));
  WriteFile("h.npy", full.substr(0, 30));
  auto read = ReadNpy(Path("h.npy"));
  EXPECT_EQ(read.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_NE(read.status().message().find("truncated header"), std::string::npos) << read.status();
  WriteFile("h2.npy", full.substr(0, 9));
  EXPECT_EQ(ReadNpy(Path("h2.npy")).status().code(), absl::StatusCode::kDataLoss);
}

TEST_F(NpyTest, WriteToMissingDirectoryFails) {
  const float x = 1.0f;
  const absl::Status status = WriteNpyFloat32(Path("no/such/dir/x.npy"), {1}, &x);
  EXPECT_EQ(status.code(), absl::StatusCode::kNotFound);
  EXPECT_NE(status.message().find("x.npy"), std::string::npos) << status;
}

// ---- Row ranges

TEST_F(NpyTest, ReadsRowRanges) {
  const std::vector<int64_t> shape = {10, 3, 4};
  const std::vector<float> values = Iota(120);
  ASSERT_TRUE(WriteNpyFloat32(Path("r.npy"), shape, values.data()).ok());

  auto rows = ReadNpyRowsAsFloat32(Path("r.npy"), 3, 4);
  ASSERT_TRUE(rows.ok()) << rows.status();
  EXPECT_EQ(rows->shape, (std::vector<int64_t>{4, 3, 4}));
  EXPECT_EQ(rows->data, std::vector<float>(values.begin() + 36, values.begin() + 84));

  auto raw = ReadNpyRows(Path("r.npy"), 9, 1);
  ASSERT_TRUE(raw.ok()) << raw.status();
  EXPECT_EQ(raw->shape, (std::vector<int64_t>{1, 3, 4}));
  EXPECT_EQ(std::string(raw->bytes.begin(), raw->bytes.end()),
            Bytes(std::vector<float>(values.begin() + 108, values.end())));

  auto none = ReadNpyRows(Path("r.npy"), 10, 0);
  ASSERT_TRUE(none.ok()) << none.status();
  EXPECT_EQ(none->shape[0], 0);
  EXPECT_TRUE(none->bytes.empty());

  for (auto [begin, count] : {std::pair<int64_t, int64_t>{8, 3}, {-1, 1}, {11, 0}, {0, -1}}) {
    auto bad = ReadNpyRowsAsFloat32(Path("r.npy"), begin, count);
    EXPECT_EQ(bad.status().code(), absl::StatusCode::kOutOfRange) << begin << "," << count;
    EXPECT_NE(bad.status().message().find("(10, 3, 4)"), std::string::npos) << bad.status();
  }

  // One open file, many reads, as the precomputed-split loader does for every fifth image.
  auto file = NpyFile::Open(Path("r.npy"));
  ASSERT_TRUE(file.ok());
  std::vector<float> row(12);
  for (int64_t r = 0; r < 10; r += 5) {
    ASSERT_TRUE(file->ReadRowsAsFloat32(r, 1, row.data()).ok());
    EXPECT_EQ(row, std::vector<float>(values.begin() + r * 12, values.begin() + r * 12 + 12));
  }
}

TEST_F(NpyTest, RowRangesConvertFloat64) {
  std::vector<double> doubles(12);
  for (size_t i = 0; i < doubles.size(); ++i) doubles[i] = 1.0 / static_cast<double>(i + 1);
  WriteFile("d.npy", RawNpy("{'descr': '<f8', 'fortran_order': False, 'shape': (4, 3), }",
                            Bytes(doubles)));
  auto rows = ReadNpyRowsAsFloat32(Path("d.npy"), 1, 2);
  ASSERT_TRUE(rows.ok()) << rows.status();
  ASSERT_EQ(rows->data.size(), 6u);
  for (size_t i = 0; i < 6; ++i) EXPECT_EQ(rows->data[i], static_cast<float>(doubles[3 + i]));
}

// ---- Interoperability with numpy

TEST_F(NpyTest, ReadsFilesWrittenByNumpy) {
  if (!HaveNumpy()) GTEST_SKIP() << kPython << " with numpy is not available";
  ASSERT_TRUE(RunPython(R"(
a = (np.arange(2 * 36 * 8, dtype=np.float32) * 0.5 - 3).reshape(2, 36, 8)
np.save(DIR + '/f4.npy', a)
np.save(DIR + '/f8.npy', a.astype(np.float64) / 3)
np.save(DIR + '/i8.npy', np.array([36, 10, 1], dtype=np.int64))
np.save(DIR + '/i4.npy', np.array([36, 10, 1], dtype=np.int32))
np.save(DIR + '/fortran.npy', np.asfortranarray(np.ones((3, 2), dtype=np.float32)))
np.save(DIR + '/f2.npy', np.ones(3, dtype=np.float16))
np.save(DIR + '/be.npy', np.ones(3, dtype='>f4'))
with open(DIR + '/v2.npy', 'wb') as f:
    np.lib.format.write_array(f, a, version=(2, 0))
with open(DIR + '/v3.npy', 'wb') as f:
    np.lib.format.write_array(f, a, version=(3, 0))
np.save(DIR + '/long.npy', np.zeros((1,) * 30, dtype=np.float32))
)"));
  std::vector<float> expected(2 * 36 * 8);
  for (size_t i = 0; i < expected.size(); ++i) expected[i] = static_cast<float>(i) * 0.5f - 3.0f;
  for (const char* name : {"f4.npy", "v2.npy", "v3.npy"}) {
    auto read = ReadNpyAsFloat32(Path(name));
    ASSERT_TRUE(read.ok()) << read.status();
    EXPECT_EQ(read->shape, (std::vector<int64_t>{2, 36, 8})) << name;
    EXPECT_EQ(read->data, expected) << name;
  }
  auto f8 = ReadNpyAsFloat32(Path("f8.npy"));
  ASSERT_TRUE(f8.ok()) << f8.status();
  for (size_t i = 0; i < expected.size(); ++i) {
    ASSERT_EQ(f8->data[i], static_cast<float>(static_cast<double>(expected[i]) / 3)) << i;
  }
  for (const char* name : {"i8.npy", "i4.npy"}) {
    auto read = ReadNpyInt64Vector(Path(name));
    ASSERT_TRUE(read.ok()) << read.status();
    EXPECT_EQ(*read, (std::vector<int64_t>{36, 10, 1})) << name;
  }
  auto rows = ReadNpyRowsAsFloat32(Path("v3.npy"), 1, 1);
  ASSERT_TRUE(rows.ok()) << rows.status();
  EXPECT_EQ(rows->data, std::vector<float>(expected.begin() + 288, expected.end()));
  auto high_rank = ReadNpyAsFloat32(Path("long.npy"));
  ASSERT_TRUE(high_rank.ok()) << high_rank.status();
  EXPECT_EQ(high_rank->shape.size(), 30u);

  auto fortran = ReadNpy(Path("fortran.npy"));
  EXPECT_NE(fortran.status().message().find("fortran_order True"), std::string::npos)
      << fortran.status();
  auto half = ReadNpy(Path("f2.npy"));
  EXPECT_NE(half.status().message().find("unsupported dtype '<f2'"), std::string::npos)
      << half.status();
  auto big_endian = ReadNpy(Path("be.npy"));
  EXPECT_NE(big_endian.status().message().find("unsupported dtype '>f4'"), std::string::npos)
      << big_endian.status();
}

TEST_F(NpyTest, NumpyReadsOurFiles) {
  if (!HaveNumpy()) GTEST_SKIP() << kPython << " with numpy is not available";
  const std::vector<float> values = Iota(24);
  ASSERT_TRUE(WriteNpyFloat32(Path("ours_f4.npy"), {2, 3, 4}, values.data()).ok());
  const std::vector<int64_t> ints = {5, -1, int64_t{1} << 40};
  ASSERT_TRUE(WriteNpyInt64(Path("ours_i8.npy"), {3}, ints.data()).ok());
  const float one = 2.5f;
  ASSERT_TRUE(WriteNpyFloat32(Path("ours_scalar.npy"), {}, &one).ok());
  EXPECT_TRUE(RunPython(R"(
a = np.load(DIR + '/ours_f4.npy')
assert a.dtype == np.float32 and a.shape == (2, 3, 4), (a.dtype, a.shape)
assert np.array_equal(a.ravel(), 0.5 + np.arange(24, dtype=np.float32) * 0.25)
assert a.flags['C_CONTIGUOUS']
i = np.load(DIR + '/ours_i8.npy')
assert i.dtype == np.int64 and i.tolist() == [5, -1, 1 << 40], i
s = np.load(DIR + '/ours_scalar.npy')
assert s.shape == () and float(s) == 2.5
with open(DIR + '/ours_f4.npy', 'rb') as f:
    assert np.lib.format.read_magic(f) == (1, 0)
)"));
}

// A header longer than 65535 bytes does not fit format 1.0 (numpy caps ndim, so only we read it).
TEST_F(NpyTest, WritesVersion2WhenTheHeaderIsLong) {
  const float one = 2.5f;
  const std::vector<int64_t> many_dims(25000, 1);
  ASSERT_TRUE(WriteNpyFloat32(Path("v2.npy"), many_dims, &one).ok());
  std::ifstream in(Path("v2.npy"), std::ios::binary);
  char head[8];
  in.read(head, 8);
  EXPECT_EQ(head[6], 2);
  auto read = ReadNpyAsFloat32(Path("v2.npy"));
  ASSERT_TRUE(read.ok()) << read.status();
  EXPECT_EQ(read->shape.size(), 25000u);
  EXPECT_EQ(read->data, std::vector<float>{2.5f});
}

}  // namespace
}  // namespace scanserve
