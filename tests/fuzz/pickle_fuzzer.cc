// libFuzzer target: the restricted pickle machine on arbitrary bytes, then
// the walkers (FlattenTensors, DebugString) over whatever graph it built,
// memo sharing and cycles included.
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
  ctx.limits.max_values = 1 << 20;  // stay under libFuzzer's RSS limit
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
  wc::DebugString(*root);
  for (const wc::NamedTensor& t : wc::FlattenTensors(*root)) {
    WG_FUZZ_CHECK(t.tensor != nullptr);
  }
  return 0;
}
