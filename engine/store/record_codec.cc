#include "engine/store/record_codec.h"

#include <cstring>
#include <limits>
#include <utility>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "engine/common/status_macros.h"
#include "engine/store/crc32c.h"

// The layout is little-endian and floats are copied bytewise.
static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__,
              "record_codec assumes a little-endian host");

namespace scanserve {
namespace {

constexpr uint8_t kImageKind = 1;
constexpr uint8_t kCaptionKind = 2;
constexpr size_t kHeaderBytes = 2;
constexpr size_t kCrcBytes = 4;
constexpr uint64_t kMaxU32 = std::numeric_limits<uint32_t>::max();
// The layout before image records could hold region features; captions have not changed since.
constexpr uint8_t kFirstFormatVersion = 1;
constexpr uint8_t kRegionFeaturesKind = 3;
constexpr uint8_t kRegionFeaturesVersion = 1;
constexpr uint8_t kFlagRegionFeatures = 1;  // image records from version 2 on
constexpr uint8_t kChangeKind = 4;
constexpr uint8_t kChangeVersion = 1;

std::string Quoted(absl::string_view id) {
  constexpr size_t kMaxShown = 128;
  std::string shown = absl::CEscape(id.substr(0, kMaxShown));
  return absl::StrCat("'", shown, id.size() > kMaxShown ? "...'" : "'");
}

class Writer {
 public:
  void U8(uint8_t v) { out_.push_back(static_cast<char>(v)); }
  void U32(uint32_t v) { Raw(&v, sizeof(v)); }
  void I64(int64_t v) { Raw(&v, sizeof(v)); }
  void Raw(const void* p, size_t n) { out_.append(static_cast<const char*>(p), n); }

  // Lengths beyond u32 are the caller's error (the engine bounds every field far below).
  absl::Status Count(size_t n, absl::string_view what) {
    if (n > kMaxU32) {
      return absl::InvalidArgumentError(
          absl::StrCat(what, " has ", n, " entries; the record format allows ", kMaxU32));
    }
    U32(static_cast<uint32_t>(n));
    return absl::OkStatus();
  }
  absl::Status Str(absl::string_view s, absl::string_view what) {
    SCANSERVE_RETURN_IF_ERROR(Count(s.size(), what));
    Raw(s.data(), s.size());
    return absl::OkStatus();
  }
  absl::Status Meta(const std::map<std::string, std::string>& meta) {
    SCANSERVE_RETURN_IF_ERROR(Count(meta.size(), "metadata"));
    for (const auto& [key, value] : meta) {
      SCANSERVE_RETURN_IF_ERROR(Str(key, "a metadata key"));
      SCANSERVE_RETURN_IF_ERROR(Str(value, "a metadata value"));
    }
    return absl::OkStatus();
  }
  absl::Status Matrix(const FloatMatrix& m, absl::string_view what) {
    if (m.rows < 0 || m.cols < 0 || m.data.size() != static_cast<size_t>(m.rows * m.cols)) {
      return absl::InvalidArgumentError(absl::StrCat(what, " is ", m.rows, " x ", m.cols,
                                                     " but holds ", m.data.size(), " values"));
    }
    SCANSERVE_RETURN_IF_ERROR(Count(static_cast<size_t>(m.rows), what));
    SCANSERVE_RETURN_IF_ERROR(Count(static_cast<size_t>(m.cols), what));
    Raw(m.data.data(), m.data.size() * sizeof(float));
    return absl::OkStatus();
  }

  // Appends the checksum and returns the record.
  std::string Finish() && {
    U32(Crc32c(out_.data(), out_.size()));
    return std::move(out_);
  }

 private:
  std::string out_;
};

// Bounds-checked reads; the first failure is remembered and every later read fails too, so the
// decoders check once at the end of a section.
class Reader {
 public:
  Reader(const char* data, size_t size) : p_(data), left_(size) {}

  bool ok() const { return ok_; }
  const std::string& error() const { return error_; }
  size_t left() const { return left_; }

