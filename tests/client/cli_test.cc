// The built `weightgate` and `weightgate-normalize` binaries: every flag a
// command's --help offers is one its parser takes (`weightgate fetch --help`
// once offered --tensor NAME and the parser rejected it). No server needed:
// each run also passes too many positional arguments, which the parser
// reports only after every flag was accepted.
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "gtest/gtest.h"
#include "tests/fixtures/fixture_dir.h"

namespace weightgate::cli {
namespace {

std::string BinDir() { return testing::BinaryDir() + "/bin"; }

struct RunResult {
  int code = -1;
  std::string out;  // stdout and stderr
};

RunResult RunCommand(const std::string& command) {
  RunResult r;
  r.code = testing::RunCommand(command, &r.out);
  return r;
}

struct HelpFlag {
  std::vector<std::string> spellings;  // "-o", "--output"
  std::string value;                   // "" for a switch
};

// The flag lines of a --help text ("  -o, --output OUT    file to write").
std::vector<HelpFlag> FlagsInHelp(const std::string& help) {
  std::vector<HelpFlag> flags;
  bool in_flags = false;  // after a "flags:" or "policy flags:" title
  for (absl::string_view line : absl::StrSplit(help, '\n')) {
    if (!line.empty() && line[0] != ' ') in_flags = absl::EndsWith(line, "flags:");
    if (!in_flags || line.size() < 3 || line.substr(0, 3) != "  -") continue;
    absl::string_view column = absl::StripAsciiWhitespace(line.substr(0, 30));
    HelpFlag flag;
    for (absl::string_view word : absl::StrSplit(column, ' ', absl::SkipEmpty())) {
      if (word[0] == '-') {
        flag.spellings.push_back(std::string(absl::StripSuffix(word, ",")));
      } else {
        // A value: the first of its choices, or any word.
        std::string value(word.substr(0, word.find('|')));
        flag.value = value == "REGEX=REPLACEMENT" ? "a=b" : value;
      }
    }
    flags.push_back(flag);
  }
  return flags;
}

void ExpectHelpMatchesParser(const std::string& program, const std::string& command) {
  const std::string bin = BinDir() + "/" + program + " " + command;
  RunResult help = RunCommand(bin + " --help");
  ASSERT_EQ(help.code, 0) << help.out;
  std::vector<HelpFlag> flags = FlagsInHelp(help.out);
  ASSERT_FALSE(flags.empty()) << help.out;
  // Every spelling of every flag in one run: an unknown one stops the parser
  // before it gets to count the positional arguments.
  std::string args;
  for (const HelpFlag& flag : flags) {
    for (const std::string& spelling : flag.spellings) {
      args += " " + spelling;
      if (!flag.value.empty()) args += " '" + flag.value + "'";
    }
  }
  RunResult r = RunCommand(bin + args + " w1 w2 w3 w4 w5");
  EXPECT_EQ(r.code, 2) << command << args << ": " << r.out;
  EXPECT_EQ(r.out.find("unknown flag"), std::string::npos) << command << args << ": " << r.out;
  EXPECT_NE(r.out.find("expected"), std::string::npos) << command << args << ": " << r.out;
}

TEST(CliTest, FetchOffersAndTakesTensor) {
  RunResult help = RunCommand(BinDir() + "/weightgate fetch --help");
  ASSERT_EQ(help.code, 0);
  EXPECT_NE(help.out.find("--tensor NAME"), std::string::npos) << help.out;
  RunResult r = RunCommand(BinDir() + "/weightgate fetch m --tensor fc.weight --tensor=fc.bias");
  EXPECT_EQ(r.code, 2);
  EXPECT_EQ(r.out, "weightgate: fetch: -o OUT is required\n");
}

TEST(CliTest, EveryHelpFlagIsParsed) {
  for (const char* command :
       {"register", "validate", "upload", "ls", "show", "alias", "delete", "fetch", "watch"}) {
    SCOPED_TRACE(command);
    RunResult help = RunCommand(BinDir() + "/weightgate " + command + " --help");
    ASSERT_EQ(help.code, 0) << help.out;
    EXPECT_EQ(help.out.rfind(std::string("usage: weightgate ") + command, 0), 0u) << help.out;
    if (help.out.find("\n  -") == std::string::npos) continue;  // no flags
    ExpectHelpMatchesParser("weightgate", command);
  }
}

TEST(CliTest, NormalizeHelpFlagsAreParsed) { ExpectHelpMatchesParser("weightgate-normalize", ""); }

TEST(CliTest, UsageErrorsAreOneLine) {
  RunResult r = RunCommand(BinDir() + "/weightgate fetch m -o out --format zip");
  EXPECT_EQ(r.code, 2);
  EXPECT_EQ(r.out, "weightgate: fetch: --format: 'zip' is not one of safetensors, pt\n");
  r = RunCommand(BinDir() + "/weightgate validate m");
  EXPECT_EQ(r.code, 2);
  EXPECT_EQ(r.out, "weightgate: validate: expected MODEL FILE\n");
  r = RunCommand(BinDir() + "/weightgate upload m f --dtype sometimes");
  EXPECT_EQ(r.out, "weightgate: upload: --dtype: 'sometimes' is not one of cast, keep, reject\n");
}

}  // namespace
}  // namespace weightgate::cli
