#include "client/ingest_source.h"

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "client/features.h"
#include "engine/io/genome_vocab.h"

namespace scanserve {
namespace cli {
namespace {

std::string AbsolutePath(const std::string& path) {
  std::error_code error;
  const std::filesystem::path absolute = std::filesystem::absolute(path, error);
  return error ? path : absolute.lexically_normal().string();
}

// Non-blank lines of a text file, counted in large reads.
absl::StatusOr<int64_t> CountNonBlankLines(const std::string& path) {
  std::FILE* file = std::fopen(path.c_str(), "rb");
  if (file == nullptr) return absl::NotFoundError(absl::StrCat(path, ": cannot open"));
  std::vector<char> buffer(1 << 20);
  int64_t lines = 0;
  bool content = false;  // the current line has a non-whitespace byte
  size_t n = 0;
  while ((n = std::fread(buffer.data(), 1, buffer.size(), file)) > 0) {
    for (size_t i = 0; i < n; ++i) {
      const char c = buffer[i];
      if (c == '\n') {
        lines += content ? 1 : 0;
        content = false;
      } else if (c != '\r' && c != ' ' && c != '\t') {
        content = true;
      }
    }
  }
  std::fclose(file);
  return lines + (content ? 1 : 0);
}

}  // namespace

absl::StatusOr<std::vector<std::string>> ReadCaptionFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat(path, ": cannot open"));
  std::vector<std::string> captions;
  std::string line;
  int64_t number = 0;
  while (std::getline(in, line)) {
    ++number;
    std::string caption(absl::StripAsciiWhitespace(line));
    if (caption.empty()) {
      if (in.peek() == std::char_traits<char>::eof() && line.empty()) break;  // a trailing newline
      return absl::InvalidArgumentError(absl::StrCat(path, ":", number, ": empty caption"));
    }
    captions.push_back(std::move(caption));
  }
  return captions;
}

// ---- PrecompSource ----

absl::StatusOr<std::unique_ptr<PrecompSource>> PrecompSource::Open(const PrecompOptions& options) {
  const std::string ims = (std::filesystem::path(options.data_dir) / (options.split + "_ims.npy")).string();
  const std::string caps = (std::filesystem::path(options.data_dir) / (options.split + "_caps.txt")).string();
  absl::StatusOr<NpyFile> file = NpyFile::Open(ims);
  if (!file.ok()) return file.status();
  const NpyHeader& header = file->header();
  if (header.shape.size() != 3 || header.shape[1] < 1 || header.shape[2] < 1) {
    return absl::InvalidArgumentError(absl::StrCat(ims, ": expected (images, regions, dim) region features, got shape ",
                                                   header.ShapeString()));
  }
  if (header.dtype != NpyDtype::kFloat32 && header.dtype != NpyDtype::kFloat64) {
    return absl::InvalidArgumentError(absl::StrCat(ims, ": expected float32 features"));
  }
  const std::vector<int64_t> shape = header.shape;  // `header` dies with `file`, moved just below
  std::unique_ptr<PrecompSource> source(new PrecompSource(options, *std::move(file)));
  absl::StatusOr<std::vector<std::string>> captions = ReadCaptionFile(caps);
  if (!captions.ok()) return captions.status();
  source->captions_ = *std::move(captions);
  const int64_t rows = shape[0];
  const int64_t n_caps = static_cast<int64_t>(source->captions_.size());
  if (n_caps == 5 * rows) {
    source->num_images_ = rows;
    source->row_stride_ = 1;
  } else if (n_caps == rows && rows % 5 == 0) {
    source->num_images_ = rows / 5;  // one row per caption: keep every fifth
    source->row_stride_ = 5;
  } else {
    return absl::InvalidArgumentError(absl::StrCat(caps, " has ", n_caps, " captions for the ", rows, " rows of ", ims,
                                                   ": expected 5 captions per row, or one row per caption"));
  }
  if (!options.captions) source->captions_.clear();
  if (!options.images) source->num_images_ = 0;
  source->row_.resize(static_cast<size_t>(shape[1] * shape[2]));
  return source;
}

std::string PrecompSource::identity() const {
  return absl::StrCat("precomp:", AbsolutePath(options_.data_dir), ":", options_.split, ":", options_.collection,
                      ":", options_.images ? "images" : "", options_.captions ? "+captions" : "");
}

int64_t PrecompSource::total() const { return num_images_ + num_captions(); }

absl::Status PrecompSource::Skip(int64_t count) {
  next_ = std::min(total(), next_ + count);
  return absl::OkStatus();
}

absl::StatusOr<bool> PrecompSource::Next(v1::IngestRequest* item) {
  item->Clear();
  if (next_ >= total()) return false;
  const std::string& split = options_.split;
  if (next_ < num_images_) {
    const int64_t i = next_;
    const NpyHeader& header = images_.header();
    if (absl::Status status = images_.ReadRowsAsFloat32(i * row_stride_, 1, row_.data()); !status.ok()) return status;
    v1::Image* image = item->mutable_image();
    image->set_id(absl::StrCat(split, "/img/", i));
    image->set_collection(options_.collection);
    SetRegionFeatures(row_.data(), header.shape[1], header.shape[2], image->mutable_region_features());
  } else {
    const int64_t j = next_ - num_images_;
    v1::Caption* caption = item->mutable_caption();
    caption->set_id(absl::StrCat(split, "/cap/", j));
    caption->set_collection(options_.collection);
    caption->set_text(captions_[static_cast<size_t>(j)]);
    (*caption->mutable_metadata())["image"] = absl::StrCat(split, "/img/", j / 5);
  }
  ++next_;
  return true;
}