  uint8_t U8(absl::string_view what) {
    uint8_t v = 0;
    Raw(&v, 1, what);
    return v;
  }
  uint32_t U32(absl::string_view what) {
    uint32_t v = 0;
    Raw(&v, 4, what);
    return v;
  }
  int64_t I64(absl::string_view what) {
    int64_t v = 0;
    Raw(&v, 8, what);
    return v;
  }
  // A count of elements of `elem_bytes` each that must fit in what is left (so a corrupt length
  // never triggers a huge allocation).
  size_t Count(size_t elem_bytes, absl::string_view what) {
    const uint32_t n = U32(what);
    if (ok_ && static_cast<uint64_t>(n) * elem_bytes > left_) {
      Fail(absl::StrCat(what, " claims ", n, " entries but only ", left_, " bytes are left"));
      return 0;
    }
    return ok_ ? n : 0;
  }
  std::string Str(absl::string_view what) {
    const size_t n = Count(1, what);
    std::string s;
    if (ok_) {
      s.assign(p_, n);
      Skip(n);
    }
    return s;
  }
  std::map<std::string, std::string> Meta() {
    std::map<std::string, std::string> meta;
    const size_t n = Count(8, "metadata");  // each entry holds at least two lengths
    for (size_t i = 0; i < n && ok_; ++i) {
      std::string key = Str("metadata key");
      std::string value = Str("metadata value");
      meta[std::move(key)] = std::move(value);
    }
    return meta;
  }
  FloatMatrix Matrix(absl::string_view what) {
    const uint32_t rows = U32(what);
    const uint32_t cols = U32(what);
    if (!ok_) return {};
    const uint64_t values = static_cast<uint64_t>(rows) * cols;
    if (values * sizeof(float) > left_) {
      Fail(absl::StrCat(what, " claims ", rows, " x ", cols, " floats but only ", left_,
                        " bytes are left"));
      return {};
    }
    FloatMatrix m(rows, cols);
    Raw(m.data.data(), values * sizeof(float), what);
    return m;
  }
  void Raw(void* dst, size_t n, absl::string_view what) {
    if (!ok_) return;
    if (n > left_) {
      Fail(absl::StrCat("truncated in ", what));
      return;
    }
    if (n > 0) std::memcpy(dst, p_, n);
    Skip(n);
  }

 private:
  void Skip(size_t n) {
    p_ += n;
    left_ -= n;
  }
  void Fail(std::string error) {
    if (ok_) error_ = std::move(error);
    ok_ = false;
  }

