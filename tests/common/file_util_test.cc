#include "common/file_util.h"

#include <unistd.h>

#include <cstdio>
#include <string>

#include "absl/status/status.h"
#include "gtest/gtest.h"

namespace weightgate::common {
namespace {

TEST(FileUtilTest, ReadFileAndItsLimits) {
  char path[] = "/tmp/wg-file-util-XXXXXX";
  int fd = ::mkstemp(path);
  ASSERT_GE(fd, 0);
  const std::string bytes = std::string("a\0b", 3) + std::string(100000, 'x');
  ASSERT_EQ(::write(fd, bytes.data(), bytes.size()), static_cast<ssize_t>(bytes.size()));
  ::close(fd);
  absl::StatusOr<std::string> all = ReadFile(path);
  ASSERT_TRUE(all.ok()) << all.status();
  EXPECT_EQ(*all, bytes);
  EXPECT_TRUE(ReadFile(path, bytes.size()).ok());
  EXPECT_TRUE(absl::IsOutOfRange(ReadFile(path, bytes.size() - 1).status()));
  EXPECT_EQ(RegularFileSize(path), static_cast<int64_t>(bytes.size()));
  std::remove(path);
  EXPECT_TRUE(absl::IsNotFound(ReadFile(path).status()));
  EXPECT_EQ(RegularFileSize(path), -1);
  EXPECT_EQ(RegularFileSize("/tmp"), -1);  // not a regular file
}

TEST(FileUtilTest, DevZeroStopsAtTheCap) {
  EXPECT_TRUE(absl::IsOutOfRange(ReadFile("/dev/zero", 1 << 16).status()));
}

}  // namespace
}  // namespace weightgate::common
