// client/cli/inspect_command: `weightgate inspect` exit codes and one-line
// errors, run in-process on the checkpoint fixtures.
#include "client/cli/inspect_command.h"

#include <algorithm>
#include <sstream>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "server/checkpoint/json.h"
#include "tests/checkpoint/checkpoint_test_util.h"

namespace weightgate::cli {
namespace {

using checkpoint::ParseJson;
using checkpoint::testing::FixtureDir;

struct CommandRun {
  int code;
  std::string out, err;
};

CommandRun Command(std::vector<std::string> args, bool json = false) {
  std::ostringstream out, err;
  int code = RunInspectCommand(args, json, out, err);
  return {code, out.str(), err.str()};
}

TEST(InspectCommand, ReadableAndSafeExitsZero) {
  std::string file = FixtureDir() + "/plain.pt";
  CommandRun r = Command({file});
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("torch_zip"), std::string::npos);
  EXPECT_TRUE(r.err.empty());
  CommandRun j = Command({"--json", file});
  EXPECT_EQ(j.code, 0);
  EXPECT_TRUE(ParseJson(j.out).ok()) << j.out;
  CommandRun g = Command({file}, /*json=*/true);
  EXPECT_EQ(g.out, j.out);
}

TEST(InspectCommand, UnsafeExitsOneWithReasonOnOneLine) {
  std::string file = FixtureDir() + "/hostile/zip_reduce.pt";
  CommandRun r = Command({file});
  EXPECT_EQ(r.code, 1);
  EXPECT_EQ(r.err.rfind("weightgate: inspect: " + file + ": unsafe", 0), 0u) << r.err;
  EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1);
  EXPECT_NE(r.out.find("UNSAFE"), std::string::npos);
}

TEST(InspectCommand, UnreadableExitsOne) {
  CommandRun missing = Command({FixtureDir() + "/no-such-file.pt"});
  EXPECT_EQ(missing.code, 1);
  EXPECT_EQ(missing.err.rfind("weightgate: inspect: " + FixtureDir() + "/no-such-file.pt: ", 0),
            0u);
  CommandRun junk = Command({FixtureDir() + "/plain.tensors.tsv"});
  EXPECT_EQ(junk.code, 1);
  EXPECT_NE(junk.err.find("not a checkpoint"), std::string::npos) << junk.err;
  EXPECT_EQ(std::count(junk.err.begin(), junk.err.end(), '\n'), 1);
}

TEST(InspectCommand, UsageErrorsExitTwo) {
  EXPECT_EQ(Command({}).code, 2);
  EXPECT_EQ(Command({"a", "b"}).code, 2);
  EXPECT_EQ(Command({"--bogus", "a"}).code, 2);
  CommandRun help = Command({"--help"});
  EXPECT_EQ(help.code, 0);
  EXPECT_NE(help.out.find("usage: weightgate inspect"), std::string::npos);
}

}  // namespace
}  // namespace weightgate::cli
