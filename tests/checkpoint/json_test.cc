// The bounded JSON parser: strictness (each rejected form pinned), string
// decoding compared with what Python's json module wrote, and the caps.
#include "server/checkpoint/json.h"

#include <fstream>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "tests/checkpoint/zip_fixtures.h"

namespace weightgate::checkpoint {
namespace {

using ::weightgate::checkpoint::testing::FixtureDir;
using ::weightgate::checkpoint::testing::HexDecode;
using ::weightgate::checkpoint::testing::SplitTabs;

void ExpectRejected(std::string_view text, const std::string& reason,
                    const JsonLimits& limits = {}) {
  absl::StatusOr<JsonValue> v = ParseJson(text, limits);
  ASSERT_FALSE(v.ok()) << "accepted: " << text;
  EXPECT_EQ(v.status().code(), absl::StatusCode::kInvalidArgument);
  std::string message(v.status().message());
  EXPECT_EQ(message.rfind("json: ", 0), 0u) << message;
  EXPECT_NE(message.find(reason), std::string::npos) << text << " -> " << message;
}

TEST(JsonTest, StringsDecodeLikePythonJson) {
  ASSERT_FALSE(FixtureDir().empty());
  std::ifstream in(FixtureDir() + "/json_strings.tsv");
  std::string line;
  int cases = 0;
  while (std::getline(in, line)) {
    std::vector<std::string> f = SplitTabs(line);
    ASSERT_EQ(f.size(), 2u);
    std::string literal = HexDecode(f[0]);
    std::string expected = HexDecode(f[1]);
    SCOPED_TRACE(literal);
    absl::StatusOr<JsonValue> v = ParseJson(literal);
    ASSERT_TRUE(v.ok()) << v.status();
    ASSERT_TRUE(v->is_string());
    EXPECT_EQ(v->text, expected);
    // Our quoting parses back to the same string.
    absl::StatusOr<JsonValue> again = ParseJson(JsonQuote(expected));
    ASSERT_TRUE(again.ok()) << again.status();
    EXPECT_EQ(again->text, expected);
    ++cases;
  }
  EXPECT_EQ(cases, 16);
}

TEST(JsonTest, ValuesAndOrder) {
  absl::StatusOr<JsonValue> v =
      ParseJson(R"( {"z": [1, -2.5e3, true, false, null], "a": {"k": "v"}, "m": 0} )");
  ASSERT_TRUE(v.ok()) << v.status();
  ASSERT_TRUE(v->is_object());
  ASSERT_EQ(v->members.size(), 3u);
  EXPECT_EQ(v->members[0].key, "z");
  EXPECT_EQ(v->members[1].key, "a");
  const JsonValue* z = v->Find("z");
  ASSERT_NE(z, nullptr);
  ASSERT_EQ(z->items.size(), 5u);
  EXPECT_EQ(z->items[0].AsInt64(), 1);
  EXPECT_EQ(z->items[1].AsDouble(), -2500.0);
  EXPECT_EQ(z->items[1].AsInt64(), std::nullopt);
  EXPECT_EQ(z->items[2].kind, JsonValue::Kind::kBool);
  EXPECT_TRUE(z->items[2].boolean);
  EXPECT_EQ(z->items[4].kind, JsonValue::Kind::kNull);
  EXPECT_EQ(v->Find("a")->Find("k")->text, "v");
  EXPECT_EQ(v->Find("missing"), nullptr);
}

TEST(JsonTest, IntegerRange) {
  EXPECT_EQ(ParseJson("9223372036854775807")->AsInt64(), INT64_MAX);
  EXPECT_EQ(ParseJson("-9223372036854775808")->AsInt64(), INT64_MIN);
  EXPECT_EQ(ParseJson("9223372036854775808")->AsInt64(), std::nullopt);
  EXPECT_EQ(ParseJson("18446744073709551615")->AsUint64(), UINT64_MAX);
  EXPECT_EQ(ParseJson("18446744073709551616")->AsUint64(), std::nullopt);
  EXPECT_EQ(ParseJson("-1")->AsUint64(), std::nullopt);
  EXPECT_EQ(ParseJson("-0")->AsInt64(), 0);
  EXPECT_EQ(ParseJson("1e400")->AsDouble(), std::nullopt);
  EXPECT_EQ(ParseJson("\"1\"")->AsInt64(), std::nullopt);
}

TEST(JsonTest, StrictGrammar) {
  ExpectRejected("", "unexpected end of input");
  ExpectRejected("   ", "unexpected end of input");
  ExpectRejected("[1,]", "unexpected character");
  ExpectRejected("{\"a\":1,}", "expected object key");
  ExpectRejected("{'a':1}", "expected object key");
  ExpectRejected("{\"a\" 1}", "expected ':'");
  ExpectRejected("[1 2]", "expected ',' or ']'");
  ExpectRejected("{\"a\":1 \"b\":2}", "expected ',' or '}'");
  ExpectRejected("01", "leading zero");
  ExpectRejected("-", "bad number");
  ExpectRejected("+1", "unexpected character");
  ExpectRejected("1.", "bad fraction");
  ExpectRejected(".5", "unexpected character");
  ExpectRejected("1e", "bad exponent");
  ExpectRejected("NaN", "unexpected character");
  ExpectRejected("Infinity", "unexpected character");
  ExpectRejected("tru", "invalid literal");
  ExpectRejected("nul", "invalid literal");
  ExpectRejected("[1] // c", "trailing characters");
  ExpectRejected("{} {}", "trailing characters");
  ExpectRejected("[", "unexpected end of input");
  ExpectRejected("{\"a\":1", "unterminated object");
  ExpectRejected("[1", "unterminated array");
}

TEST(JsonTest, StrictStrings) {
  ExpectRejected("\"abc", "unterminated string");
  ExpectRejected("\"a\nb\"", "control character in string");
  ExpectRejected(std::string_view("\"a\0b\"", 5), "control character in string");
  ExpectRejected("\"\\x41\"", "bad escape");
  ExpectRejected("\"\\u12zz\"", "bad \\u escape");
  ExpectRejected("\"\\u12", "truncated \\u escape");
  ExpectRejected("\"\\ud800\"", "lone surrogate escape");
  ExpectRejected("\"\\udc00\"", "lone surrogate escape");
  ExpectRejected("\"\\ud800\\u0041\"", "lone surrogate escape");
  ExpectRejected("\"\xff\"", "invalid UTF-8");
  ExpectRejected("\"\xc0\xaf\"", "invalid UTF-8");          // overlong '/'
  ExpectRejected("\"\xe0\x80\xaf\"", "invalid UTF-8");      // overlong '/'
  ExpectRejected("\"\xed\xa0\x80\"", "invalid UTF-8");      // encoded surrogate
  ExpectRejected("\"\xf4\x90\x80\x80\"", "invalid UTF-8");  // past U+10FFFF
  ExpectRejected("\"\xe4\xb8\"", "invalid UTF-8");          // truncated sequence
  EXPECT_EQ(ParseJson("\"\\ud83d\\ude00\"")->text, "\xf0\x9f\x98\x80");
  EXPECT_EQ(ParseJson("\"\\u0000\"")->text, std::string(1, '\0'));
}

TEST(JsonTest, DuplicateKeysRejected) {
  ExpectRejected(R"({"a":1,"b":2,"a":3})", "duplicate object key");
  // Same key in different objects is fine.
  EXPECT_TRUE(ParseJson(R"({"a":{"a":1},"b":{"a":2}})").ok());
}

TEST(JsonTest, DepthCap) {
  JsonLimits limits;
  limits.max_depth = 3;
  EXPECT_TRUE(ParseJson("[[[1]]]", limits).ok());
  ExpectRejected("[[[[1]]]]", "nesting too deep", limits);
  ExpectRejected(std::string(1 << 20, '['), "nesting too deep");
  ExpectRejected(std::string(1 << 20, '{'), "expected object key");
  std::string objects;
  for (int i = 0; i < 1000; ++i) objects += "{\"a\":";
  ExpectRejected(objects, "nesting too deep");
}

TEST(JsonTest, ValueCap) {
  JsonLimits limits;
  limits.max_values = 4;
  EXPECT_TRUE(ParseJson("[1,2,3]", limits).ok());
  ExpectRejected("[1,2,3,4]", "too many values", limits);
}

TEST(JsonTest, SizeCap) {
  JsonLimits limits;
  limits.max_bytes = 8;
  EXPECT_TRUE(ParseJson("[1,2,3]", limits).ok());
  ExpectRejected("[1,2,3,4,5]", "document too large", limits);
}

TEST(JsonTest, Utf8Validation) {
  EXPECT_TRUE(IsValidUtf8(""));
  EXPECT_TRUE(IsValidUtf8("plain"));
  EXPECT_TRUE(IsValidUtf8("caf\xc3\xa9 \xe4\xb8\xad \xf0\x9f\x98\x80 \xf4\x8f\xbf\xbf"));
  EXPECT_FALSE(IsValidUtf8("\x80"));
  EXPECT_FALSE(IsValidUtf8("\xc3"));
  EXPECT_FALSE(IsValidUtf8("\xc1\xbf"));
  EXPECT_FALSE(IsValidUtf8("\xed\xbf\xbf"));
  EXPECT_FALSE(IsValidUtf8("\xf5\x80\x80\x80"));
}

TEST(JsonTest, QuoteEscapes) {
  EXPECT_EQ(JsonQuote("a\"b\\c\n\x01"), "\"a\\\"b\\\\c\\n\\u0001\"");
  EXPECT_EQ(JsonQuote("caf\xc3\xa9"), "\"caf\xc3\xa9\"");
}

}  // namespace
}  // namespace weightgate::checkpoint
