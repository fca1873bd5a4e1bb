// Invariant checks shared by the fuzz targets: a parse may fail, but what it
// returns must be self-consistent. A violated invariant aborts, so libFuzzer
// records the input like a crash.
#ifndef WEIGHTGATE_TESTS_FUZZ_FUZZ_CHECK_H_
#define WEIGHTGATE_TESTS_FUZZ_FUZZ_CHECK_H_

#include <cstdio>
#include <cstdlib>

#include "absl/status/status.h"
#include "server/checkpoint/value.h"

#define WG_FUZZ_CHECK(cond)                                                             \
  do {                                                                                  \
    if (!(cond)) {                                                                      \
      std::fprintf(stderr, "%s:%d: invariant failed: %s\n", __FILE__, __LINE__, #cond); \
      std::abort();                                                                     \
    }                                                                                   \
  } while (0)

// Untrusted input may only ever produce InvalidArgument (damaged) or
// ResourceExhausted (a reader limit reached).
#define WG_FUZZ_CHECK_REJECTION(status)                                  \
  WG_FUZZ_CHECK((status).code() == absl::StatusCode::kInvalidArgument || \
                (status).code() == absl::StatusCode::kResourceExhausted)

// The output-size invariant: what the arena holds (nodes, container items,
// strings, tensor shapes) is never more than the read budget counted, so the
// budget really bounds memory. Accounting that misses an allocation shows up
// here, and one that misses a large one also under -malloc_limit_mb.
inline uint64_t FuzzArenaBytes(const weightgate::checkpoint::ValueArena& arena) {
  uint64_t total = 0;
  arena.ForEach([&](const weightgate::checkpoint::Value& v) {
    total += sizeof(weightgate::checkpoint::Value) + v.items.size() * sizeof(void*) + v.str.size() +
             2 * sizeof(int64_t) * v.tensor.shape.size();
  });
  return total;
}

#endif  // WEIGHTGATE_TESTS_FUZZ_FUZZ_CHECK_H_
