// client/common/flag_table: one table per command serves parsing, validation
// and --help.
#include "client/common/flag_table.h"

#include <string>
#include <vector>

#include "absl/strings/str_split.h"
#include "gtest/gtest.h"

namespace weightgate::client {
namespace {

// clang-format off
const CommandSpec kSpec = {
    .program = "weightgate fetch", .synopsis = "REF",
    .description = "Fetches REF.\nSecond line.",
    .flags = {
        {.name = "--output", .value_name = "OUT", .help = "file to write", .alias = "-o",
         .required = true},
        {.name = "--format", .value_name = "safetensors|pt", .help = "output format",
         .choices = "safetensors|pt"},
        {.name = "--tensor", .value_name = "NAME", .help = "only this tensor",
         .repeatable = true},
        {.name = "--quiet", .value_name = "", .help = "say less"},
    },
    .min_args = 1, .max_args = 1, .args_error = "expected REF"};
const FlagGroup kGroup = {"extra flags", {{.name = "--level", .value_name = "N", .help = "how much"}}};
// clang-format on

absl::StatusOr<ParsedArgs> Parse(const std::vector<std::string>& args,
                                 const CommandSpec& spec = kSpec) {
  return ParseArgs(spec, args);
}

std::string Error(const std::vector<std::string>& args) {
  absl::StatusOr<ParsedArgs> p = Parse(args);
  return p.ok() ? "ok" : std::string(p.status().message());
}

TEST(FlagTableTest, ValueForms) {
  absl::StatusOr<ParsedArgs> p =
      Parse({"m@prod", "-o", "a", "--format=pt", "--tensor", "x", "--tensor=y", "--quiet"});
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ(p->positional, std::vector<std::string>{"m@prod"});
  EXPECT_EQ(p->Get("--output"), "a");  // the alias is stored under the name
  EXPECT_EQ(p->Get("--format"), "pt");
  EXPECT_EQ(p->All("--tensor"), (std::vector<std::string>{"x", "y"}));
  EXPECT_TRUE(p->Has("--quiet"));
  EXPECT_FALSE(p->help);
}

TEST(FlagTableTest, LastValueWins) {
  absl::StatusOr<ParsedArgs> p = Parse({"r", "--output", "a", "-o=b"});
  ASSERT_TRUE(p.ok());
  EXPECT_EQ(p->Get("--output"), "b");
  EXPECT_EQ(p->Get("--format", "safetensors"), "safetensors");
}

TEST(FlagTableTest, DoubleDashEndsFlags) {
  absl::StatusOr<ParsedArgs> p = Parse({"-o", "a", "--", "--help"});
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_FALSE(p->help);
  EXPECT_EQ(p->positional, std::vector<std::string>{"--help"});
}

TEST(FlagTableTest, HelpAnywhereSkipsValidation) {
  absl::StatusOr<ParsedArgs> p = Parse({"--bogus", "-h"});
  ASSERT_TRUE(p.ok());
  EXPECT_TRUE(p->help);
  EXPECT_TRUE(Parse({"--help"})->help);
}

TEST(FlagTableTest, OneLineErrors) {
  EXPECT_EQ(Error({"r", "-o", "a", "--bogus"}), "unknown flag '--bogus'");
  EXPECT_EQ(Error({"r", "-o"}), "-o needs a value");
  EXPECT_EQ(Error({"r", "-o", "a", "--quiet=yes"}), "--quiet takes no value");
  EXPECT_EQ(Error({"r", "-o", "a", "--format", "zip"}),
            "--format: 'zip' is not one of safetensors, pt");
  EXPECT_EQ(Error({"-o", "a"}), "expected REF");
  EXPECT_EQ(Error({"r", "s", "-o", "a"}), "expected REF");
  EXPECT_EQ(Error({"r"}), "-o OUT is required");
  EXPECT_EQ(Error({"r", "-o", "a", "--level", "3"}), "unknown flag '--level'");
}

TEST(FlagTableTest, GroupsAreAccepted) {
  CommandSpec spec = kSpec;
  spec.groups = {&kGroup};
  absl::StatusOr<ParsedArgs> p = Parse({"r", "-o", "a", "--level", "3"}, spec);
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ(p->Get("--level"), "3");
  std::string help = HelpText(spec);
  EXPECT_NE(help.find("[extra flags]"), std::string::npos) << help;
  EXPECT_NE(help.find("extra flags:\n  --level N"), std::string::npos) << help;
}

// The bug a table rules out: help offering a flag the parser rejects.
TEST(FlagTableTest, HelpOffersExactlyTheFlagsParsed) {
  const std::string help = HelpText(kSpec);
  EXPECT_EQ(help.rfind("usage: weightgate fetch REF -o OUT [--format safetensors|pt] "
                       "[--tensor NAME]... [--quiet]\n  Fetches REF.\n  Second line.\nflags:\n",
                       0),
            0u)
      << help;
  for (const Flag& flag : kSpec.flags) {
    EXPECT_NE(help.find(std::string(flag.name)), std::string::npos) << flag.name;
    std::vector<std::string> args = {"r", "-o", "a", std::string(flag.name)};
    if (flag.takes_value()) args.push_back(flag.choices.empty() ? "v" : "pt");
    EXPECT_EQ(Error(args), "ok") << flag.name;
  }
}

TEST(FlagTableTest, LongHelpWraps) {
  static const std::string kLongHelp = std::string(60, 'a') + " " + std::string(30, 'b');
  CommandSpec spec = kSpec;
  spec.flags.push_back({.name = "--long", .value_name = "", .help = kLongHelp});
  for (absl::string_view line : absl::StrSplit(HelpText(spec), '\n')) {
    EXPECT_LE(line.size(), 100u) << line;
  }
}

}  // namespace
}  // namespace weightgate::client
