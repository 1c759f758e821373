#include "engine/detector/image_probe.h"

#include <cstring>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace scanserve {
namespace {

uint32_t BigEndian16(const unsigned char* p) { return (uint32_t{p[0]} << 8) | p[1]; }
uint32_t BigEndian32(const unsigned char* p) {
  return (uint32_t{p[0]} << 24) | (uint32_t{p[1]} << 16) | (uint32_t{p[2]} << 8) | p[3];
}
uint32_t LittleEndian24(const unsigned char* p) {
  return uint32_t{p[0]} | (uint32_t{p[1]} << 8) | (uint32_t{p[2]} << 16);
}
uint32_t LittleEndian32(const unsigned char* p) { return LittleEndian24(p) | (uint32_t{p[3]} << 24); }

absl::Status Truncated(const char* format, const char* what) {
  return absl::InvalidArgumentError(absl::StrCat("truncated ", format, " image: ", what));
}

// Walks the marker segments up to the first start-of-scan, taking the size from the SOFn segment;
// then requires an EOI marker (FF D9) after the scan. Entropy-coded data never contains FF D9
// (0xFF is stuffed as FF 00), and EXIF thumbnails, which do, sit before the scan.
absl::StatusOr<ImageProbe> ProbeJpeg(const unsigned char* data, size_t size) {
  ImageProbe probe;
  probe.format = ImageFormat::kJpeg;
  size_t pos = 2;
  bool have_size = false;
  while (true) {
    while (pos < size && data[pos] == 0xFF && pos + 1 < size && data[pos + 1] == 0xFF) ++pos;  // fill
    if (pos + 4 > size) return Truncated("JPEG", "the header ends before the image data");
    if (data[pos] != 0xFF) {
      return absl::InvalidArgumentError("corrupt JPEG image: expected a marker in the header");
    }
    const unsigned char marker = data[pos + 1];
    if (marker == 0xD9) return Truncated("JPEG", "end-of-image before any scan data");
    if (marker == 0x01 || (marker >= 0xD0 && marker <= 0xD7)) {  // stand-alone markers
      pos += 2;
      continue;
    }
    const uint32_t length = BigEndian16(data + pos + 2);
    if (length < 2) return absl::InvalidArgumentError("corrupt JPEG image: bad segment length");
    if (pos + 2 + length > size) return Truncated("JPEG", "a header segment runs past the end");
    const bool is_sof = marker >= 0xC0 && marker <= 0xCF && marker != 0xC4 && marker != 0xC8 &&
                        marker != 0xCC;
    if (is_sof) {
      if (length < 7) return absl::InvalidArgumentError("corrupt JPEG image: short frame header");
      probe.height = BigEndian16(data + pos + 5);
      probe.width = BigEndian16(data + pos + 7);
      have_size = true;
    }
    pos += 2 + length;
    if (marker == 0xDA) break;  // start of scan: entropy-coded data follows
  }
  if (!have_size) return absl::InvalidArgumentError("corrupt JPEG image: no frame header before the scan");
  for (size_t i = pos; i + 1 < size; ++i) {
    if (data[i] == 0xFF && data[i + 1] == 0xD9) return probe;
  }
  return Truncated("JPEG", "no end-of-image marker after the scan data");
}

absl::StatusOr<ImageProbe> ProbePng(const unsigned char* data, size_t size) {
  ImageProbe probe;
  probe.format = ImageFormat::kPng;
  if (size < 33) return Truncated("PNG", "shorter than its header");
  if (std::memcmp(data + 12, "IHDR", 4) != 0) {
    return absl::InvalidArgumentError("corrupt PNG image: the first chunk is not IHDR");
  }
  probe.width = BigEndian32(data + 16);
  probe.height = BigEndian32(data + 20);
  // The IEND chunk (length 0, "IEND", CRC) closes every complete PNG; trailing bytes are tolerated.
  const std::string_view view(reinterpret_cast<const char*>(data), size);
  const size_t iend = view.rfind(std::string_view("\0\0\0\0IEND", 8));
  if (iend != std::string_view::npos && iend >= 33 && iend + 12 <= size) return probe;
  return Truncated("PNG", "no IEND chunk");
}

absl::StatusOr<ImageProbe> ProbeWebp(const unsigned char* data, size_t size) {
  ImageProbe probe;
  probe.format = ImageFormat::kWebp;
  if (size < 30) return Truncated("WebP", "shorter than its header");
  const uint64_t riff_size = LittleEndian32(data + 4);
  if (riff_size + 8 > size) return Truncated("WebP", "shorter than its RIFF size");
  const unsigned char* chunk = data + 12;
  if (std::memcmp(chunk, "VP8 ", 4) == 0) {
    // Lossy: 3-byte frame tag, start code 9D 01 2A, then 14-bit width and height.
    if (chunk[11] != 0x9D || chunk[12] != 0x01 || chunk[13] != 0x2A) {
      return absl::InvalidArgumentError("corrupt WebP image: bad VP8 start code");
    }
    probe.width = (chunk[14] | (chunk[15] << 8)) & 0x3FFF;
    probe.height = (chunk[16] | (chunk[17] << 8)) & 0x3FFF;
  } else if (std::memcmp(chunk, "VP8L", 4) == 0) {
    // Lossless: signature 0x2F, then (width - 1) and (height - 1) in 14 bits each.
    if (chunk[8] != 0x2F) return absl::InvalidArgumentError("corrupt WebP image: bad VP8L signature");
    const uint32_t bits = LittleEndian32(chunk + 9);
    probe.width = (bits & 0x3FFF) + 1;
    probe.height = ((bits >> 14) & 0x3FFF) + 1;
  } else if (std::memcmp(chunk, "VP8X", 4) == 0) {
    // Extended: 24-bit (canvas width - 1) and (canvas height - 1).
    probe.width = LittleEndian24(chunk + 12) + 1;
    probe.height = LittleEndian24(chunk + 15) + 1;
  } else {
    return absl::InvalidArgumentError("corrupt WebP image: unknown first chunk");
  }
  return probe;
}

}  // namespace

const char* ToString(ImageFormat format) {
  switch (format) {
    case ImageFormat::kJpeg: return "JPEG";
    case ImageFormat::kPng: return "PNG";
    case ImageFormat::kWebp: return "WebP";
  }
  return "?";
}

absl::StatusOr<ImageProbe> ProbeImage(std::string_view bytes) {
  if (bytes.empty()) return absl::InvalidArgumentError("empty image payload");
  const auto* data = reinterpret_cast<const unsigned char*>(bytes.data());
  const size_t size = bytes.size();
  absl::StatusOr<ImageProbe> probe;
  if (size >= 3 && data[0] == 0xFF && data[1] == 0xD8 && data[2] == 0xFF) {
    probe = ProbeJpeg(data, size);
  } else if (size >= 8 && std::memcmp(data, "\x89PNG\r\n\x1a\n", 8) == 0) {
    probe = ProbePng(data, size);
  } else if (size >= 12 && std::memcmp(data, "RIFF", 4) == 0 && std::memcmp(data + 8, "WEBP", 4) == 0) {
    probe = ProbeWebp(data, size);
  } else {
    return absl::InvalidArgumentError(
        absl::StrCat("not a JPEG, PNG or WebP image (", size, " bytes, unrecognised signature)"));
  }
  if (!probe.ok()) return probe;
  if (probe->width <= 0 || probe->height <= 0) {
    return absl::InvalidArgumentError(absl::StrCat("corrupt ", ToString(probe->format),
                                                   " image: zero width or height in the header"));
  }
  return probe;
}

}  // namespace scanserve
