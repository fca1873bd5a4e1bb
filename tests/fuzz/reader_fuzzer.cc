// libFuzzer target: ReadCheckpoint, the whole reader (format detection, zip,
// torch.save zip and legacy, TorchScript, safetensors, JSON specs) on
// arbitrary bytes. Accepted checkpoints must keep every tensor's addressed
// elements inside its storage's bytes, and the read budget must cover what
// the reader holds.
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "server/checkpoint/checkpoint.h"
#include "tests/fuzz/fuzz_check.h"

namespace wc = weightgate::checkpoint;

namespace {

void CheckTensor(const wc::Checkpoint& cp, const wc::TensorRecord& t) {
  WG_FUZZ_CHECK(t.strides.size() == t.shape.size());
  if (t.storage_index < 0) return;  // schema only
  WG_FUZZ_CHECK(static_cast<size_t>(t.storage_index) < cp.storages.size());
  __int128 numel = 1;
  __int128 last = t.storage_offset;  // element index of the last addressed element
  for (size_t i = 0; i < t.shape.size(); ++i) {
    WG_FUZZ_CHECK(t.shape[i] >= 0);
    numel *= t.shape[i];
    if (t.shape[i] > 0) last += static_cast<__int128>(t.shape[i] - 1) * t.strides[i];
  }
  if (numel == 0) return;
  WG_FUZZ_CHECK(t.storage_offset >= 0);
  for (int64_t s : t.strides) WG_FUZZ_CHECK(s >= 0);
  __int128 end_bytes = (last + 1) * static_cast<__int128>(wc::ItemSize(t.dtype));
  WG_FUZZ_CHECK(end_bytes <= static_cast<__int128>(cp.StorageBytes(t.storage_index).size()));
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string bytes(reinterpret_cast<const char*>(data), size);
  wc::ReadOptions options;
  options.max_values = 1 << 20;
  options.max_inflated_bytes = uint64_t{256} << 20;
  options.budget_fixed_bytes = uint64_t{16} << 20;  // amplification shows within a run
  options.max_flatten_visits = 1 << 16;             // shared DAGs stay fast under ASan
  absl::StatusOr<wc::Checkpoint> cp =
      wc::ReadCheckpoint(weightgate::common::MappedFile::FromString(std::move(bytes)), options);
  if (!cp.ok()) {
    WG_FUZZ_CHECK_REJECTION(cp.status());
    return 0;
  }
  WG_FUZZ_CHECK(cp->root != nullptr);
  // Output-size invariant: the tree, inflated entries and names fit the budget.
  WG_FUZZ_CHECK(cp->budget_used <= cp->budget_limit);
  uint64_t inflated = 0;
  for (const std::string& s : cp->inflated) inflated += s.size();
  WG_FUZZ_CHECK(FuzzArenaBytes(*cp->arena) + inflated <= cp->budget_used ||
                cp->format == wc::Format::kSafetensors || cp->format == wc::Format::kJsonSpec);
  for (size_t i = 0; i < cp->storages.size(); ++i) {
    WG_FUZZ_CHECK(cp->StorageBytes(static_cast<int>(i)).size() == cp->storages[i].nbytes);
  }
  wc::DebugString(cp->root);
  for (const wc::NamedTensor& t : wc::FlattenTensors(cp->root)) {
    WG_FUZZ_CHECK(t.tensor != nullptr);
    CheckTensor(*cp, *t.tensor);
  }
  return 0;
}
