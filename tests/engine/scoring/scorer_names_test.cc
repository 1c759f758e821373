// The names the flags, stats and logs use for scorer backends and storage types parse back, and
// anything else is refused naming the accepted values.
#include <gtest/gtest.h>

#include <string>

#include "engine/scoring/scorer_backend.h"
#include "engine/scoring/storage_type.h"

namespace scanserve {
namespace {

TEST(ScorerNamesTest, BackendNamesParseBack) {
  for (ScorerBackend b : {ScorerBackend::kCpu, ScorerBackend::kReference, ScorerBackend::kCuda}) {
    absl::StatusOr<ScorerBackend> parsed = ParseScorerBackend(ScorerBackendName(b));
    ASSERT_TRUE(parsed.ok()) << parsed.status();
    EXPECT_EQ(*parsed, b);
  }
  absl::StatusOr<ScorerBackend> bad = ParseScorerBackend("gpu");
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(bad.status().message(), "--backend: expected cpu, reference or cuda, got 'gpu'");
  EXPECT_FALSE(ParseScorerBackend("CPU").ok());
  EXPECT_FALSE(ParseScorerBackend("").ok());
}

TEST(ScorerNamesTest, StorageNamesParseBack) {
  for (StorageType t : {StorageType::kFloat32, StorageType::kBFloat16, StorageType::kFp8E4M3}) {
    absl::StatusOr<StorageType> parsed = ParseStorageType(StorageTypeName(t));
    ASSERT_TRUE(parsed.ok()) << parsed.status();
    EXPECT_EQ(*parsed, t);
  }
  EXPECT_EQ(ParseStorageType("fp16").status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace scanserve
