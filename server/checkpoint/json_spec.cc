#include "server/checkpoint/json_spec.h"

#include <algorithm>
#include <limits>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "server/checkpoint/dtype.h"
#include "server/checkpoint/json.h"

namespace weightgate::checkpoint {
namespace {

// A spec is {"tensors": {name: {"dtype", "shape": [...]}}}; a little room for
// notes nested in ignored members.
constexpr uint32_t kMaxSpecDepth = 16;
constexpr size_t kMaxRank = 64;
// LooksLikeJsonSpec looks for "tensors" this far into the file (notes or
// metadata may come first).
constexpr size_t kSniffBytes = size_t{1} << 20;

absl::Status Error(std::string_view reason) {
  std::string message = "json_spec: ";
  message.append(reason);
  return absl::InvalidArgumentError(message);
}

bool IsSpace(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }

std::optional<DType> SpecDType(std::string_view name) {
  if (std::optional<DType> d = DTypeFromName(name)) return d;
  std::string lower(name);
  for (char& c : lower) {
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
  }
  return DTypeFromTorchName(lower);
}

}  // namespace

bool LooksLikeJsonSpec(std::string_view data) {
  std::string_view head = data.substr(0, kSniffBytes);
  if (head.substr(0, 3) == "\xef\xbb\xbf") head.remove_prefix(3);  // UTF-8 BOM
  size_t i = 0;
  while (i < head.size() && IsSpace(head[i])) ++i;
  if (i == head.size() || head[i] != '{') return false;
  ++i;
  while (i < head.size() && IsSpace(head[i])) ++i;
  if (i == head.size() || head[i] != '"') return false;
  return head.find("\"tensors\"") != std::string_view::npos;
}

absl::StatusOr<Checkpoint> ReadJsonSpec(std::shared_ptr<const common::MappedFile> file,
                                        const ReadOptions& options) {
  if (file == nullptr) return Error("no file");
  std::string_view text = file->data();
  if (text.substr(0, 3) == "\xef\xbb\xbf") text.remove_prefix(3);
  if (text.size() > options.max_safetensors_header) return Error("document exceeds cap");
  JsonLimits limits;
  limits.max_bytes = options.max_safetensors_header;
  limits.max_depth = kMaxSpecDepth;
  limits.max_values = std::min<uint64_t>(limits.max_values, options.max_values);
  absl::StatusOr<JsonValue> json = ParseJson(text, limits);
  if (!json.ok()) return Error(std::string(json.status().message()));
  if (!json->is_object()) return Error("document is not an object");
  const JsonValue* tensors = json->Find("tensors");
  if (tensors == nullptr) return Error("no \"tensors\" member");
  if (!tensors->is_object()) return Error("\"tensors\" is not an object");
  if (2 * uint64_t{tensors->members.size()} + 1 > options.max_values) {
    return Error("too many tensors");
  }

  Checkpoint checkpoint;
  checkpoint.format = Format::kJsonSpec;
  if (const JsonValue* metadata = json->Find("metadata");
      metadata != nullptr && metadata->is_object()) {
    for (const auto& [key, value] : metadata->members) {
      if (value.is_string()) checkpoint.metadata.push_back(key + "=" + value.text);
    }
  }

  ValueArena& arena = *checkpoint.arena;
  Value* root = arena.New(Value::Kind::kDict);
  for (const auto& [name, info] : tensors->members) {
    if (name.empty()) return Error("empty tensor name");
    if (!info.is_object()) return Error("tensor entry is not an object: " + name);
    const JsonValue* dtype = info.Find("dtype");
    const JsonValue* shape = info.Find("shape");
    if (dtype == nullptr || !dtype->is_string()) return Error("missing dtype: " + name);
    if (shape == nullptr || !shape->is_array()) return Error("missing shape: " + name);
    std::optional<DType> dt = SpecDType(dtype->text);
    if (!dt.has_value()) return Error("unknown dtype " + dtype->text.substr(0, 32) + ": " + name);
    if (shape->items.size() > kMaxRank) return Error("too many dimensions: " + name);

    TensorRecord record;
    record.dtype = *dt;
    record.storage_index = -1;
    // numel * item size must fit: later stages allocate and compare byte counts.
    uint64_t bytes = ItemSize(*dt);
    for (const JsonValue& d : shape->items) {
      std::optional<int64_t> v = d.AsInt64();
      if (!v.has_value() || *v < 0) return Error("bad dimension: " + name);
      uint64_t u = static_cast<uint64_t>(*v);
      if (u != 0 && bytes > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()) / u) {
        return Error("shape overflows: " + name);
      }
      bytes *= u;
      record.shape.push_back(*v);
    }
    record.strides.resize(record.shape.size());
    int64_t stride = 1;
    for (size_t i = record.shape.size(); i-- > 0;) {
      record.strides[i] = stride;
      int64_t d = std::max<int64_t>(record.shape[i], 1);
      if (stride > std::numeric_limits<int64_t>::max() / d)
        return Error("shape overflows: " + name);
      stride *= d;
    }

    Value* key = arena.New(Value::Kind::kString);
    key->str = name;
    Value* tensor = arena.New(Value::Kind::kTensor);
    tensor->tensor = std::move(record);
    root->items.push_back(key);
    root->items.push_back(tensor);
  }
  root->depth = root->items.empty() ? 0 : 1;  // as the pickle reader counts nesting
  checkpoint.root = root;
  checkpoint.file = std::move(file);
  return checkpoint;
}

}  // namespace weightgate::checkpoint
