// libFuzzer target: the JSON parser and the JSON spec reader. Every string
// the parser returns must be valid UTF-8 and survive JsonQuote + ParseJson.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "server/checkpoint/json.h"
#include "server/checkpoint/json_spec.h"
#include "tests/fuzz/fuzz_check.h"

namespace wc = weightgate::checkpoint;

namespace {

void CheckStrings(const wc::JsonValue& v, int depth) {
  WG_FUZZ_CHECK(depth <= 64);
  if (v.is_string()) {
    WG_FUZZ_CHECK(wc::IsValidUtf8(v.text));
    absl::StatusOr<wc::JsonValue> again = wc::ParseJson(wc::JsonQuote(v.text));
    WG_FUZZ_CHECK(again.ok() && again->text == v.text);
  }
  if (v.is_number()) {
    // Integers that fit must read back the same through both accessors.
    if (auto u = v.AsUint64(); u.has_value() && *u <= INT64_MAX) {
      WG_FUZZ_CHECK(v.AsInt64() == static_cast<int64_t>(*u));
    }
    v.AsDouble();
  }
  for (const wc::JsonValue& item : v.items) CheckStrings(item, depth + 1);
  for (const auto& [key, member] : v.members) {
    WG_FUZZ_CHECK(wc::IsValidUtf8(key));
    CheckStrings(member, depth + 1);
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view text(reinterpret_cast<const char*>(data), size);
  absl::StatusOr<wc::JsonValue> v = wc::ParseJson(text);
  if (v.ok()) {
    CheckStrings(*v, 0);
  } else {
    WG_FUZZ_CHECK_REJECTION(v.status());
  }
  wc::LooksLikeJsonSpec(text);
  absl::StatusOr<wc::Checkpoint> spec =
      wc::ReadJsonSpec(weightgate::common::MappedFile::FromString(std::string(text)), {});
  if (!spec.ok()) {
    WG_FUZZ_CHECK_REJECTION(spec.status());
    return 0;
  }
  WG_FUZZ_CHECK(spec->root != nullptr && spec->root->items.size() % 2 == 0);
  for (size_t i = 1; i < spec->root->items.size(); i += 2) {
    const wc::TensorRecord& t = spec->root->items[i]->tensor;
    WG_FUZZ_CHECK(t.storage_index == -1 && t.strides.size() == t.shape.size());
  }
  return 0;
}
