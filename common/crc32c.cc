#include "common/crc32c.h"

#include <array>
#include <cstring>

namespace weightgate::common {
namespace {

constexpr uint32_t kPoly = 0x82F63B78u;  // reflected Castagnoli

std::array<uint32_t, 256> MakeTable() {
  std::array<uint32_t, 256> table{};
  for (uint32_t i = 0; i < 256; ++i) {
    uint32_t c = i;
    for (int k = 0; k < 8; ++k) c = (c & 1) ? (c >> 1) ^ kPoly : c >> 1;
    table[i] = c;
  }
  return table;
}

uint32_t Software(const unsigned char* p, size_t n, uint32_t crc) {
  static const std::array<uint32_t, 256> kTable = MakeTable();
  for (size_t i = 0; i < n; ++i) crc = kTable[(crc ^ p[i]) & 0xFF] ^ (crc >> 8);
  return crc;
}

// Appending `len` zero bytes to a message maps its (raw, uninverted) CRC
// through a linear operator over GF(2). Four 256-entry tables apply that
// operator a byte of the CRC at a time; they let three independent CRC
// streams over consecutive blocks be joined into one (the technique of
// Intel's iSCSI CRC paper and M. Adler's crc32c.c).
struct ShiftTables {
  uint32_t t[4][256];
};

uint32_t Gf2Times(const uint32_t* mat, uint32_t vec) {
  uint32_t sum = 0;
  for (; vec != 0; vec >>= 1, ++mat) {
    if (vec & 1) sum ^= *mat;
  }
  return sum;
}

void Gf2Square(uint32_t* square, const uint32_t* mat) {
  for (int n = 0; n < 32; ++n) square[n] = Gf2Times(mat, mat[n]);
}

// The operator for `len` zero bytes, `len` a power of two.
ShiftTables MakeShift(size_t len) {
  uint32_t odd[32], even[32];
  odd[0] = kPoly;  // one zero bit
  for (int n = 1; n < 32; ++n) odd[n] = 1u << (n - 1);
  Gf2Square(even, odd);  // two zero bits
  Gf2Square(odd, even);  // four zero bits
  const uint32_t* op = odd;
  // Each squaring doubles: the first gives one zero byte.
  for (size_t bytes = 1;; bytes <<= 1) {
    if (op == odd) {
      Gf2Square(even, odd);
      op = even;
    } else {
      Gf2Square(odd, even);
      op = odd;
    }
    if (bytes >= len) break;
  }
  ShiftTables tables;
  for (uint32_t n = 0; n < 256; ++n) {
    for (int k = 0; k < 4; ++k) tables.t[k][n] = Gf2Times(op, n << (8 * k));
  }
  return tables;
}

uint32_t Shift(const ShiftTables& z, uint32_t crc) {
  return z.t[0][crc & 0xFF] ^ z.t[1][(crc >> 8) & 0xFF] ^ z.t[2][(crc >> 16) & 0xFF] ^
         z.t[3][crc >> 24];
}

#if defined(__x86_64__)
// The crc32 instruction has a latency of three cycles and a throughput of
// one: three streams over three consecutive blocks keep it busy, and the
// shift tables join their CRCs.
constexpr size_t kLong = 8192;
constexpr size_t kShort = 256;

__attribute__((target("sse4.2"))) uint64_t Blocks3(const unsigned char*& p, size_t& n, uint64_t c,
                                                   size_t block, const ShiftTables& shift) {
  while (n >= 3 * block) {
    uint64_t c1 = 0, c2 = 0;
    const unsigned char* end = p + block;
    do {
      uint64_t v0, v1, v2;
      std::memcpy(&v0, p, 8);
      std::memcpy(&v1, p + block, 8);
      std::memcpy(&v2, p + 2 * block, 8);
      c = __builtin_ia32_crc32di(c, v0);
      c1 = __builtin_ia32_crc32di(c1, v1);
      c2 = __builtin_ia32_crc32di(c2, v2);
      p += 8;
    } while (p < end);
    c = Shift(shift, static_cast<uint32_t>(c)) ^ c1;
    c = Shift(shift, static_cast<uint32_t>(c)) ^ c2;
    p += 2 * block;
    n -= 3 * block;
  }
  return c;
}

__attribute__((target("sse4.2"))) uint32_t Hardware(const unsigned char* p, size_t n,
                                                    uint32_t crc) {
  static const ShiftTables kLongShift = MakeShift(kLong);
  static const ShiftTables kShortShift = MakeShift(kShort);
  uint64_t c = crc;
  c = Blocks3(p, n, c, kLong, kLongShift);
  c = Blocks3(p, n, c, kShort, kShortShift);
  while (n >= 8) {
    uint64_t v;
    std::memcpy(&v, p, 8);
    c = __builtin_ia32_crc32di(c, v);
    p += 8;
    n -= 8;
  }
  uint32_t c32 = static_cast<uint32_t>(c);
  while (n-- > 0) c32 = __builtin_ia32_crc32qi(c32, *p++);
  return c32;
}
#endif

}  // namespace

uint32_t Crc32c(std::string_view data, uint32_t crc) {
  const auto* p = reinterpret_cast<const unsigned char*>(data.data());
  uint32_t c = ~crc;
#if defined(__x86_64__)
  static const bool kHasSse42 = __builtin_cpu_supports("sse4.2");
  c = kHasSse42 ? Hardware(p, data.size(), c) : Software(p, data.size(), c);
#else
  c = Software(p, data.size(), c);
#endif
  return ~c;
}

}  // namespace weightgate::common
