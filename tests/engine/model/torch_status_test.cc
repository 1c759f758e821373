// TorchErrorStatus / CatchTorch on errors LibTorch really throws: a failed allocation is
// RESOURCE_EXHAUSTED, anything else INTERNAL, and no message carries c10's C++ backtrace.
#include "engine/common/torch_status.h"

#include <gtest/gtest.h>

#include <stdexcept>
#include <string>

#include <ATen/ops/empty.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/zeros.h>

#include "absl/status/statusor.h"

namespace scanserve {
namespace {

TEST(TorchStatusTest, AShapeMismatchIsInternalWithoutTheBacktrace) {
  const absl::Status status = CatchTorch("multiplying", []() -> absl::Status {
    at::mm(at::zeros({2, 3}), at::zeros({4, 5}));
    return absl::OkStatus();
  });
  EXPECT_EQ(status.code(), absl::StatusCode::kInternal) << status;
  EXPECT_EQ(status.message().rfind("multiplying: ", 0), 0u) << status;
  EXPECT_NE(status.message().find("2x3"), std::string::npos) << status;
  EXPECT_EQ(status.message().find("Exception raised from"), std::string::npos) << status;
}

TEST(TorchStatusTest, AFailedAllocationIsResourceExhausted) {
  // 2^42 floats (16 TiB): more than any machine this runs on can commit.
  const absl::StatusOr<int64_t> result = CatchTorch("allocating", []() -> absl::StatusOr<int64_t> {
    return at::empty({int64_t{1} << 42}).numel();
  });
  EXPECT_EQ(result.status().code(), absl::StatusCode::kResourceExhausted) << result.status();
  EXPECT_NE(result.status().message().find("out of memory"), std::string::npos) << result.status();
}

TEST(TorchStatusTest, OtherExceptionsAndSuccessPassThrough) {
  EXPECT_EQ(TorchErrorStatus("step", std::runtime_error("boom")), absl::InternalError("step: boom"));
  const absl::StatusOr<int> value = CatchTorch("step", []() -> absl::StatusOr<int> { return 7; });
  ASSERT_TRUE(value.ok());
  EXPECT_EQ(*value, 7);
  EXPECT_EQ(CatchTorch("step", [] { return absl::NotFoundError("kept"); }), absl::NotFoundError("kept"));
}

}  // namespace
}  // namespace scanserve
