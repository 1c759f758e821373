// The 12 RPN anchors of the bottom-up-attention detector (spec §2.4): base window 16, ratios
// (h/w) 0.5, 1, 2 and scales 4, 8, 16, 32, ratio-major (index = 4 * ratio_index + scale_index).
// Boxes are x1, y1, x2, y2 in the legacy "+1" pixel convention (width = x2 - x1 + 1).
#pragma once

#include <array>
#include <vector>

#include "absl/types/span.h"

namespace scanserve {

inline constexpr int kNumBottomUpAnchors = 12;

// The constant table the detector uses (spec §2.4), anchored at feature cell (0, 0). The anchor
// of cell (h, w) is this plus (16w, 16h, 16w, 16h).
const std::array<std::array<float, 4>, kNumBottomUpAnchors>& BottomUpAnchors();

// The original Faster R-CNN generate_anchors: a (0, 0, base_size-1, base_size-1) window, one
// area-preserving reshape per ratio (sizes rounded half to even, as numpy.round does), then each
// scaled; ratio-major order. Kept to check the table above, not used at run time.
std::vector<std::array<double, 4>> GenerateAnchors(int base_size, absl::Span<const double> ratios,
                                                   absl::Span<const double> scales);

}  // namespace scanserve
