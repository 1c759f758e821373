// Reads an encoded image's format and size from its header, and checks that the payload is
// complete, without decoding it: the detector refuses a 20000x20000 image or a truncated upload
// before OpenCV allocates a gigabyte or silently fills the missing rows with grey.
#pragma once

#include <cstdint>
#include <string_view>

#include "absl/status/statusor.h"

namespace scanserve {

enum class ImageFormat { kJpeg, kPng, kWebp };

const char* ToString(ImageFormat format);

struct ImageProbe {
  ImageFormat format = ImageFormat::kJpeg;
  int64_t width = 0;   // as stored (before any EXIF rotation)
  int64_t height = 0;
};

// INVALID_ARGUMENT, saying why, for: empty bytes; anything but JPEG, PNG or WebP; a header that
// ends early or declares a zero size; a JPEG without an end-of-image marker after its scan data,
// a PNG without its IEND chunk, a WebP shorter than its RIFF size (all: truncated uploads).
absl::StatusOr<ImageProbe> ProbeImage(std::string_view bytes);

}  // namespace scanserve
