// CRC32C (Castagnoli), the checksum on every FetchWeights chunk. Uses the
// SSE4.2 instruction when the CPU has it, a table otherwise.
#ifndef WEIGHTGATE_COMMON_CRC32C_H_
#define WEIGHTGATE_COMMON_CRC32C_H_

#include <cstdint>
#include <string_view>

namespace weightgate::common {

// crc of `data` continuing from `crc` (0 to start).
uint32_t Crc32c(std::string_view data, uint32_t crc = 0);

}  // namespace weightgate::common

#endif  // WEIGHTGATE_COMMON_CRC32C_H_