// ---- TsvSource ----

absl::StatusOr<std::unique_ptr<TsvSource>> TsvSource::Open(const TsvOptions& options) {
  BottomUpTsvOptions reader_options;
  reader_options.feature_dim = options.feature_dim;
  if (!options.objects_vocab.empty() || !options.attributes_vocab.empty()) {
    if (options.objects_vocab.empty() || options.attributes_vocab.empty()) {
      return absl::InvalidArgumentError("--objects-vocab and --attributes-vocab go together");
    }
    absl::StatusOr<GenomeVocabulary> vocabulary = GenomeVocabulary::Load(options.objects_vocab, options.attributes_vocab);
    if (!vocabulary.ok()) return vocabulary.status();
    reader_options.vocabulary = std::make_shared<const GenomeVocabulary>(*std::move(vocabulary));
  }
  absl::StatusOr<int64_t> total = CountNonBlankLines(options.path);
  if (!total.ok()) return total.status();
  absl::StatusOr<std::unique_ptr<BottomUpTsvReader>> reader = BottomUpTsvReader::Open(options.path, reader_options);
  if (!reader.ok()) return reader.status();
  return std::unique_ptr<TsvSource>(new TsvSource(options, *std::move(reader), *total));
}

std::string TsvSource::identity() const {
  return absl::StrCat("tsv:", AbsolutePath(options_.path), ":", options_.collection, ":", options_.id_prefix, ":",
                      options_.objects_vocab.empty() ? "" : "labels");
}

absl::StatusOr<bool> TsvSource::Next(v1::IngestRequest* item) {
  item->Clear();
  absl::StatusOr<std::optional<BottomUpRecord>> record = reader_->Next();
  if (!record.ok()) return record.status();
  if (!record->has_value()) return false;
  const BottomUpRecord& r = **record;
  v1::Image* image = item->mutable_image();
  image->set_id(options_.id_prefix + r.image_id);
  image->set_collection(options_.collection);
  (*image->mutable_metadata())["image_w"] = absl::StrCat(r.image_w);
  (*image->mutable_metadata())["image_h"] = absl::StrCat(r.image_h);
  SetRegionFeatures(r.features.data.data(), r.features.rows, r.features.cols, image->mutable_region_features());
  for (int64_t b = 0; b < r.boxes.rows; ++b) {
    v1::Box* box = image->add_boxes();
    box->set_x1(r.boxes.at(b, 0));
    box->set_y1(r.boxes.at(b, 1));
    box->set_x2(r.boxes.at(b, 2));
    box->set_y2(r.boxes.at(b, 3));
  }
  for (const std::string& label : r.labels) image->add_labels(label);
  return true;
}

absl::Status TsvSource::Skip(int64_t count) {
  for (int64_t i = 0; i < count; ++i) {
    absl::StatusOr<std::optional<BottomUpRecord>> record = reader_->Next();
    if (!record.ok()) return record.status();
    if (!record->has_value()) break;
  }
  return absl::OkStatus();
}

// ---- ImageFilesSource ----

absl::StatusOr<std::unique_ptr<ImageFilesSource>> ImageFilesSource::Open(const ImageFilesOptions& options) {
  if (options.paths.empty()) return absl::InvalidArgumentError("no image files or directories given");
  absl::StatusOr<std::vector<ImageFile>> files = ListImageFiles(options.paths, options.recursive);
  if (!files.ok()) return files.status();
  // Refuse oversized files before anything is sent (the server would refuse them, and one above its
  // message limit would end the whole stream).
  for (const ImageFile& file : *files) {
    if (file.bytes > options.max_image_bytes) {
      return absl::InvalidArgumentError(absl::StrCat(file.path, " is ", file.bytes, " bytes, above --max-image-bytes ",
                                                     options.max_image_bytes, " (the server's limit)"));
    }
  }
  return std::unique_ptr<ImageFilesSource>(new ImageFilesSource(options, *std::move(files)));
}

std::string ImageFilesSource::identity() const {
  std::string paths;
  for (const std::string& path : options_.paths) absl::StrAppend(&paths, paths.empty() ? "" : ",", AbsolutePath(path));
  return absl::StrCat("images:", paths, ":", options_.recursive ? "recursive" : "", ":", options_.collection, ":",
                      options_.id_prefix, ":", files_.size());
}

absl::StatusOr<bool> ImageFilesSource::Next(v1::IngestRequest* item) {
  item->Clear();
  if (next_ >= files_.size()) return false;
  const ImageFile& file = files_[next_];
  // An empty file is sent as is: the server answers INVALID_ARGUMENT for that item only.
  absl::StatusOr<std::string> bytes = ReadImageFile(file.path, options_.max_image_bytes, /*allow_empty=*/true);
  if (!bytes.ok()) return bytes.status();
  v1::Image* image = item->mutable_image();
  image->set_id(options_.id_prefix + file.id);
  image->set_collection(options_.collection);
  (*image->mutable_metadata())["file"] = std::filesystem::path(file.path).filename().string();
  image->set_image_bytes(*std::move(bytes));
  ++next_;
  return true;
}

absl::Status ImageFilesSource::Skip(int64_t count) {
  next_ = std::min(files_.size(), next_ + static_cast<size_t>(std::max<int64_t>(0, count)));
  return absl::OkStatus();
}

}  // namespace cli
}  // namespace scanserve
