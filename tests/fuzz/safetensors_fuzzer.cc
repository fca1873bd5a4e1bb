// libFuzzer target: ReadSafetensors on arbitrary bytes. Accepted files must
// describe tensors whose byte ranges lie in the file, tile the data region
// and match their shapes; re-emitting the header from the parsed layout must
// give a file our reader accepts again.
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "server/checkpoint/safetensors.h"
#include "tests/fuzz/fuzz_check.h"

namespace wc = weightgate::checkpoint;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string bytes(reinterpret_cast<const char*>(data), size);
  wc::LooksLikeSafetensors(bytes);
  auto file = weightgate::common::MappedFile::FromString(bytes);
  absl::StatusOr<wc::Checkpoint> cp = wc::ReadSafetensors(file, {});
  if (!cp.ok()) {
    WG_FUZZ_CHECK_REJECTION(cp.status());
    return 0;
  }
  WG_FUZZ_CHECK(cp->root != nullptr && cp->root->kind == wc::Value::Kind::kDict);
  WG_FUZZ_CHECK(cp->root->items.size() == 2 * cp->storages.size());
  std::vector<wc::SafetensorsEntry> entries;
  uint64_t total = 0;
  for (size_t i = 0; i < cp->storages.size(); ++i) {
    const wc::StorageRecord& s = cp->storages[i];
    WG_FUZZ_CHECK(s.file_offset <= size && s.nbytes <= size - s.file_offset);
    const wc::TensorRecord& t = cp->root->items[2 * i + 1]->tensor;
    WG_FUZZ_CHECK(t.storage_index == static_cast<int>(i));
    WG_FUZZ_CHECK(t.strides.size() == t.shape.size());
    uint64_t numel = 1;
    for (int64_t d : t.shape) numel *= static_cast<uint64_t>(d);
    WG_FUZZ_CHECK(numel * wc::ItemSize(t.dtype) == s.nbytes);
    total += s.nbytes;
    entries.push_back({cp->root->items[2 * i]->str, t.dtype, t.shape});
  }
  WG_FUZZ_CHECK(cp->storages.empty() || total <= size);

  // Our writer's header for the same layout, in file offset order, followed
  // by the same tensor bytes, must read back.
  std::vector<std::pair<std::string, std::string>> metadata;
  if (wc::ValidateSafetensorsLayout(entries, metadata).ok()) {
    std::string rewritten = wc::SafetensorsHeader(entries, metadata);
    for (const wc::StorageRecord& s : cp->storages) {
      rewritten.append(bytes, static_cast<size_t>(s.file_offset), static_cast<size_t>(s.nbytes));
    }
    absl::StatusOr<wc::Checkpoint> again =
        wc::ReadSafetensors(weightgate::common::MappedFile::FromString(std::move(rewritten)), {});
    WG_FUZZ_CHECK(again.ok());
    WG_FUZZ_CHECK(again->storages.size() == cp->storages.size());
  }
  return 0;
}
