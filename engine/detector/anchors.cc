#include "engine/detector/anchors.h"

#include <cmath>

namespace scanserve {
namespace {

struct Window {
  double width, height, center_x, center_y;
};

// Width, height and centre of a +1-convention box.
Window WindowOf(const std::array<double, 4>& box) {
  const double width = box[2] - box[0] + 1;
  const double height = box[3] - box[1] + 1;
  return {width, height, box[0] + 0.5 * (width - 1), box[1] + 0.5 * (height - 1)};
}

std::array<double, 4> BoxAround(double width, double height, double center_x, double center_y) {
  return {center_x - 0.5 * (width - 1), center_y - 0.5 * (height - 1),
          center_x + 0.5 * (width - 1), center_y + 0.5 * (height - 1)};
}

}  // namespace

const std::array<std::array<float, 4>, kNumBottomUpAnchors>& BottomUpAnchors() {
  static constexpr std::array<std::array<float, 4>, kNumBottomUpAnchors> kAnchors = {{
      {-38, -16, 53, 31},       // ratio 0.5, scale 4
      {-84, -40, 99, 55},       //            scale 8
      {-176, -88, 191, 103},    //            scale 16
      {-360, -184, 375, 199},   //            scale 32
      {-24, -24, 39, 39},       // ratio 1
      {-56, -56, 71, 71},
      {-120, -120, 135, 135},
      {-248, -248, 263, 263},
      {-14, -36, 29, 51},       // ratio 2
      {-36, -80, 51, 95},
      {-80, -168, 95, 183},
      {-168, -344, 183, 359},
  }};
  return kAnchors;
}

std::vector<std::array<double, 4>> GenerateAnchors(int base_size, absl::Span<const double> ratios,
                                                   absl::Span<const double> scales) {
  const std::array<double, 4> base = {0, 0, base_size - 1.0, base_size - 1.0};
  const Window base_window = WindowOf(base);
  const double area = base_window.width * base_window.height;
  std::vector<std::array<double, 4>> anchors;
  anchors.reserve(ratios.size() * scales.size());
  for (double ratio : ratios) {
    // numpy.round is round-half-to-even, which std::nearbyint gives in the default rounding mode.
    const double width = std::nearbyint(std::sqrt(area / ratio));
    const double height = std::nearbyint(width * ratio);
    const Window ratio_window = WindowOf(
        BoxAround(width, height, base_window.center_x, base_window.center_y));
    for (double scale : scales) {
      anchors.push_back(BoxAround(ratio_window.width * scale, ratio_window.height * scale,
                                  ratio_window.center_x, ratio_window.center_y));
    }
  }
  return anchors;
}

}  // namespace scanserve
