// Detector precisions: names, parsing, and the start-up caveat for bf16 on CPUs that emulate it.
#include "engine/detector/detector_precision.h"

#include <gtest/gtest.h>

namespace scanserve {
namespace {

TEST(DetectorPrecisionTest, NamesParseBack) {
  for (DetectorPrecision p : {DetectorPrecision::kFloat32, DetectorPrecision::kTf32, DetectorPrecision::kBf16}) {
    absl::StatusOr<DetectorPrecision> parsed = ParseDetectorPrecision(DetectorPrecisionName(p));
    ASSERT_TRUE(parsed.ok()) << parsed.status();
    EXPECT_EQ(*parsed, p);
  }
  absl::StatusOr<DetectorPrecision> bad = ParseDetectorPrecision("fp16");
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(bad.status().message().find("fp16"), std::string::npos);
}

TEST(DetectorPrecisionTest, Bf16OnACpuWithoutBf16ArithmeticIsCaveated) {
  const std::string caveat = DetectorPrecisionCaveat(DetectorPrecision::kBf16, /*on_cuda=*/false,
                                                     /*cpu_has_bf16=*/false);
  EXPECT_NE(caveat.find("emulated"), std::string::npos) << caveat;
  EXPECT_NE(caveat.find("fp32"), std::string::npos) << caveat;
  // Where bf16 is native, or on the GPU, or for the other precisions, there is nothing to say.
  EXPECT_EQ(DetectorPrecisionCaveat(DetectorPrecision::kBf16, false, true), "");
  EXPECT_EQ(DetectorPrecisionCaveat(DetectorPrecision::kBf16, true, false), "");
  EXPECT_EQ(DetectorPrecisionCaveat(DetectorPrecision::kFloat32, false, false), "");
  EXPECT_EQ(DetectorPrecisionCaveat(DetectorPrecision::kTf32, false, false), "");
}

}  // namespace
}  // namespace scanserve