  const char* p_;
  size_t left_;
  bool ok_ = true;
  std::string error_;
};

// Checks the checksum, version and kind; on success `body` reads the fields after the header.
absl::StatusOr<Reader> OpenRecord(const std::string& value, uint8_t kind,
                                  absl::string_view kind_name, absl::string_view key,
                                  uint8_t* version_out = nullptr,
                                  uint8_t max_version = kRecordFormatVersion) {
  auto corrupt = [&](absl::string_view why) {
    return absl::DataLossError(
        absl::StrCat("the stored ", kind_name, " record ", Quoted(key), " is corrupt: ", why));
  };
  if (value.size() < kHeaderBytes + kCrcBytes) {
    return corrupt(absl::StrCat("only ", value.size(), " bytes"));
  }
  const size_t body = value.size() - kCrcBytes;
  uint32_t stored_crc = 0;
  std::memcpy(&stored_crc, value.data() + body, kCrcBytes);
  const uint32_t crc = Crc32c(value.data(), body);
  if (crc != stored_crc) {
    return corrupt(absl::StrCat("checksum mismatch (stored 0x", absl::Hex(stored_crc),
                                ", computed 0x", absl::Hex(crc), ")"));
  }
  const uint8_t version = static_cast<uint8_t>(value[0]);
  if (version > max_version) {
    return absl::FailedPreconditionError(
        absl::StrCat("the stored ", kind_name, " record ", Quoted(key), " has format version ",
                     version, "; this scanserve reads up to version ", max_version,
                     " (written by a newer scanserve?)"));
  }
  if (version == 0) return corrupt("format version 0");
  if (static_cast<uint8_t>(value[1]) != kind) {
    return corrupt(absl::StrCat("kind byte ", static_cast<int>(static_cast<uint8_t>(value[1])),
                                ", expected ", static_cast<int>(kind)));
  }
  if (version_out != nullptr) *version_out = version;
  return Reader(value.data() + kHeaderBytes, body - kHeaderBytes);
}

absl::Status FinishRecord(const Reader& r, absl::string_view kind_name, absl::string_view key,
                          const std::string& id) {
  auto corrupt = [&](absl::string_view why) {
    return absl::DataLossError(
        absl::StrCat("the stored ", kind_name, " record ", Quoted(key), " is corrupt: ", why));
  };
  if (!r.ok()) return corrupt(r.error());
  if (r.left() != 0) return corrupt(absl::StrCat(r.left(), " trailing bytes"));
  if (id != key) return corrupt(absl::StrCat("it holds the id ", Quoted(id)));
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::string> EncodeImageRecord(const StoredImage& image) {
  // Version 1 where it suffices, so that a store which keeps no region features stays readable by
  // the scanserve releases before version 2.
  const bool with_regions = image.has_region_features || !image.region_features.data.empty();
  Writer w;
  w.U8(with_regions ? kRecordFormatVersion : kFirstFormatVersion);
  w.U8(kImageKind);
  SCANSERVE_RETURN_IF_ERROR(w.Str(image.id, "the id"));
  SCANSERVE_RETURN_IF_ERROR(w.Str(image.collection, "the collection"));
  SCANSERVE_RETURN_IF_ERROR(w.Meta(image.metadata));
  if (image.num_regions < 0) {
    return absl::InvalidArgumentError(absl::StrCat("num_regions is ", image.num_regions));
  }
  SCANSERVE_RETURN_IF_ERROR(w.Count(static_cast<size_t>(image.num_regions), "num_regions"));
  SCANSERVE_RETURN_IF_ERROR(w.Count(image.boxes.size(), "boxes"));
  for (const std::array<float, 4>& box : image.boxes) w.Raw(box.data(), sizeof(float) * 4);
  SCANSERVE_RETURN_IF_ERROR(w.Count(image.labels.size(), "labels"));
  for (const std::string& label : image.labels) SCANSERVE_RETURN_IF_ERROR(w.Str(label, "a label"));
  SCANSERVE_RETURN_IF_ERROR(w.Count(image.embeddings.size(), "embeddings"));
  for (const FloatMatrix& m : image.embeddings)
    SCANSERVE_RETURN_IF_ERROR(w.Matrix(m, "an embedding"));
  if (with_regions) {
    if (!image.region_features.data.empty() && image.region_features.rows != image.num_regions) {
      return absl::InvalidArgumentError(
          absl::StrCat("the region features have ", image.region_features.rows,
                       " rows for an image of ", image.num_regions, " regions"));
    }
    w.U8(kFlagRegionFeatures);
  }
  return std::move(w).Finish();
}

absl::StatusOr<std::string> EncodeCaptionRecord(const StoredCaption& caption) {
  if (caption.token_ids.size() != caption.embeddings.size()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "caption ", Quoted(caption.id), " has token ids for ", caption.token_ids.size(),
        " models but embeddings for ", caption.embeddings.size()));
  }
  Writer w;
  w.U8(kFirstFormatVersion);
  w.U8(kCaptionKind);
  SCANSERVE_RETURN_IF_ERROR(w.Str(caption.id, "the id"));
  SCANSERVE_RETURN_IF_ERROR(w.Str(caption.collection, "the collection"));
  SCANSERVE_RETURN_IF_ERROR(w.Meta(caption.metadata));
  SCANSERVE_RETURN_IF_ERROR(w.Str(caption.text, "the text"));
  SCANSERVE_RETURN_IF_ERROR(w.Count(caption.embeddings.size(), "embeddings"));
  for (size_t m = 0; m < caption.embeddings.size(); ++m) {
    SCANSERVE_RETURN_IF_ERROR(w.Count(caption.token_ids[m].size(), "token ids"));
    w.Raw(caption.token_ids[m].data(), caption.token_ids[m].size() * sizeof(int64_t));
    SCANSERVE_RETURN_IF_ERROR(w.Matrix(caption.embeddings[m], "an embedding"));
  }
  return std::move(w).Finish();
}

absl::StatusOr<StoredImage> DecodeImageRecord(const std::string& key, const std::string& value) {
  uint8_t version = 0;
  SCANSERVE_ASSIGN_OR_RETURN(Reader r, OpenRecord(value, kImageKind, "image", key, &version));
  StoredImage image;
  image.id = r.Str("id");
  image.collection = r.Str("collection");
  image.metadata = r.Meta();
  image.num_regions = r.U32("num_regions");
  const size_t boxes = r.Count(4 * sizeof(float), "boxes");
  image.boxes.resize(boxes);
  for (std::array<float, 4>& box : image.boxes) r.Raw(box.data(), sizeof(float) * 4, "boxes");
  const size_t labels = r.Count(4, "labels");
  image.labels.reserve(labels);
  for (size_t i = 0; i < labels && r.ok(); ++i) image.labels.push_back(r.Str("label"));
  const size_t models = r.Count(8, "embeddings");
  image.embeddings.reserve(models);
  for (size_t m = 0; m < models && r.ok(); ++m) image.embeddings.push_back(r.Matrix("embedding"));
  if (version >= 2) {
    const uint8_t flags = r.U8("flags");
    if (r.ok() && (flags & ~kFlagRegionFeatures) != 0) {
      return absl::FailedPreconditionError(absl::StrCat(
          "the stored image record ", Quoted(key), " has flags 0x", absl::Hex(flags),
          " that this scanserve does not know (written by a newer scanserve?)"));
    }
    image.has_region_features = (flags & kFlagRegionFeatures) != 0;
  }
  SCANSERVE_RETURN_IF_ERROR(FinishRecord(r, "image", key, image.id));
  return image;
}

absl::StatusOr<StoredCaption> DecodeCaptionRecord(const std::string& key,
                                                  const std::string& value) {
  SCANSERVE_ASSIGN_OR_RETURN(Reader r, OpenRecord(value, kCaptionKind, "caption", key));
  StoredCaption caption;
  caption.id = r.Str("id");
  caption.collection = r.Str("collection");
  caption.metadata = r.Meta();
  caption.text = r.Str("text");
  const size_t models = r.Count(12, "embeddings");
  caption.token_ids.reserve(models);
  caption.embeddings.reserve(models);
  for (size_t m = 0; m < models && r.ok(); ++m) {
    const size_t n = r.Count(sizeof(int64_t), "token ids");
    std::vector<int64_t> ids(n);
    r.Raw(ids.data(), n * sizeof(int64_t), "token ids");
    caption.token_ids.push_back(std::move(ids));
    caption.embeddings.push_back(r.Matrix("embedding"));
  }
  SCANSERVE_RETURN_IF_ERROR(FinishRecord(r, "caption", key, caption.id));
  return caption;
}

absl::StatusOr<std::string> EncodeRegionFeaturesRecord(const std::string& id,
                                                       const FloatMatrix& features) {
  Writer w;
  w.U8(kRegionFeaturesVersion);
  w.U8(kRegionFeaturesKind);
  SCANSERVE_RETURN_IF_ERROR(w.Str(id, "the id"));
  SCANSERVE_RETURN_IF_ERROR(w.Matrix(features, "the region features"));
  return std::move(w).Finish();
}

absl::StatusOr<FloatMatrix> DecodeRegionFeaturesRecord(const std::string& key,
                                                       const std::string& value) {
  SCANSERVE_ASSIGN_OR_RETURN(Reader r, OpenRecord(value, kRegionFeaturesKind, "region features",
                                                  key, nullptr, kRegionFeaturesVersion));
  const std::string id = r.Str("id");
  FloatMatrix features = r.Matrix("region features");
  SCANSERVE_RETURN_IF_ERROR(FinishRecord(r, "region features", key, id));
  return features;
}

absl::StatusOr<std::string> EncodeChangeRecord(const ItemChange& change) {
  Writer w;
  w.U8(kChangeVersion);
  w.U8(kChangeKind);
  w.U8(change.is_caption ? 1 : 0);
  w.U8(change.deleted ? 1 : 0);
  w.I64(change.unix_micros);
  SCANSERVE_RETURN_IF_ERROR(w.Str(change.id, "the id"));
  return std::move(w).Finish();
}

absl::StatusOr<ItemChange> DecodeChangeRecord(uint64_t sequence, const std::string& value) {
  const std::string name = absl::StrCat("#", sequence);
  SCANSERVE_ASSIGN_OR_RETURN(Reader r,
                             OpenRecord(value, kChangeKind, "change", name, nullptr, kChangeVersion));
  ItemChange change;
  change.sequence = sequence;
  const uint8_t item_kind = r.U8("item kind");
  const uint8_t deleted = r.U8("operation");
  change.unix_micros = r.I64("time");
  change.id = r.Str("id");
  if (r.ok() && (item_kind > 1 || deleted > 1)) {
    return absl::DataLossError(absl::StrCat("the stored change record ", name, " is corrupt: item kind ",
                                            static_cast<int>(item_kind), ", operation ",
                                            static_cast<int>(deleted)));
  }
  change.is_caption = item_kind == 1;
  change.deleted = deleted == 1;
  SCANSERVE_RETURN_IF_ERROR(FinishRecord(r, "change", name, name));
  return change;
}

}  // namespace scanserve
