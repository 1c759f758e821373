// ParseJson/ParseJsonObject and JsonFields: parsing and typed reads that never throw, refuse what
// does not fit the C++ type, and name the file, the position of a syntax error or the field's
// whole path in the file.
#include "engine/common/json_fields.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <string>

#include "absl/strings/match.h"

namespace scanserve {
namespace {

using Json = nlohmann::json;

const Json kSample = Json::parse(R"({
  "name": "scan", "count": 3, "ratio": 0.5, "flag": true, "negative": -2,
  "huge": 4294967297, "biggest": 18446744073709551615, "huge_number": 1e300,
  "nested": {"inner": {"value": "x"}}, "list": [{"a": 1}, 7]
})");

JsonFields Fields(absl::StatusCode code = absl::StatusCode::kInvalidArgument) {
  return JsonFields(kSample, "sample.json", code);
}

TEST(JsonFieldsTest, ReadsEachTypeAndKeepsDefaultsForAbsentFields) {
  const JsonFields fields = Fields();
  std::string name;
  int count = 0;
  double ratio = 0;
  float ratio_float = 0;
  bool flag = false;
  int64_t negative = 0;
  int64_t huge = 0;
  uint64_t biggest = 0;
  ASSERT_TRUE(fields.Optional("name", &name).ok());
  ASSERT_TRUE(fields.Optional("count", &count).ok());
  ASSERT_TRUE(fields.Optional("ratio", &ratio).ok());
  ASSERT_TRUE(fields.Optional("ratio", &ratio_float).ok());
  ASSERT_TRUE(fields.Required("flag", &flag).ok());
  ASSERT_TRUE(fields.Required("negative", &negative).ok());
  ASSERT_TRUE(fields.Required("huge", &huge).ok());
  ASSERT_TRUE(fields.Required("biggest", &biggest).ok());
  EXPECT_EQ(name, "scan");
  EXPECT_EQ(count, 3);
  EXPECT_EQ(ratio, 0.5);
  EXPECT_EQ(ratio_float, 0.5f);
  EXPECT_TRUE(flag);
  EXPECT_EQ(negative, -2);
  EXPECT_EQ(huge, 4294967297LL);
  EXPECT_EQ(biggest, UINT64_MAX);
  // An integer is a number too.
  ASSERT_TRUE(fields.Optional("count", &ratio).ok());
  EXPECT_EQ(ratio, 3.0);

  int kept = 42;
  ASSERT_TRUE(fields.Optional("absent", &kept).ok());
  EXPECT_EQ(kept, 42);
}

TEST(JsonFieldsTest, ARequiredFieldThatIsAbsentIsNamed) {
  int value = 0;
  const absl::Status status = Fields().Required("absent", &value);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(status.message(), "sample.json: field 'absent' is missing");
}

TEST(JsonFieldsTest, WrongTypesAreRefusedNamingTheExpectedType) {
  const JsonFields fields = Fields();
  std::string text;
  int integer = 0;
  double number = 0;
  bool flag = false;
  EXPECT_EQ(fields.Optional("count", &text).message(), "sample.json: field 'count' must be a string");
  EXPECT_EQ(fields.Optional("ratio", &integer).message(), "sample.json: field 'ratio' must be an integer");
  EXPECT_EQ(fields.Optional("name", &number).message(), "sample.json: field 'name' must be a number");
  EXPECT_EQ(fields.Optional("count", &flag).message(), "sample.json: field 'count' must be true or false");
  EXPECT_EQ(fields.Optional("flag", &integer).message(), "sample.json: field 'flag' must be an integer");
  // A failed read leaves the destination alone.
  EXPECT_EQ(integer, 0);
  EXPECT_EQ(text, "");
}

TEST(JsonFieldsTest, IntegersOutsideTheTypeAreRefusedNotWrapped) {
  const JsonFields fields = Fields();
  int as_int = 0;
  uint32_t as_u32 = 0;
  uint64_t as_u64 = 0;
  int64_t as_i64 = 0;
  int8_t as_i8 = 0;
  // 2^32 + 1 would wrap to 1 in an int.
  EXPECT_EQ(fields.Optional("huge", &as_int).message(), "sample.json: field 'huge' is out of range");
  EXPECT_FALSE(fields.Optional("huge", &as_u32).ok());
  EXPECT_FALSE(fields.Optional("negative", &as_u64).ok());
  EXPECT_FALSE(fields.Optional("biggest", &as_i64).ok());
  EXPECT_TRUE(fields.Optional("negative", &as_i8).ok());
  EXPECT_EQ(as_i8, -2);
  EXPECT_EQ(as_int, 0);
  float as_float = 0;
  EXPECT_EQ(fields.Optional("huge_number", &as_float).message(),
            "sample.json: field 'huge_number' is out of range");
  double as_double = 0;
  EXPECT_TRUE(fields.Optional("huge_number", &as_double).ok());
}

TEST(JsonFieldsTest, NestedReadersNameTheWholePath) {
  const JsonFields fields = Fields(absl::StatusCode::kDataLoss);
  absl::StatusOr<const Json*> nested = fields.OptionalObject("nested");
  ASSERT_TRUE(nested.ok() && *nested != nullptr);
  const JsonFields nested_fields = fields.Nested(**nested, "nested");
  absl::StatusOr<const Json*> inner = nested_fields.OptionalObject("inner");
  ASSERT_TRUE(inner.ok() && *inner != nullptr);
  int value = 0;
  const absl::Status status = nested_fields.Nested(**inner, "inner").Optional("value", &value);
  EXPECT_EQ(status.code(), absl::StatusCode::kDataLoss);
  EXPECT_EQ(status.message(),
            "sample.json: field 'nested.inner.value' must be an integer; the file is damaged");

  absl::StatusOr<const Json*> list = fields.OptionalArray("list");
  ASSERT_TRUE(list.ok() && *list != nullptr);
  const JsonFields elements = fields.Nested(**list, "list");
  EXPECT_EQ(elements.Path("[1]"), "list[1]");
  EXPECT_EQ(elements.Nested((**list)[0], "[0]").Path("a"), "list[0].a");
  absl::StatusOr<JsonFields> element = elements.NestedObject((**list)[0], "[0]");
  ASSERT_TRUE(element.ok()) << element.status();
  EXPECT_EQ(element->Path("a"), "list[0].a");
  EXPECT_EQ(elements.NestedObject((**list)[1], "[1]").status().message(),
            "sample.json: field 'list[1]' must be an object; the file is damaged");
}

TEST(JsonFieldsTest, ObjectsAndArraysAreCheckedAndMayBeAbsent) {
  const JsonFields fields = Fields();
  absl::StatusOr<const Json*> absent = fields.OptionalObject("absent");
  ASSERT_TRUE(absent.ok());
  EXPECT_EQ(*absent, nullptr);
  EXPECT_EQ(fields.OptionalObject("list").status().message(), "sample.json: field 'list' must be an object");
  EXPECT_EQ(fields.OptionalArray("nested").status().message(), "sample.json: field 'nested' must be an array");
  EXPECT_EQ(fields.OptionalArray("absent").value(), nullptr);
  EXPECT_TRUE(fields.Has("list"));
  EXPECT_FALSE(fields.Has("absent"));
}

TEST(ParseJsonTest, ParsesOrNamesTheFileAndThePositionOfTheError) {
  absl::StatusOr<Json> json = ParseJson("[1, 2]", "a.json", absl::StatusCode::kInvalidArgument);
  ASSERT_TRUE(json.ok()) << json.status();
  EXPECT_EQ(*json, Json::array({1, 2}));

  json = ParseJson("{\n  \"a\": 1,\n  \"b\" 2\n}", "a.json", absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(json.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StartsWith(json.status().message(), "a.json: not valid JSON (at line 3, column 7: "))
      << json.status();
  EXPECT_EQ(json.status().message().find("json.exception"), absl::string_view::npos) << json.status();
  // The reason, without nlohmann's echo of the input (which may be binary).
  json = ParseJson("{\"a\": tru}", "a.json", absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(json.status().message(),
            "a.json: not valid JSON (at line 1, column 10: syntax error while parsing value - invalid literal)");

  for (const char* bad : {"", "{", "nul", "{\"a\": \"\xff\"}", "[1] [2]"}) {
    json = ParseJson(bad, "a.json", absl::StatusCode::kDataLoss);
    EXPECT_EQ(json.status().code(), absl::StatusCode::kDataLoss) << bad;
    EXPECT_TRUE(absl::EndsWith(json.status().message(), "; the file is damaged")) << json.status();
  }
}

TEST(ParseJsonTest, ParseJsonObjectRefusesOtherDocuments) {
  EXPECT_TRUE(ParseJsonObject("{}", "a.json", absl::StatusCode::kInvalidArgument).ok());
  EXPECT_EQ(ParseJsonObject("[1, 2]", "a.json", absl::StatusCode::kInvalidArgument).status().message(),
            "a.json: not a JSON object (array)");
  EXPECT_EQ(ParseJsonObject("7", "a.json", absl::StatusCode::kInvalidArgument).status().message(),
            "a.json: not a JSON object (number)");
  EXPECT_TRUE(absl::StartsWith(
      ParseJsonObject("{", "a.json", absl::StatusCode::kInvalidArgument).status().message(),
      "a.json: not valid JSON (at line 1, column 2: "));  // just past the end
}

}  // namespace
}  // namespace scanserve
