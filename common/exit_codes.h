// Process exit codes of every weightgate command-line program (DESIGN.md):
// `weightgate`, `weightgate-normalize`. Scripts gate pipelines on them.
#ifndef WEIGHTGATE_COMMON_EXIT_CODES_H_
#define WEIGHTGATE_COMMON_EXIT_CODES_H_

namespace weightgate::common {

// Success; for a report, VALID or NORMALIZED.
inline constexpr int kExitOk = 0;
// INVALID, or an unreadable or unsafe checkpoint.
inline constexpr int kExitInvalid = 1;
// Usage, connection or environment error.
inline constexpr int kExitUsage = 2;

}  // namespace weightgate::common

#endif  // WEIGHTGATE_COMMON_EXIT_CODES_H_
