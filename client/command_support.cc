#include <map>
#include <optional>
#include <string>

#include "absl/strings/str_cat.h"
#include "client/commands.h"
#include "client/exit_codes.h"

namespace scanserve {
namespace cli {

int UsageError(const std::string& message) {
  std::fprintf(stderr, "scanctl: %s\nRun 'scanctl --help' for usage.\n", message.c_str());
  return kExitUsage;
}

absl::Status FillFilter(const ParsedArgs& args, v1::Filter* filter) {
  if (std::optional<std::string> collection = args.Value("collection")) filter->set_collection(*collection);
  absl::StatusOr<std::map<std::string, std::string>> where = args.KeyValues("where");
  if (!where.ok()) return where.status();
  for (const auto& [key, value] : *where) (*filter->mutable_metadata())[key] = value;
  return absl::OkStatus();
}

absl::StatusOr<int32_t> TopK(const ParsedArgs& args) {
  absl::StatusOr<std::optional<int64_t>> top_k = args.Int("top-k", 1, 1'000'000);
  if (!top_k.ok()) return top_k.status();
  return static_cast<int32_t>(top_k->value_or(10));
}

std::string FormatMetadata(const google::protobuf::Map<std::string, std::string>& metadata) {
  std::map<std::string, std::string> sorted(metadata.begin(), metadata.end());
  std::string text;
  for (const auto& [key, value] : sorted) absl::StrAppend(&text, text.empty() ? "" : ",", key, "=", value);
  return text;
}

}  // namespace cli
}  // namespace scanserve
