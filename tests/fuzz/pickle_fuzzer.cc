// libFuzzer target: the restricted pickle machine on arbitrary bytes, then
// the walkers (FlattenTensors, DebugString) over whatever graph it built,
// memo sharing and cycles included. What the machine built must fit the
// read budget it counted (the output-size invariant).
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "server/checkpoint/pickle_reader.h"
#include "server/checkpoint/value.h"
#include "tests/fuzz/fuzz_check.h"

namespace wc = weightgate::checkpoint;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view bytes(reinterpret_cast<const char*>(data), size);
  wc::ValueArena arena;
  std::vector<std::string> opaque, unsafe;
  wc::PickleContext ctx;
  ctx.arena = &arena;
  ctx.limits.max_values = 1 << 20;
  // A small fixed allowance, so that amplification reaches the budget (and
  // an unbudgeted copy reaches -malloc_limit_mb) within a fuzzing run.
  ctx.limits.budget_fixed_bytes = uint64_t{16} << 20;
  wc::ReadBudget budget(wc::ReadBudget::LimitFor(ctx.limits.budget_fixed_bytes,
                                                 ctx.limits.budget_per_input_byte, size));
  ctx.budget = &budget;
  ctx.opaque_globals = &opaque;
  ctx.unsafe_globals = &unsafe;
  size_t consumed = 0;
  absl::StatusOr<wc::Value*> root = wc::Unpickle(bytes, ctx, &consumed);
  if (!root.ok()) {
    WG_FUZZ_CHECK_REJECTION(root.status());
    return 0;
  }
  WG_FUZZ_CHECK(*root != nullptr);
  WG_FUZZ_CHECK(consumed <= size);
  WG_FUZZ_CHECK(arena.size() <= ctx.limits.max_values);
  WG_FUZZ_CHECK(budget.used() <= budget.limit());
  WG_FUZZ_CHECK(FuzzArenaBytes(arena) <= budget.used());
  wc::DebugString(*root);
  // As ReadCheckpoint does: bound the names before anything builds them (a
  // small visit cap keeps shared-DAG inputs fast under the sanitizers).
  wc::FlattenLimits limits;
  limits.max_visits = 1 << 16;
  absl::Status names = wc::CheckTensorNames(*root, limits, &budget);
  if (!names.ok()) {
    WG_FUZZ_CHECK_REJECTION(names);
    return 0;
  }
  for (const wc::NamedTensor& t : wc::FlattenTensors(*root)) {
    WG_FUZZ_CHECK(t.tensor != nullptr);
  }
  return 0;
}
