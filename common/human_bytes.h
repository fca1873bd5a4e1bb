// Byte counts for people: "512 B", "21.0 KiB", "1.5 GiB". Used by the CLI's
// tables and progress lines and by `weightgate inspect`.
#ifndef WEIGHTGATE_COMMON_HUMAN_BYTES_H_
#define WEIGHTGATE_COMMON_HUMAN_BYTES_H_

#include <string>

namespace weightgate::common {

// Whole bytes below 1 KiB, else one decimal in KiB, MiB, GiB or TiB.
std::string HumanBytes(double bytes);

}  // namespace weightgate::common

#endif  // WEIGHTGATE_COMMON_HUMAN_BYTES_H_
