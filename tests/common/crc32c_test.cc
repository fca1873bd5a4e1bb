#include "common/crc32c.h"

#include <cstdint>
#include <random>
#include <string>

#include "gtest/gtest.h"

namespace weightgate::common {
namespace {

TEST(Crc32cTest, KnownVectors) {
  EXPECT_EQ(Crc32c(""), 0u);
  EXPECT_EQ(Crc32c("123456789"), 0xE3069283u);
  std::string zeros(32, '\0');
  EXPECT_EQ(Crc32c(zeros), 0x8A9136AAu);
  // Incremental equals one-shot.
  EXPECT_EQ(Crc32c("6789", Crc32c("12345")), Crc32c("123456789"));
}

// Bit at a time, straight from the definition.
uint32_t Reference(std::string_view data) {
  uint32_t crc = 0xFFFFFFFFu;
  for (unsigned char byte : data) {
    crc ^= byte;
    for (int k = 0; k < 8; ++k) crc = (crc & 1) ? (crc >> 1) ^ 0x82F63B78u : crc >> 1;
  }
  return ~crc;
}

// The three-stream paths (blocks of 3 x 8192 and 3 x 256 bytes) and the
// tails, at every alignment of the start.
TEST(Crc32cTest, MatchesTheDefinitionAtEveryLengthClass) {
  std::mt19937 rng(7);
  std::string data(3 * 8192 * 3 + 3 * 256 * 2 + 37, '\0');
  for (char& c : data) c = static_cast<char>(rng());
  for (size_t length :
       {size_t{0}, size_t{7}, size_t{8}, size_t{255}, size_t{3 * 256}, size_t{3 * 256 + 13},
        size_t{3 * 8192 - 1}, size_t{3 * 8192}, size_t{3 * 8192 + 3 * 256 + 9}, data.size() - 8}) {
    for (size_t start = 0; start < 8; ++start) {
      std::string_view piece(data.data() + start, length);
      EXPECT_EQ(Crc32c(piece), Reference(piece)) << "length " << length << " start " << start;
    }
  }
  // Split anywhere, continued equals one-shot.
  std::string_view all(data);
  for (size_t cut : {size_t{1}, size_t{8191}, size_t{3 * 8192 + 5}}) {
    EXPECT_EQ(Crc32c(all.substr(cut), Crc32c(all.substr(0, cut))), Reference(all));
  }
}

}  // namespace
}  // namespace weightgate::common
