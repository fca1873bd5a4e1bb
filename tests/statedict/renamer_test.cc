// Rename rules: RE2 syntax with $1-style replacements, every match replaced,
// caps on rules, patterns and what a key may become, and linear time on
// hostile keys (a 100 KB key once overflowed the recursion of libstdc++'s regex engine).
#include "server/statedict/renamer.h"

#include <ctime>
#include <string>
#include <utility>
#include <vector>

#include "gtest/gtest.h"

namespace weightgate::statedict {
namespace {

namespace v1 = weightgate::v1;

v1::NormalizationPolicy Rules(std::vector<std::pair<std::string, std::string>> rules) {
  v1::NormalizationPolicy policy;
  for (auto& [pattern, replacement] : rules) {
    v1::RenameRule* r = policy.add_rename_rules();
    r->set_pattern(pattern);
    r->set_replacement(replacement);
  }
  return policy;
}

std::string Apply(std::vector<std::pair<std::string, std::string>> rules, const std::string& key) {
  absl::StatusOr<std::string> out = ApplyRenameRules(Rules(std::move(rules)), key);
  EXPECT_TRUE(out.ok()) << out.status();
  return out.ok() ? *out : "<error>";
}

TEST(RenamerTest, DollarGroupsWholeMatchAndLiteralDollar) {
  EXPECT_EQ(Apply({{"^layers\\.(\\d+)\\.attn\\.", "blocks.$1.attention."}}, "layers.11.attn.q"),
            "blocks.11.attention.q");
  EXPECT_EQ(Apply({{"(\\w+)\\.(\\w+)$", "$2.$1"}}, "a.b"), "b.a");
  EXPECT_EQ(Apply({{"fc", "[$&]"}}, "fc.weight"), "[fc].weight");
  EXPECT_EQ(Apply({{"fc", "$$"}}, "fc.weight"), "$.weight");
  EXPECT_EQ(Apply({{"(fc)", "\\1x"}}, "fc.weight"), "fcx.weight");
}

TEST(RenamerTest, EveryMatchIsReplacedInOrder) {
  EXPECT_EQ(Apply({{"gamma", "weight"}}, "ln.gamma.gamma"), "ln.weight.weight");
  EXPECT_EQ(Apply({{"^classifier\\.", "head."}, {"^head\\.", "fc."}}, "classifier.bias"),
            "fc.bias");
  // ^ anchors at the start of the key only, not where the last match ended.
  EXPECT_EQ(Apply({{"^a", "b"}}, "aaa"), "baa");
  // Empty matches: one per position, none right after a match.
  EXPECT_EQ(Apply({{"x*", "-"}}, "abc"), "-a-b-c-");
  EXPECT_EQ(Apply({{"b*", "-"}}, "abc"), "-a-c-");
}

TEST(RenamerTest, HundredKilobyteKeyIsLinear) {
  std::string key(100 * 1024, 'a');
  for (size_t i = 100; i < key.size(); i += 100) key[i] = '.';
  key += ".gamma";
  const std::clock_t start = std::clock();  // CPU time: the machine may be busy
  std::string out = Apply({{"(.*)\\.gamma$", "$1.weight"}}, key);
  // Also patterns that make backtracking engines explode.
  std::string nested = Apply({{"(a+)+$", "x"}, {"(a|aa)*b", "y"}}, std::string(50000, 'a') + "!");
  const double seconds = static_cast<double>(std::clock() - start) / CLOCKS_PER_SEC;
  EXPECT_EQ(out, key.substr(0, key.size() - 6) + ".weight");
  EXPECT_EQ(nested, std::string(50000, 'a') + "!");
  EXPECT_LT(seconds, 2.0);
}

TEST(RenamerTest, InvalidRulesAreClearErrors) {
  struct Bad {
    std::string pattern, replacement, message;
  };
  const std::vector<Bad> bad = {
      {"(unclosed", "x", "invalid RE2 regular expression"},
      {"(?<=a)b", "x", "invalid RE2 regular expression"},  // lookbehind: not RE2
      {"(a)\\1", "x", "invalid RE2 regular expression"},   // backreference: not RE2
      {"(a)", "$2", "replacement '$2'"},                   // no such group
      {"a", "\\q", "replacement '\\q'"},
      {"", "x", "empty pattern"},
      {std::string(kMaxRenamePatternBytes + 1, 'a'), "x", "kMaxRenamePatternBytes"},
      {"a", std::string(kMaxRenameReplacementBytes + 1, 'b'), "kMaxRenameReplacementBytes"},
      {"a{1000}{1000}", "x", "invalid RE2 regular expression"},
      {"((((((((((a{100}){10}){10}){10}){10})))))){2}", "x", "invalid RE2 regular expression"},
  };
  for (const Bad& b : bad) {
    SCOPED_TRACE(b.pattern.substr(0, 40));
    absl::Status s = ValidateRenameRules(Rules({{"ok", "fine"}, {b.pattern, b.replacement}}));
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
    EXPECT_NE(s.message().find("rename rule 2 "), std::string::npos) << s;
    EXPECT_NE(s.message().find(b.message), std::string::npos) << s;
  }
  v1::NormalizationPolicy many;
  for (size_t i = 0; i <= kMaxRenameRules; ++i) {
    v1::RenameRule* r = many.add_rename_rules();
    r->set_pattern("a");
    r->set_replacement("b");
  }
  absl::Status s = ValidateRenameRules(many);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("kMaxRenameRules"), std::string::npos) << s;
  many.mutable_rename_rules()->RemoveLast();
  EXPECT_TRUE(ValidateRenameRules(many).ok());
}

TEST(RenamerTest, KeyGrowthAndMatchCountAreCapped) {
  // Every character of a 10 KB key becomes 1 KB: stopped at the growth cap.
  absl::StatusOr<std::string> grown =
      ApplyRenameRules(Rules({{".", std::string(1000, 'x')}}), std::string(10000, 'a'));
  EXPECT_EQ(grown.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(grown.status().message().find("kMaxRenameGrowthBytes"), std::string::npos);
  absl::StatusOr<std::string> many =
      ApplyRenameRules(Rules({{"a", ""}}), std::string(kMaxRenameMatchesPerKey + 1, 'a'));
  EXPECT_EQ(many.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(many.status().message().find("kMaxRenameMatchesPerKey"), std::string::npos);
  EXPECT_EQ(Apply({{"a", ""}}, std::string(kMaxRenameMatchesPerKey, 'a') + ".w"), ".w");
}

TEST(RenamerTest, RenamerReportsCapsThroughStatus) {
  absl::flat_hash_map<std::string, int> spec = {{"bn.weight", 0}};
  v1::NormalizationPolicy policy = Rules({{".", std::string(1000, 'x')}});
  policy.set_legacy_gamma_beta(true);
  absl::StatusOr<Renamer> renamer = Renamer::Create(policy, &spec);
  ASSERT_TRUE(renamer.ok());
  EXPECT_TRUE(renamer->status().ok());
  EXPECT_EQ(renamer->Rename(std::string(5000, 'a')).name, std::string(5000, 'a'));
  EXPECT_EQ(renamer->status().code(), absl::StatusCode::kResourceExhausted);
}

TEST(RenamerTest, LegacyGammaBetaOnlyWhereTheSpecWantsIt) {
  absl::flat_hash_map<std::string, int> spec = {{"bn.weight", 0}, {"ln.gamma", 1}};
  v1::NormalizationPolicy policy;
  policy.set_legacy_gamma_beta(true);
  absl::StatusOr<Renamer> renamer = Renamer::Create(policy, &spec);
  ASSERT_TRUE(renamer.ok());
  EXPECT_EQ(renamer->Rename("bn.gamma").name, "bn.weight");
  EXPECT_TRUE(renamer->Rename("bn.gamma").renamed_gamma_beta);
  EXPECT_EQ(renamer->Rename("ln.gamma").name, "ln.gamma");
  EXPECT_EQ(renamer->Rename("x.beta").name, "x.beta");
}

}  // namespace
}  // namespace weightgate::statedict
