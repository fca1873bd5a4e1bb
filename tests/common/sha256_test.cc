#include "common/sha256.h"

#include <string>

#include "gtest/gtest.h"

namespace weightgate::common {
namespace {

TEST(Sha256Test, KnownVectorsOneShotAndIncremental) {
  const std::string abc = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
  EXPECT_EQ(Sha256Hex("abc"), abc);
  Sha256 sha;
  sha.Update("a");
  sha.Update("bc");
  EXPECT_EQ(sha.HexDigest(), abc);
  EXPECT_EQ(Sha256Hex(""), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
}

TEST(Sha256Test, BlobNamesAreLowerCaseHex) {
  EXPECT_TRUE(IsSha256Hex(Sha256Hex("x")));
  EXPECT_FALSE(IsSha256Hex(""));
  EXPECT_FALSE(IsSha256Hex(std::string(63, 'a')));
  EXPECT_FALSE(IsSha256Hex(std::string(64, 'A')));
  EXPECT_FALSE(IsSha256Hex(std::string(63, 'a') + "g"));
  EXPECT_FALSE(IsSha256Hex(std::string(63, 'a') + "/"));
}

TEST(Sha256Test, MissingFileIsNotFound) {
  EXPECT_TRUE(absl::IsNotFound(Sha256File("/nonexistent/file").status()));
}

}  // namespace
}  // namespace weightgate::common
