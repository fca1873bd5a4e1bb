#include "weightgate/tensors.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <vector>

#include "absl/strings/str_cat.h"

namespace weightgate {

std::optional<at::ScalarType> ScalarTypeOf(std::string_view dtype) {
  // clang-format off
  static const std::pair<std::string_view, at::ScalarType> kTypes[] = {
      {"F64", at::kDouble}, {"F32", at::kFloat},  {"F16", at::kHalf},  {"BF16", at::kBFloat16},
      {"I64", at::kLong},   {"I32", at::kInt},    {"I16", at::kShort}, {"I8", at::kChar},
      {"U8", at::kByte},    {"BOOL", at::kBool},  {"C64", at::kComplexFloat},
      {"C128", at::kComplexDouble},
  };
  // clang-format on
  for (const auto& [name, type] : kTypes) {
    if (name == dtype) return type;
  }
  return std::nullopt;
}

absl::StatusOr<TensorMap> Client::FetchTensors(const std::string& ref, FetchInfo* info_out) {
  try {
    at::Tensor buffer;
    absl::StatusOr<FetchInfo> info =
        FetchToBuffer(ref, [&buffer](const FetchInfo& info) -> absl::StatusOr<char*> {
          buffer = at::empty({static_cast<int64_t>(info.total_bytes)}, at::kByte);
          return reinterpret_cast<char*>(buffer.data_ptr<uint8_t>());
        });
    if (!info.ok()) return info.status();
    const uint64_t total = info->total_bytes;
    TensorMap out;
    // Tied entries last, so their partners exist whatever the manifest order.
    std::vector<const TensorInfo*> order;
    for (const TensorInfo& t : info->tensors) order.push_back(&t);
    std::stable_partition(order.begin(), order.end(),
                          [](const TensorInfo* t) { return t->tied_to.empty(); });
    for (const TensorInfo* tp : order) {
      const TensorInfo& t = *tp;
      std::optional<at::ScalarType> type = ScalarTypeOf(t.dtype);
      if (!type) {
        return absl::UnimplementedError(absl::StrCat("tensor '", t.name, "': dtype ", t.dtype));
      }
      if (!t.tied_to.empty()) {
        auto partner = out.find(t.tied_to);
        if (partner != out.end() && partner->second.scalar_type() == *type &&
            partner->second.sizes() == at::IntArrayRef(t.shape)) {
          out.emplace(t.name, partner->second.view(t.shape));
          continue;
        }
      }
      if (t.length > total || t.offset > total - t.length) {
        return absl::InternalError(absl::StrCat("tensor '", t.name, "' lies outside the blob"));
      }
      if (t.length == 0) {
        out.emplace(t.name, at::empty(t.shape, at::TensorOptions().dtype(*type)));
        continue;
      }
      at::Tensor raw =
          buffer.narrow(0, static_cast<int64_t>(t.offset), static_cast<int64_t>(t.length));
      const uint64_t item = c10::elementSize(*type);
      // Misaligned in the blob: this tensor alone is copied.
      if (t.offset % item != 0 || t.length % item != 0) raw = raw.clone();
      out.emplace(t.name, raw.view(*type).view(t.shape));
    }
    if (info_out != nullptr) *info_out = *std::move(info);
    return out;
  } catch (const c10::Error& e) {
    return absl::InternalError(absl::StrCat("fetch ", ref, ": ", e.what_without_backtrace()));
  }
}

}  // namespace weightgate
