// client/normalize: weightgate-normalize's exit codes and output, run as a
// process on the statedict fixtures.
#include <string>

#include "gtest/gtest.h"
#include "tests/statedict/statedict_fixtures.h"

namespace weightgate::testing {
namespace {

TEST(NormalizeMainTest, CommandLineExitCodes) {
  const std::string fixtures = StatedictFixtureDir();
  ASSERT_FALSE(fixtures.empty());
  const std::string scratch = ScratchDir();
  auto Fx = [&](const std::string& name) { return fixtures + "/" + name; };
  const std::string bin = weightgate::testing::BinaryDir() + "/bin/weightgate-normalize";
  std::string out;
  EXPECT_EQ(RunCommand(bin + " '" + Fx("dataparallel.pt") + "' --spec '" + Fx("reference.pt") +
                           "' -o '" + scratch + "/cli.safetensors'",
                       &out),
            0)
      << out;
  EXPECT_NE(out.find("NORMALIZED"), std::string::npos) << out;
  EXPECT_NE(out.find("stripped 'module.' from 9 keys"), std::string::npos) << out;
  EXPECT_EQ(
      RunCommand(bin + " '" + Fx("nan.pt") + "' --spec '" + Fx("reference.pt") + "' --json", &out),
      1)
      << out;
  EXPECT_NE(out.find("\"verdict\": \"INVALID\""), std::string::npos) << out;
  EXPECT_NE(out.find("\"non_finite\""), std::string::npos) << out;
  EXPECT_EQ(RunCommand(bin + " '" + Fx("nan.pt") + "' --spec '" + Fx("reference.pt") +
                           "' --non_finite allow",
                       &out),
            0)
      << out;
  EXPECT_EQ(RunCommand(bin + " '" + Fx("clean.pt") + "'", &out), 2) << out;
  EXPECT_EQ(RunCommand(bin + " '" + Fx("clean.pt") + "' --spec '" + Fx("reference.pt") +
                           "' --dtype sometimes",
                       &out),
            2)
      << out;
  EXPECT_NE(out.find("--dtype: 'sometimes' is not one of cast, keep, reject"), std::string::npos)
      << out;
  if (!::testing::Test::HasFailure()) RunCommand("rm -rf '" + scratch + "'", &out);
}

}  // namespace
}  // namespace weightgate::testing
