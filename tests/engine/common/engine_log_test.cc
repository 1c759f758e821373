#include "engine/common/engine_log.h"

#include <gtest/gtest.h>

#include <string>
#include <utility>
#include <vector>

namespace scanserve {
namespace {

std::vector<std::pair<EngineLogLevel, std::string>>* g_received = nullptr;

void Collect(EngineLogLevel level, std::string_view message) {
  g_received->emplace_back(level, std::string(message));
}

TEST(EngineLogTest, GoesToStderrUntilASinkIsInstalledAndAfterItIsRemoved) {
  std::vector<std::pair<EngineLogLevel, std::string>> received;
  g_received = &received;

  ::testing::internal::CaptureStderr();
  EngineLog(EngineLogLevel::kInfo, "before");
  EXPECT_EQ(::testing::internal::GetCapturedStderr(), "before\n");

  SetEngineLogSink(Collect);
  ::testing::internal::CaptureStderr();
  EngineLog(EngineLogLevel::kError, "to the sink");
  EngineLog(EngineLogLevel::kWarning, "again");
  EXPECT_EQ(::testing::internal::GetCapturedStderr(), "");
  ASSERT_EQ(received.size(), 2u);
  EXPECT_EQ(received[0].first, EngineLogLevel::kError);
  EXPECT_EQ(received[0].second, "to the sink");
  EXPECT_EQ(received[1].first, EngineLogLevel::kWarning);

  SetEngineLogSink(nullptr);
  ::testing::internal::CaptureStderr();
  EngineLog(EngineLogLevel::kInfo, "after");
  EXPECT_EQ(::testing::internal::GetCapturedStderr(), "after\n");
  EXPECT_EQ(received.size(), 2u);
  g_received = nullptr;
}

}  // namespace
}  // namespace scanserve
