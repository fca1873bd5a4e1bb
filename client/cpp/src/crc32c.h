// CRC32C (Castagnoli) of FetchWeights chunks, with the SSE4.2 instruction
// when the CPU has it. Private to the client library.
#ifndef WEIGHTGATE_CLIENT_CPP_SRC_CRC32C_H_
#define WEIGHTGATE_CLIENT_CPP_SRC_CRC32C_H_

#include <cstddef>
#include <cstdint>

namespace weightgate::client_internal {

// Extends `crc` (0 to start) over `n` bytes at `p`.
uint32_t Crc32cExtend(uint32_t crc, const void* p, size_t n);

}  // namespace weightgate::client_internal

#endif  // WEIGHTGATE_CLIENT_CPP_SRC_CRC32C_H_
