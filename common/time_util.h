// Wall-clock time as the protos carry it (unix milliseconds).
#ifndef WEIGHTGATE_COMMON_TIME_UTIL_H_
#define WEIGHTGATE_COMMON_TIME_UTIL_H_

#include <cstdint>

namespace weightgate::common {

// Milliseconds since the unix epoch (CLOCK_REALTIME).
int64_t NowMs();

}  // namespace weightgate::common

#endif  // WEIGHTGATE_COMMON_TIME_UTIL_H_
