#include "engine/text/tokenizer.h"

#include <algorithm>
#include <cstdint>
#include <iterator>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace scanserve {
namespace {

// The tokenizer is a chain of regex substitutions in NLTK; each one is reproduced below as a
// scan over code points that yields the same leftmost, non-overlapping matches as Python's
// re.sub. Working on code points (not bytes) keeps one-character classes such as [«“‘„] and \w
// exact for multi-byte characters.
using CodePoints = std::u32string;

// Python's "surrogateescape": invalid byte b is held as U+DC00+b and written back as b.
constexpr char32_t kEscapedByteBase = 0xDC00;

CodePoints DecodeUtf8(std::string_view bytes) {
  CodePoints out;
  out.reserve(bytes.size());
  const size_t n = bytes.size();
  size_t i = 0;
  while (i < n) {
    const auto lead = static_cast<unsigned char>(bytes[i]);
    if (lead < 0x80) {
      out.push_back(lead);
      ++i;
      continue;
    }
    // Bounds of the second byte exclude overlong forms, UTF-16 surrogates and values past
    // U+10FFFF, exactly the sequences Python's strict decoder rejects.
    size_t length = 0;
    char32_t code_point = 0;
    unsigned char second_min = 0x80, second_max = 0xBF;
    if (lead >= 0xC2 && lead <= 0xDF) {
      length = 2;
      code_point = lead & 0x1F;
    } else if (lead >= 0xE0 && lead <= 0xEF) {
      length = 3;
      code_point = lead & 0x0F;
      if (lead == 0xE0) second_min = 0xA0;
      if (lead == 0xED) second_max = 0x9F;
    } else if (lead >= 0xF0 && lead <= 0xF4) {
      length = 4;
      code_point = lead & 0x07;
      if (lead == 0xF0) second_min = 0x90;
      if (lead == 0xF4) second_max = 0x8F;
    }
    bool valid = length > 0 && i + length <= n;
    for (size_t k = 1; valid && k < length; ++k) {
      const auto byte = static_cast<unsigned char>(bytes[i + k]);
      const unsigned char min = k == 1 ? second_min : 0x80;
      const unsigned char max = k == 1 ? second_max : 0xBF;
      valid = byte >= min && byte <= max;
      code_point = (code_point << 6) | (byte & 0x3F);
    }
    if (!valid) {
      // Continuation bytes never start a valid sequence, so escaping just the lead byte and
      // resuming at the next one escapes each byte of the invalid run, as Python does.
      out.push_back(kEscapedByteBase + lead);
      ++i;
      continue;
    }
    out.push_back(code_point);
    i += length;
  }
  return out;
}

void AppendUtf8(char32_t c, std::string* out) {
  if (c >= kEscapedByteBase + 0x80 && c <= kEscapedByteBase + 0xFF) {
    out->push_back(static_cast<char>(c - kEscapedByteBase));
  } else if (c < 0x80) {
    out->push_back(static_cast<char>(c));
  } else if (c < 0x800) {
    out->push_back(static_cast<char>(0xC0 | (c >> 6)));
    out->push_back(static_cast<char>(0x80 | (c & 0x3F)));
  } else if (c < 0x10000) {
    out->push_back(static_cast<char>(0xE0 | (c >> 12)));
    out->push_back(static_cast<char>(0x80 | ((c >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (c & 0x3F)));
  } else {
    out->push_back(static_cast<char>(0xF0 | (c >> 18)));
    out->push_back(static_cast<char>(0x80 | ((c >> 12) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | ((c >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (c & 0x3F)));
  }
}

// ---------------------------------------------------------------------------------------------
// Character classes of Python's re on str patterns (Unicode 14, Python 3.11).

struct CodePointRange {
  char32_t first;
  char32_t last;
};

template <size_t N>
bool InRanges(const CodePointRange (&ranges)[N], char32_t c) {
  const auto* after =
      std::upper_bound(std::begin(ranges), std::end(ranges), c,
                       [](char32_t v, const CodePointRange& r) { return v < r.first; });
  return after != std::begin(ranges) && c <= std::prev(after)->last;
}

// str.isalnum() or '_' inside the regions that IsWordChar treats exactly (see there); generated
// from Python 3.11's unicodedata (Unicode 14).
// clang-format off
constexpr CodePointRange kWordRanges[] = {
    {0x0030, 0x0039}, {0x0041, 0x005A}, {0x005F, 0x005F}, {0x0061, 0x007A}, {0x00AA, 0x00AA},
    {0x00B2, 0x00B3}, {0x00B5, 0x00B5}, {0x00B9, 0x00BA}, {0x00BC, 0x00BE}, {0x00C0, 0x00D6},
    {0x00D8, 0x00F6}, {0x00F8, 0x02C1}, {0x02C6, 0x02D1}, {0x02E0, 0x02E4}, {0x02EC, 0x02EC},
    {0x02EE, 0x02EE}, {0x0370, 0x0374}, {0x0376, 0x0377}, {0x037A, 0x037D}, {0x037F, 0x037F},
    {0x0386, 0x0386}, {0x0388, 0x038A}, {0x038C, 0x038C}, {0x038E, 0x03A1}, {0x03A3, 0x03F5},
    {0x03F7, 0x0481}, {0x048A, 0x052F}, {0x0531, 0x0556}, {0x0559, 0x0559}, {0x0560, 0x0588},
    {0x05D0, 0x05EA}, {0x05EF, 0x05F2}, {0x0620, 0x064A}, {0x0660, 0x0669}, {0x066E, 0x066F},
    {0x0671, 0x06D3}, {0x06D5, 0x06D5}, {0x06E5, 0x06E6}, {0x06EE, 0x06FC}, {0x06FF, 0x06FF},
    {0x0710, 0x0710}, {0x0712, 0x072F}, {0x074D, 0x07A5}, {0x07B1, 0x07B1}, {0x07C0, 0x07EA},
    {0x07F4, 0x07F5}, {0x07FA, 0x07FA}, {0x1E00, 0x1F15}, {0x1F18, 0x1F1D}, {0x1F20, 0x1F45},
    {0x1F48, 0x1F4D}, {0x1F50, 0x1F57}, {0x1F59, 0x1F59}, {0x1F5B, 0x1F5B}, {0x1F5D, 0x1F5D},
    {0x1F5F, 0x1F7D}, {0x1F80, 0x1FB4}, {0x1FB6, 0x1FBC}, {0x1FBE, 0x1FBE}, {0x1FC2, 0x1FC4},
    {0x1FC6, 0x1FCC}, {0x1FD0, 0x1FD3}, {0x1FD6, 0x1FDB}, {0x1FE0, 0x1FEC}, {0x1FF2, 0x1FF4},
    {0x1FF6, 0x1FFC}, {0x2070, 0x2071}, {0x2074, 0x2079}, {0x207F, 0x2089}, {0x2090, 0x209C},
    {0x2102, 0x2102}, {0x2107, 0x2107}, {0x210A, 0x2113}, {0x2115, 0x2115}, {0x2119, 0x211D},
    {0x2124, 0x2124}, {0x2126, 0x2126}, {0x2128, 0x2128}, {0x212A, 0x212D}, {0x212F, 0x2139},
    {0x213C, 0x213F}, {0x2145, 0x2149}, {0x214E, 0x214E}, {0x2150, 0x2189}, {0x2460, 0x249B},
    {0x24EA, 0x24FF}, {0x2776, 0x2793}, {0x2C00, 0x2CE4}, {0x2CEB, 0x2CEE}, {0x2CF2, 0x2CF3},
    {0x2CFD, 0x2CFD}, {0x2D00, 0x2D25}, {0x2D27, 0x2D27}, {0x2D2D, 0x2D2D}, {0x2D30, 0x2D67},
    {0x2D6F, 0x2D6F}, {0x2D80, 0x2D96}, {0x2DA0, 0x2DA6}, {0x2DA8, 0x2DAE}, {0x2DB0, 0x2DB6},
    {0x2DB8, 0x2DBE}, {0x2DC0, 0x2DC6}, {0x2DC8, 0x2DCE}, {0x2DD0, 0x2DD6}, {0x2DD8, 0x2DDE},
    {0x2E2F, 0x2E2F}, {0x3005, 0x3007}, {0x3021, 0x3029}, {0x3031, 0x3035}, {0x3038, 0x303C},
    {0x3041, 0x3096}, {0x309D, 0x309F}, {0x30A1, 0x30FA}, {0x30FC, 0x30FF}, {0xFE70, 0xFE74},
    {0xFE76, 0xFEFC}, {0xFF10, 0xFF19}, {0xFF21, 0xFF3A}, {0xFF41, 0xFF5A}, {0xFF66, 0xFFBE},
    {0xFFC2, 0xFFC7}, {0xFFCA, 0xFFCF}, {0xFFD2, 0xFFD7}, {0xFFDA, 0xFFDC}, {0x1F100, 0x1F10C},
    {0x1FBF0, 0x1FBF9}, {0x20000, 0x2A6DF}, {0x2A700, 0x2B738}, {0x2B740, 0x2B81D},
    {0x2B820, 0x2CEA1}, {0x2CEB0, 0x2EBE0}, {0x2F800, 0x2FA1D}, {0x30000, 0x3134A},
};
// clang-format on

// str.isdecimal(): all of Unicode 14's decimal digits (category Nd).
// clang-format off
constexpr CodePointRange kDecimalRanges[] = {
    {0x0030, 0x0039}, {0x0660, 0x0669}, {0x06F0, 0x06F9}, {0x07C0, 0x07C9}, {0x0966, 0x096F},
    {0x09E6, 0x09EF}, {0x0A66, 0x0A6F}, {0x0AE6, 0x0AEF}, {0x0B66, 0x0B6F}, {0x0BE6, 0x0BEF},
    {0x0C66, 0x0C6F}, {0x0CE6, 0x0CEF}, {0x0D66, 0x0D6F}, {0x0DE6, 0x0DEF}, {0x0E50, 0x0E59},
    {0x0ED0, 0x0ED9}, {0x0F20, 0x0F29}, {0x1040, 0x1049}, {0x1090, 0x1099}, {0x17E0, 0x17E9},
    {0x1810, 0x1819}, {0x1946, 0x194F}, {0x19D0, 0x19D9}, {0x1A80, 0x1A89}, {0x1A90, 0x1A99},
    {0x1B50, 0x1B59}, {0x1BB0, 0x1BB9}, {0x1C40, 0x1C49}, {0x1C50, 0x1C59}, {0xA620, 0xA629},
    {0xA8D0, 0xA8D9}, {0xA900, 0xA909}, {0xA9D0, 0xA9D9}, {0xA9F0, 0xA9F9}, {0xAA50, 0xAA59},
    {0xABF0, 0xABF9}, {0xFF10, 0xFF19}, {0x104A0, 0x104A9}, {0x10D30, 0x10D39}, {0x11066, 0x1106F},
    {0x110F0, 0x110F9}, {0x11136, 0x1113F}, {0x111D0, 0x111D9}, {0x112F0, 0x112F9},
    {0x11450, 0x11459}, {0x114D0, 0x114D9}, {0x11650, 0x11659}, {0x116C0, 0x116C9},
    {0x11730, 0x11739}, {0x118E0, 0x118E9}, {0x11950, 0x11959}, {0x11C50, 0x11C59},
    {0x11D50, 0x11D59}, {0x11DA0, 0x11DA9}, {0x16A60, 0x16A69}, {0x16AC0, 0x16AC9},
    {0x16B50, 0x16B59}, {0x1D7CE, 0x1D7FF}, {0x1E140, 0x1E149}, {0x1E2F0, 0x1E2F9},
    {0x1E950, 0x1E959}, {0x1FBF0, 0x1FBF9},
};
// clang-format on

// \s, and also what str.split() splits on.
bool IsSpace(char32_t c) {
  return c == ' ' || (c >= 0x09 && c <= 0x0D) || (c >= 0x1C && c <= 0x1F) || c == 0x85 ||
         c == 0xA0 || c == 0x1680 || (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 ||
         c == 0x202F || c == 0x205F || c == 0x3000;
}

// \d
bool IsDecimalDigit(char32_t c) {
  if (c < 0x80) return c >= '0' && c <= '9';
  return InRanges(kDecimalRanges, c);
}

// \w. Exact where captions realistically have letters, quotes or symbols; in U+0800-U+1DFF,
// U+3100-U+FDFF and U+10000-U+1EFFF (Indic and other scripts, CJK ideographs, Hangul, historic
// scripts) everything but spaces, surrogates and private use counts as a letter, which misjudges
// only those scripts' combining marks, punctuation and unassigned code points.
bool IsWordChar(char32_t c) {
  if (c < 0x80) {
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
  }
  if (c < 0x800 || (c >= 0x1E00 && c < 0x3100) || (c >= 0xFE00 && c < 0x10000) || c >= 0x1F000) {
    return InRanges(kWordRanges, c);
  }
  const bool surrogate = c >= 0xD800 && c <= 0xDFFF;  // includes escaped invalid bytes
  const bool private_use = c >= 0xE000 && c <= 0xF8FF;
  return !surrogate && !private_use && !IsSpace(c);
}

// Case-insensitive comparison of the (?i) rules against a lower-case ASCII pattern letter: Python
// also equates dotted/dotless i and long s with i and s.
char32_t FoldForMatch(char32_t c) {
  if (c >= 'A' && c <= 'Z') return c + ('a' - 'A');
  if (c == 0x130 || c == 0x131) return 'i';
  if (c == 0x17F) return 's';
  return c;
}

// ---------------------------------------------------------------------------------------------
// Lower-casing with str.lower() semantics for Latin, Greek, Cyrillic and Armenian.

// Code points first..last, every `stride`-th one, lower-case to themselves plus `delta`.
struct LowerCaseRun {
  char32_t first;
  char32_t last;
  int32_t delta;
  int32_t stride;
};

// U+0000-U+058F, U+1E00-U+1EFF, the letter-like symbols, circled and full-width Latin letters;
// U+0130 is handled apart (it becomes two code points) and U+03A3 only when not word-final.
// clang-format off
constexpr LowerCaseRun kLowerCaseRuns[] = {
    {0x0041, 0x005A, 32, 1}, {0x00C0, 0x00D6, 32, 1}, {0x00D8, 0x00DE, 32, 1},
    {0x0100, 0x012E, 1, 2}, {0x0132, 0x0136, 1, 2}, {0x0139, 0x0147, 1, 2}, {0x014A, 0x0176, 1, 2},
    {0x0178, 0x0178, -121, 1}, {0x0179, 0x017D, 1, 2}, {0x0181, 0x0181, 210, 1},
    {0x0182, 0x0184, 1, 2}, {0x0186, 0x0186, 206, 1}, {0x0187, 0x0187, 1, 1},
    {0x0189, 0x018A, 205, 1}, {0x018B, 0x018B, 1, 1}, {0x018E, 0x018E, 79, 1},
    {0x018F, 0x018F, 202, 1}, {0x0190, 0x0190, 203, 1}, {0x0191, 0x0191, 1, 1},
    {0x0193, 0x0193, 205, 1}, {0x0194, 0x0194, 207, 1}, {0x0196, 0x0196, 211, 1},
    {0x0197, 0x0197, 209, 1}, {0x0198, 0x0198, 1, 1}, {0x019C, 0x019C, 211, 1},
    {0x019D, 0x019D, 213, 1}, {0x019F, 0x019F, 214, 1}, {0x01A0, 0x01A4, 1, 2},
    {0x01A6, 0x01A6, 218, 1}, {0x01A7, 0x01A7, 1, 1}, {0x01A9, 0x01A9, 218, 1},
    {0x01AC, 0x01AC, 1, 1}, {0x01AE, 0x01AE, 218, 1}, {0x01AF, 0x01AF, 1, 1},
    {0x01B1, 0x01B2, 217, 1}, {0x01B3, 0x01B5, 1, 2}, {0x01B7, 0x01B7, 219, 1},
    {0x01B8, 0x01B8, 1, 1}, {0x01BC, 0x01BC, 1, 1}, {0x01C4, 0x01C4, 2, 1}, {0x01C5, 0x01C5, 1, 1},
    {0x01C7, 0x01C7, 2, 1}, {0x01C8, 0x01C8, 1, 1}, {0x01CA, 0x01CA, 2, 1}, {0x01CB, 0x01DB, 1, 2},
    {0x01DE, 0x01EE, 1, 2}, {0x01F1, 0x01F1, 2, 1}, {0x01F2, 0x01F4, 1, 2},
    {0x01F6, 0x01F6, -97, 1}, {0x01F7, 0x01F7, -56, 1}, {0x01F8, 0x021E, 1, 2},
    {0x0220, 0x0220, -130, 1}, {0x0222, 0x0232, 1, 2}, {0x023A, 0x023A, 10795, 1},
    {0x023B, 0x023B, 1, 1}, {0x023D, 0x023D, -163, 1}, {0x023E, 0x023E, 10792, 1},
    {0x0241, 0x0241, 1, 1}, {0x0243, 0x0243, -195, 1}, {0x0244, 0x0244, 69, 1},
    {0x0245, 0x0245, 71, 1}, {0x0246, 0x024E, 1, 2}, {0x0370, 0x0372, 1, 2}, {0x0376, 0x0376, 1, 1},
    {0x037F, 0x037F, 116, 1}, {0x0386, 0x0386, 38, 1}, {0x0388, 0x038A, 37, 1},
    {0x038C, 0x038C, 64, 1}, {0x038E, 0x038F, 63, 1}, {0x0391, 0x03A1, 32, 1},
    {0x03A3, 0x03AB, 32, 1}, {0x03CF, 0x03CF, 8, 1}, {0x03D8, 0x03EE, 1, 2},
    {0x03F4, 0x03F4, -60, 1}, {0x03F7, 0x03F7, 1, 1}, {0x03F9, 0x03F9, -7, 1},
    {0x03FA, 0x03FA, 1, 1}, {0x03FD, 0x03FF, -130, 1}, {0x0400, 0x040F, 80, 1},
    {0x0410, 0x042F, 32, 1}, {0x0460, 0x0480, 1, 2}, {0x048A, 0x04BE, 1, 2},
    {0x04C0, 0x04C0, 15, 1}, {0x04C1, 0x04CD, 1, 2}, {0x04D0, 0x052E, 1, 2},
    {0x0531, 0x0556, 48, 1}, {0x1E00, 0x1E94, 1, 2}, {0x1E9E, 0x1E9E, -7615, 1},
    {0x1EA0, 0x1EFE, 1, 2}, {0x2126, 0x2126, -7517, 1}, {0x212A, 0x212A, -8383, 1},
    {0x212B, 0x212B, -8262, 1}, {0x2132, 0x2132, 28, 1}, {0x24B6, 0x24CF, 26, 1},
    {0xFF21, 0xFF3A, 32, 1},
};
// clang-format on

char32_t SimpleLowerCase(char32_t c) {
  const auto* after =
      std::upper_bound(std::begin(kLowerCaseRuns), std::end(kLowerCaseRuns), c,
                       [](char32_t v, const LowerCaseRun& run) { return v < run.first; });
  if (after == std::begin(kLowerCaseRuns)) return c;
  const LowerCaseRun& run = *std::prev(after);
  if (c > run.last || (c - run.first) % run.stride != 0) return c;
  return static_cast<char32_t>(static_cast<int32_t>(c) + run.delta);
}

// Approximations of Unicode's Case_Ignorable and Cased properties, only used to place the Greek
// final sigma.
bool IsCaseIgnorable(char32_t c) {
  static constexpr std::u32string_view kSingles =
      U"'.:^`\u00A8\u00AD\u00AF\u00B4\u00B7\u00B8\u0374\u0375\u037A\u0384\u0385\u0387\u0559\u055F"
      U"\u2018\u2019\u2024\u2027\u3005\u303B\u30FC\uFF70";
  return kSingles.find(c) != std::u32string_view::npos || (c >= 0x02B0 && c <= 0x036F) ||
         (c >= 0x0483 && c <= 0x0489) || (c >= 0x1DC0 && c <= 0x1DFF) ||
         (c >= 0x200B && c <= 0x200F) || (c >= 0x20D0 && c <= 0x20FF) ||
         (c >= 0x309B && c <= 0x309E) || (c >= 0x30FD && c <= 0x30FE) ||
         (c >= 0xFE00 && c <= 0xFE0F) || (c >= 0xFF9E && c <= 0xFF9F);
}

bool IsCased(char32_t c) {
  const bool cased_script = c < 0x0590 || (c >= 0x1E00 && c < 0x2000);
  const bool uncased_letter_or_number = c == '_' || c == 0xB2 || c == 0xB3 || c == 0xB9 ||
                                        (c >= 0xBC && c <= 0xBE) || c == 0x01BB ||
                                        (c >= 0x01C0 && c <= 0x01C3) || c == 0x0294;
  return cased_script && IsWordChar(c) && !IsDecimalDigit(c) && !uncased_letter_or_number;
}

// Capital sigma lower-cases to final sigma after a cased letter when no cased letter follows
// (skipping case-ignorable characters both ways), as str.lower() does.
bool IsFinalSigma(const CodePoints& text, size_t at) {
  size_t before = at;
  while (before > 0 && IsCaseIgnorable(text[before - 1])) --before;
  if (before == 0 || !IsCased(text[before - 1])) return false;
  size_t after = at + 1;
  while (after < text.size() && IsCaseIgnorable(text[after])) ++after;
  return after == text.size() || !IsCased(text[after]);
}

CodePoints LowerCase(const CodePoints& text) {
  CodePoints out;
  out.reserve(text.size() + 2);
  for (size_t i = 0; i < text.size(); ++i) {
    const char32_t c = text[i];
    if (c < 0x80) {
      out.push_back(c >= 'A' && c <= 'Z' ? c + ('a' - 'A') : c);
    } else if (c == 0x130) {  // İ -> i + combining dot above
      out.push_back('i');
      out.push_back(0x307);
    } else if (c == 0x3A3) {
      out.push_back(IsFinalSigma(text, i) ? 0x3C2 : 0x3C3);
    } else {
      out.push_back(SimpleLowerCase(c));
    }
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// The substitution passes.

void Append(CodePoints* out, std::u32string_view piece) { out->append(piece.data(), piece.size()); }

void AppendPadded(CodePoints* out, std::u32string_view piece) {
  out->push_back(' ');
  Append(out, piece);
  out->push_back(' ');
}

bool IsOneOf(char32_t c, std::u32string_view set) {
  return set.find(c) != std::u32string_view::npos;
}

bool MatchesAt(const CodePoints& text, size_t pos, std::u32string_view literal) {
  return text.size() >= pos + literal.size() &&
         text.compare(pos, literal.size(), literal.data(), literal.size()) == 0;
}

// As MatchesAt, under (?i) against a lower-case ASCII literal.
bool MatchesFoldedAt(const CodePoints& text, size_t pos, std::u32string_view literal) {
  if (text.size() < pos + literal.size()) return false;
  for (size_t k = 0; k < literal.size(); ++k) {
    if (FoldForMatch(text[pos + k]) != literal[k]) return false;
  }
  return true;
}

// Surrounds every character for which `pads` holds with spaces.
template <typename Predicate>
CodePoints PadEach(const CodePoints& text, Predicate pads) {
  CodePoints out;
  out.reserve(text.size() + 8);
  for (char32_t c : text) {
    if (pads(c)) {
      out.push_back(' ');
      out.push_back(c);
      out.push_back(' ');
    } else {
      out.push_back(c);
    }
  }
  return out;
}

CodePoints PadEachOf(const CodePoints& text, std::u32string_view set) {
  return PadEach(text, [set](char32_t c) { return IsOneOf(c, set); });
}

// Surrounds each maximal run of at least `min_run` copies of `c` with spaces.
CodePoints PadRuns(const CodePoints& text, char32_t c, size_t min_run) {
  CodePoints out;
  out.reserve(text.size() + 8);
  size_t i = 0;
  while (i < text.size()) {
    size_t end = i;
    while (end < text.size() && text[end] == c) ++end;
    if (end - i >= min_run) {
      AppendPadded(&out, std::u32string_view(text).substr(i, end - i));
      i = end;
    } else if (end > i) {
      out.append(text, i, end - i);
      i = end;
    } else {
      out.push_back(text[i++]);
    }
  }
  return out;
}

// Non-overlapping left-to-right replacement of a literal.
CodePoints ReplaceAll(const CodePoints& text, std::u32string_view from, std::u32string_view to) {
  CodePoints out;
  out.reserve(text.size() + 8);
  size_t i = 0;
  while (i < text.size()) {
    if (MatchesAt(text, i, from)) {
      Append(&out, to);
      i += from.size();
    } else {
      out.push_back(text[i++]);
    }
  }
  return out;
}

// Opening quotes: guillemet/curly openers and backtick runs stand alone.
CodePoints PadOpeningQuotes(const CodePoints& text) {
  CodePoints out;
  out.reserve(text.size() + 8);
  size_t i = 0;
  while (i < text.size()) {
    if (IsOneOf(text[i], U"\u00AB\u201C\u2018\u201E")) {  // « “ ‘ „
      AppendPadded(&out, std::u32string_view(text).substr(i, 1));
      ++i;
    } else if (text[i] == '`') {
      size_t end = i;
      while (end < text.size() && text[end] == '`') ++end;
      AppendPadded(&out, std::u32string_view(text).substr(i, end - i));
      i = end;
    } else {
      out.push_back(text[i++]);
    }
  }
  return out;
}

// A double quote (or two single quotes) right after a space or an opening bracket opens a quote.
CodePoints ConvertOpeningDoubleQuotes(const CodePoints& text) {
  CodePoints out;
  out.reserve(text.size() + 8);
  size_t i = 0;
  while (i < text.size()) {
    if (IsOneOf(text[i], U" ([{<")) {
      size_t quote_length = 0;
      if (MatchesAt(text, i + 1, U"\"")) {
        quote_length = 1;
      } else if (MatchesAt(text, i + 1, U"''")) {
        quote_length = 2;
      }
      if (quote_length > 0) {
        out.push_back(text[i]);
        Append(&out, U" `` ");
        i += 1 + quote_length;
        continue;
      }
    }
    out.push_back(text[i++]);
  }
  return out;
}

// An apostrophe before a lone letter (not a clitic like 's or 't) is an opening single quote.
CodePoints SplitOpeningApostrophe(const CodePoints& text) {
  static constexpr std::u32string_view kClitics[] = {U"re", U"ve", U"ll", U"m",
                                                     U"t",  U"s",  U"d",  U"n"};
  CodePoints out;
  out.reserve(text.size() + 8);
  size_t i = 0;
  while (i < text.size()) {
    if (text[i] == '\'' && i + 1 < text.size() && IsWordChar(text[i + 1]) &&
        (i + 2 == text.size() || !IsWordChar(text[i + 2]))) {
      const bool clitic =
          std::any_of(std::begin(kClitics), std::end(kClitics),
                      [&](std::u32string_view c) { return MatchesFoldedAt(text, i + 1, c); });
      if (!clitic) {
        out.push_back('\'');
        out.push_back(' ');
        out.push_back(text[i + 1]);
        i += 2;
        continue;
      }
    }
    out.push_back(text[i++]);
  }
  return out;
}

// The last period of the text, when only closing brackets/quotes and spaces follow it and it is
// not part of an ellipsis, becomes its own token. NLTK runs this twice: first with a wider set of
// closers (and a space after the period), then with the narrower one.
CodePoints SplitFinalPeriod(const CodePoints& text, std::u32string_view closers,
                            std::u32string_view period_replacement) {
  const size_t period = text.rfind(U'.');
  if (period == CodePoints::npos || period == 0 || text[period - 1] == '.') return text;
  size_t closers_end = period + 1;
  while (closers_end < text.size() && IsOneOf(text[closers_end], closers)) ++closers_end;
  for (size_t k = closers_end; k < text.size(); ++k) {
    if (!IsSpace(text[k])) return text;
  }
  CodePoints out(text, 0, period);
  Append(&out, period_replacement);
  out.append(text, period + 1, closers_end - period - 1);
  out.push_back(' ');  // the trailing whitespace collapses to one space
  return out;
}

// ':' and ',' split off unless a digit follows (keeps 1,000 and 10:30 whole). The following
// character is consumed with the match, so it cannot itself start a match.
CodePoints SplitCommasAndColons(const CodePoints& text) {
  CodePoints out;
  out.reserve(text.size() + 8);
  size_t i = 0;
  while (i < text.size()) {
    if ((text[i] == ':' || text[i] == ',') && i + 1 < text.size() && !IsDecimalDigit(text[i + 1])) {
      out.push_back(' ');
      out.push_back(text[i]);
      out.push_back(' ');
      out.push_back(text[i + 1]);
      i += 2;
    } else {
      out.push_back(text[i++]);
    }
  }
  return out;
}

// A ':' or ',' ending the text; like Python's '$', "end" may also be just before a final newline.
CodePoints SplitFinalCommaOrColon(const CodePoints& text) {
  const size_t n = text.size();
  size_t at = CodePoints::npos;
  if (n >= 1 && (text[n - 1] == ':' || text[n - 1] == ',')) {
    at = n - 1;
  } else if (n >= 2 && text[n - 1] == '\n' && (text[n - 2] == ':' || text[n - 2] == ',')) {
    at = n - 2;
  }
  if (at == CodePoints::npos) return text;
  CodePoints out(text, 0, at);
  AppendPadded(&out, std::u32string_view(text).substr(at, 1));
  out.append(text, at + 1, CodePoints::npos);
  return out;
}

// An apostrophe followed by a space closes a quote, unless it follows another apostrophe.
CodePoints SplitClosingApostrophe(const CodePoints& text) {
  CodePoints out;
  out.reserve(text.size() + 8);
  size_t i = 0;
  while (i < text.size()) {
    if (text[i] != '\'' && MatchesAt(text, i + 1, U"' ")) {
      out.push_back(text[i]);
      Append(&out, U" ' ");
      i += 3;
    } else {
      out.push_back(text[i++]);
    }
  }
  return out;
}

// Clitics before a space split from their word: 's 'm 'd (either case of the letter) and a bare
// closing ', then 'll 're 've n't (all lower or all upper case).
CodePoints SplitShortClitics(const CodePoints& text) {
  CodePoints out;
  out.reserve(text.size() + 8);
  size_t i = 0;
  while (i < text.size()) {
    if (!IsOneOf(text[i], U"' ") && i + 1 < text.size() && text[i + 1] == '\'') {
      size_t clitic_length = 0;
      if (i + 3 < text.size() && IsOneOf(text[i + 2], U"sSmMdD") && text[i + 3] == ' ') {
        clitic_length = 2;
      } else if (i + 2 < text.size() && text[i + 2] == ' ') {
        clitic_length = 1;
      }
      if (clitic_length > 0) {
        out.push_back(text[i]);
        out.push_back(' ');
        out.append(text, i + 1, clitic_length);
        out.push_back(' ');
        i += 1 + clitic_length + 1;
        continue;
      }
    }
    out.push_back(text[i++]);
  }
  return out;
}

CodePoints SplitLongClitics(const CodePoints& text) {
  static constexpr std::u32string_view kClitics[] = {U"'ll", U"'LL", U"'re", U"'RE",
                                                     U"'ve", U"'VE", U"n't", U"N'T"};
  CodePoints out;
  out.reserve(text.size() + 8);
  size_t i = 0;
  while (i < text.size()) {
    if (!IsOneOf(text[i], U"' ") && MatchesAt(text, i + 4, U" ") &&
        std::any_of(std::begin(kClitics), std::end(kClitics),
                    [&](std::u32string_view c) { return MatchesAt(text, i + 1, c); })) {
      out.push_back(text[i]);
      out.push_back(' ');
      out.append(text, i + 1, 3);
      out.push_back(' ');
      i += 5;
    } else {
      out.push_back(text[i++]);
    }
  }
  return out;
}

// A two-part contraction ("cannot" -> "can" "not"), matched case-insensitively as a whole word.
struct Contraction {
  std::u32string_view head;
  std::u32string_view tail;
  bool space_must_follow;   // instead of a word boundary
  bool space_must_precede;  // the leading space is part of the match (and replaced)
};

constexpr Contraction kContractions[] = {
    {U"can", U"not", false, false}, {U"d", U"'ye", false, false},  {U"gim", U"me", false, false},
    {U"gon", U"na", false, false},  {U"got", U"ta", false, false}, {U"lem", U"me", false, false},
    {U"more", U"'n", false, false}, {U"wan", U"na", true, false},  {U"'t", U"is", false, true},
    {U"'t", U"was", false, true},
};

CodePoints SplitContraction(const CodePoints& text, const Contraction& contraction) {
  const size_t head_length = contraction.head.size();
  const size_t length = head_length + contraction.tail.size();
  CodePoints out;
  out.reserve(text.size() + 8);
  size_t i = 0;
  while (i < text.size()) {
    size_t start = i;
    bool matched;
    if (contraction.space_must_precede) {
      matched = text[i] == ' ';
      start = i + 1;
    } else {
      // The heads start with a letter, so a word boundary means no word character before.
      matched = i == 0 || !IsWordChar(text[i - 1]);
    }
    matched = matched && MatchesFoldedAt(text, start, contraction.head) &&
              MatchesFoldedAt(text, start + head_length, contraction.tail);
    const size_t end = start + length;
    if (matched) {
      // The tails end with a letter, so a word boundary means no word character after.
      matched = contraction.space_must_follow ? end < text.size() && IsSpace(text[end])
                                              : end == text.size() || !IsWordChar(text[end]);
    }
    if (matched) {
      out.push_back(' ');
      out.append(text, start, head_length);
      out.push_back(' ');
      out.append(text, start + head_length, length - head_length);
      out.push_back(' ');
      i = end;
    } else {
      out.push_back(text[i++]);
    }
  }
  return out;
}

CodePoints ApplyNltkRules(CodePoints text) {
  // Starting quotes.
  text = PadOpeningQuotes(text);
  if (!text.empty() && text[0] == '"') text.replace(0, 1, U"``");
  text = ReplaceAll(text, U"``", U" `` ");
  text = ConvertOpeningDoubleQuotes(text);
  text = SplitOpeningApostrophe(text);

  // Punctuation.
  text = SplitFinalPeriod(text, U"])}>\"'\u00BB\u201D\u2019 ", U" . ");  // » ” ’
  text = SplitCommasAndColons(text);
  text = SplitFinalCommaOrColon(text);
  text = PadRuns(text, '.', 2);
  text = PadEachOf(text, U";@#$%&");
  text = SplitFinalPeriod(text, U"])}>\"'", U" .");
  text = PadEachOf(text, U"?!");
  text = SplitClosingApostrophe(text);
  text = PadEachOf(text, U"*");

  // Brackets and double dashes.
  text = PadEachOf(text, U"][(){}<>");
  text = ReplaceAll(text, U"--", U" -- ");

  // Ending quotes and clitics look for a following space, so the text gets one at both ends.
  text.insert(text.begin(), ' ');
  text.push_back(' ');
  text = PadEachOf(text, U"\u00BB\u201D\u2019");  // » ” ’
  text = ReplaceAll(text, U"''", U" '' ");
  text = ReplaceAll(text, U"\"", U" '' ");
  text = SplitShortClitics(text);
  text = SplitLongClitics(text);

  for (const Contraction& contraction : kContractions) text = SplitContraction(text, contraction);
  return text;
}

std::vector<std::string> SplitOnSpace(const CodePoints& text) {
  std::vector<std::string> tokens;
  size_t i = 0;
  while (i < text.size()) {
    while (i < text.size() && IsSpace(text[i])) ++i;
    if (i == text.size()) break;
    std::string token;
    while (i < text.size() && !IsSpace(text[i])) AppendUtf8(text[i++], &token);
    tokens.push_back(std::move(token));
  }
  return tokens;
}

}  // namespace

std::vector<std::string> NltkWordTokenize(std::string_view text) {
  return SplitOnSpace(ApplyNltkRules(DecodeUtf8(text)));
}

std::vector<std::string> TokenizeCaption(std::string_view caption) {
  return SplitOnSpace(ApplyNltkRules(LowerCase(DecodeUtf8(caption))));
}

}  // namespace scanserve
