// Where `scanctl import` gets its items: a sequence of IngestRequests with a stable order (so that
// an index into it can be checkpointed) and an identity (so that a checkpoint is only reused for the
// same input).
//
//  - PrecompSource: a SCAN precomputed split, {data_dir}/{split}_ims.npy (N, k, d) float region
//    features and {split}_caps.txt (5 captions per image). Images first, as `{split}/img/{i}`, then
//    captions as `{split}/cap/{j}` with metadata image = `{split}/img/{j / 5}`. Both image layouts
//    are read: one row per image, or one row per caption (each image five times; every fifth row).
//    Rows are read one image at a time, so a 1.5 GB split does not have to fit in memory.
//  - TsvSource: a bottom-up-attention TSV (6-column generate_tsv or 10-column LXMERT layout) through
//    engine/io/bottom_up_tsv.h: one image per line with its boxes (and, given the Visual Genome
//    vocabularies, labels for SCAN's explanations).
//  - ImageFilesSource: encoded image files (JPEG/PNG/WebP) sent as image_bytes; the server's
//    detector extracts the regions, boxes and labels. One file is read at a time.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "engine/common/npy.h"
#include "client/image_files.h"
#include "engine/io/bottom_up_tsv.h"
#include "scanserve/v1/scanserve.pb.h"

namespace scanserve {
namespace cli {

class IngestSource {
 public:
  virtual ~IngestSource() = default;
  // Names the input and every option that changes the items (for checkpoints).
  virtual std::string identity() const = 0;
  // Items in the whole input.
  virtual int64_t total() const = 0;
  // Fills the next item; false at the end.
  virtual absl::StatusOr<bool> Next(v1::IngestRequest* item) = 0;
  // Moves past the next `count` items without producing them.
  virtual absl::Status Skip(int64_t count) = 0;
};

struct PrecompOptions {
  std::string data_dir;
  std::string split;
  std::string collection;
  bool images = true;
  bool captions = true;
};

class PrecompSource final : public IngestSource {
 public:
  static absl::StatusOr<std::unique_ptr<PrecompSource>> Open(const PrecompOptions& options);

  std::string identity() const override;
  int64_t total() const override;
  absl::StatusOr<bool> Next(v1::IngestRequest* item) override;
  absl::Status Skip(int64_t count) override;

  int64_t num_images() const { return num_images_; }
  int64_t num_captions() const { return static_cast<int64_t>(captions_.size()); }

 private:
  PrecompSource(PrecompOptions options, NpyFile images) : options_(std::move(options)), images_(std::move(images)) {}

  PrecompOptions options_;
  NpyFile images_;
  int64_t num_images_ = 0;
  int64_t row_stride_ = 1;  // 5 when the file has one row per caption
  std::vector<std::string> captions_;
  int64_t next_ = 0;  // index of the next item over [images..., captions...]
  std::vector<float> row_;  // scratch: one image's k x d features
};

struct TsvOptions {
  std::string path;
  std::string collection;
  std::string id_prefix;         // prepended to every image id
  int64_t feature_dim = 2048;    // 0 = infer per line
  std::string objects_vocab;     // with attributes_vocab: label the regions (LXMERT layout)
  std::string attributes_vocab;
};

class TsvSource final : public IngestSource {
 public:
  // Counts the file's lines first (for progress and ETA).
  static absl::StatusOr<std::unique_ptr<TsvSource>> Open(const TsvOptions& options);

  std::string identity() const override;
  int64_t total() const override { return total_; }
  absl::StatusOr<bool> Next(v1::IngestRequest* item) override;
  absl::Status Skip(int64_t count) override;

 private:
  TsvSource(TsvOptions options, std::unique_ptr<BottomUpTsvReader> reader, int64_t total)
      : options_(std::move(options)), reader_(std::move(reader)), total_(total) {}

  TsvOptions options_;
  std::unique_ptr<BottomUpTsvReader> reader_;
  int64_t total_ = 0;
};

struct ImageFilesOptions {
  std::vector<std::string> paths;  // files and directories (see ListImageFiles)
  bool recursive = false;
  std::string collection;
  std::string id_prefix;           // prepended to every image id
  int64_t max_image_bytes = 32LL << 20;  // larger files are refused before sending
};

class ImageFilesSource final : public IngestSource {
 public:
  // Lists the files (sorted by id) without reading them; a file above max_image_bytes is
  // INVALID_ARGUMENT here, before anything is sent.
  static absl::StatusOr<std::unique_ptr<ImageFilesSource>> Open(const ImageFilesOptions& options);

  std::string identity() const override;
  int64_t total() const override { return static_cast<int64_t>(files_.size()); }
  // The next file as an Image with image_bytes (metadata file = its name). A file that cannot be
  // read ends the import with its error; an empty one is sent (the server refuses that item).
  absl::StatusOr<bool> Next(v1::IngestRequest* item) override;
  absl::Status Skip(int64_t count) override;

 private:
  ImageFilesSource(ImageFilesOptions options, std::vector<ImageFile> files)
      : options_(std::move(options)), files_(std::move(files)) {}

  ImageFilesOptions options_;
  std::vector<ImageFile> files_;
  size_t next_ = 0;
};

// Lines of a caption file, each stripped of surrounding ASCII whitespace; an empty line is
// INVALID_ARGUMENT with its 1-based number (as SCAN's loader would choke on it).
absl::StatusOr<std::vector<std::string>> ReadCaptionFile(const std::string& path);

}  // namespace cli
}  // namespace scanserve
