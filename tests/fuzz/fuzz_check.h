// Invariant checks shared by the fuzz targets: a parse may fail, but what it
// returns must be self-consistent. A violated invariant aborts, so libFuzzer
// records the input like a crash.
#ifndef WEIGHTGATE_TESTS_FUZZ_FUZZ_CHECK_H_
#define WEIGHTGATE_TESTS_FUZZ_FUZZ_CHECK_H_

#include <cstdio>
#include <cstdlib>

#include "absl/status/status.h"

#define WG_FUZZ_CHECK(cond)                                                             \
  do {                                                                                  \
    if (!(cond)) {                                                                      \
      std::fprintf(stderr, "%s:%d: invariant failed: %s\n", __FILE__, __LINE__, #cond); \
      std::abort();                                                                     \
    }                                                                                   \
  } while (0)

// Untrusted input may only ever produce InvalidArgument.
#define WG_FUZZ_CHECK_REJECTION(status) \
  WG_FUZZ_CHECK((status).code() == absl::StatusCode::kInvalidArgument)

#endif  // WEIGHTGATE_TESTS_FUZZ_FUZZ_CHECK_H_
