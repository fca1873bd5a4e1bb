#include "server/checkpoint/safetensors.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <limits>
#include <optional>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "server/checkpoint/json.h"

namespace weightgate::checkpoint {
namespace {

constexpr uint64_t kLengthBytes = 8;
constexpr uint64_t kHeaderAlignment = 8;
// No real tensor has more dims; bounds per-tensor work and memory.
constexpr size_t kMaxRank = 64;
// The header is flat: root object -> tensor object -> shape array.
constexpr uint32_t kMaxHeaderDepth = 4;
// Writes smaller than this are gathered before reaching the kernel.
constexpr size_t kWriteBufferBytes = size_t{1} << 20;

absl::Status Error(std::string_view reason) {
  std::string message = "safetensors: ";
  message.append(reason);
  return absl::InvalidArgumentError(message);
}

uint64_t LoadLe64(const char* p) {
  uint64_t v = 0;
  for (int i = 0; i < 8; ++i)
    v |= static_cast<uint64_t>(static_cast<unsigned char>(p[i])) << (8 * i);
  return v;
}

// numel * item size with overflow checks; nullopt when either overflows
// (numel must also fit int64, torch's element count type).
std::optional<uint64_t> ByteSize(const std::vector<int64_t>& shape, DType dtype) {
  uint64_t numel = 1;
  for (int64_t d : shape) {
    if (d < 0) return std::nullopt;
    uint64_t u = static_cast<uint64_t>(d);
    if (u != 0 && numel > std::numeric_limits<uint64_t>::max() / u) return std::nullopt;
    numel *= u;
  }
  if (numel > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) return std::nullopt;
  uint64_t item = ItemSize(dtype);
  if (numel > std::numeric_limits<uint64_t>::max() / item) return std::nullopt;
  return numel * item;
}

// Row-major strides as torch computes them (size-0 dims count as 1);
// nullopt on overflow.
std::optional<std::vector<int64_t>> ContiguousStrides(const std::vector<int64_t>& shape) {
  std::vector<int64_t> strides(shape.size());
  int64_t stride = 1;
  for (size_t i = shape.size(); i-- > 0;) {
    strides[i] = stride;
    int64_t d = std::max<int64_t>(shape[i], 1);
    if (stride > std::numeric_limits<int64_t>::max() / d) return std::nullopt;
    stride *= d;
  }
  return strides;
}

struct ParsedTensor {
  const std::string* name = nullptr;
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
  uint64_t begin = 0;
  uint64_t end = 0;
};

absl::StatusOr<ParsedTensor> ParseTensorInfo(const std::string& name, const JsonValue& info,
                                             uint64_t data_size) {
  if (!info.is_object()) return Error("tensor entry is not an object: " + name);
  ParsedTensor t;
  t.name = &name;
  const JsonValue* dtype = info.Find("dtype");
  const JsonValue* shape = info.Find("shape");
  const JsonValue* offsets = info.Find("data_offsets");
  if (dtype == nullptr || shape == nullptr || offsets == nullptr) {
    return Error("tensor entry lacks dtype, shape or data_offsets: " + name);
  }
  if (!dtype->is_string()) return Error("dtype is not a string: " + name);
  std::optional<DType> dt = DTypeFromName(dtype->text);
  // The format's names are upper case; DTypeFromName also takes lower case.
  if (!dt.has_value() || DTypeName(*dt) != dtype->text) {
    return Error("unsupported dtype " + dtype->text.substr(0, 32) + ": " + name);
  }
  t.dtype = *dt;
  if (!shape->is_array()) return Error("shape is not an array: " + name);
  if (shape->items.size() > kMaxRank) return Error("too many dimensions: " + name);
  for (const JsonValue& d : shape->items) {
    std::optional<int64_t> v = d.AsInt64();
    if (!v.has_value() || *v < 0) return Error("bad dimension: " + name);
    t.shape.push_back(*v);
  }
  if (!offsets->is_array() || offsets->items.size() != 2) {
    return Error("data_offsets is not a pair: " + name);
  }
  std::optional<uint64_t> begin = offsets->items[0].AsUint64();
  std::optional<uint64_t> end = offsets->items[1].AsUint64();
  if (!begin.has_value() || !end.has_value()) return Error("bad data_offsets: " + name);
  if (*begin > *end) return Error("data_offsets reversed: " + name);
  if (*end > data_size) return Error("tensor data past end of file: " + name);
  t.begin = *begin;
  t.end = *end;
  std::optional<uint64_t> nbytes = ByteSize(t.shape, t.dtype);
  if (!nbytes.has_value()) return Error("shape overflows: " + name);
  if (*nbytes != t.end - t.begin) return Error("shape does not match data_offsets: " + name);
  return t;
}

}  // namespace

std::string SafetensorsTieKey(std::string_view name) {
  std::string key(kSafetensorsTiePrefix);
  key.append(name);
  return key;
}

bool LooksLikeSafetensors(std::string_view data) {
  if (data.size() < kLengthBytes + 2) return false;
  uint64_t n = LoadLe64(data.data());
  return n >= 2 && n <= data.size() - kLengthBytes && data[kLengthBytes] == '{';
}

absl::StatusOr<Checkpoint> ReadSafetensors(std::shared_ptr<const common::MappedFile> file,
                                           const ReadOptions& options) {
  if (file == nullptr) return Error("no file");
  std::string_view data = file->data();
  if (data.size() < kLengthBytes) return Error("file shorter than the header length");
  uint64_t header_length = LoadLe64(data.data());
  // Cap first: the length is attacker-chosen and may be near 2^64.
  if (header_length > options.max_safetensors_header) return Error("header length exceeds cap");
  if (header_length > data.size() - kLengthBytes) return Error("header runs past end of file");
  std::string_view header = data.substr(kLengthBytes, static_cast<size_t>(header_length));
  uint64_t data_start = kLengthBytes + header_length;
  uint64_t data_size = data.size() - data_start;

  JsonLimits limits;
  limits.max_bytes = options.max_safetensors_header;
  limits.max_depth = kMaxHeaderDepth;
  limits.max_values = std::min<uint64_t>(limits.max_values, options.max_values);
  absl::StatusOr<JsonValue> json = ParseJson(header, limits);
  if (!json.ok()) return Error("bad header: " + std::string(json.status().message()));
  if (!json->is_object()) return Error("header is not a JSON object");

  Checkpoint checkpoint;
  checkpoint.format = Format::kSafetensors;
  std::vector<ParsedTensor> tensors;
  tensors.reserve(json->members.size());
  // (tied name, partner) of each tie record, in metadata order.
  std::vector<std::pair<std::string_view, const std::string*>> ties;
  for (const auto& [name, value] : json->members) {
    if (name == kSafetensorsMetadataKey) {
      if (!value.is_object()) return Error("__metadata__ is not an object");
      for (const auto& [key, item] : value.members) {
        if (!item.is_string()) return Error("__metadata__ value is not a string: " + key);
        checkpoint.metadata.push_back(key + "=" + item.text);
        if (key.size() >= kSafetensorsTiePrefix.size() &&
            std::string_view(key).substr(0, kSafetensorsTiePrefix.size()) ==
                kSafetensorsTiePrefix) {
          ties.emplace_back(std::string_view(key).substr(kSafetensorsTiePrefix.size()), &item.text);
        }
      }
      continue;
    }
    absl::StatusOr<ParsedTensor> t = ParseTensorInfo(name, value, data_size);
    if (!t.ok()) return t.status();
    tensors.push_back(std::move(*t));
  }
  if (2 * (uint64_t{tensors.size()} + ties.size()) + 1 > options.max_values) {
    return Error("too many tensors");
  }

  // The byte ranges must tile the data region: sorted, each starts where the
  // previous ended, the last ends at the end of the file.
  std::vector<const ParsedTensor*> order;
  order.reserve(tensors.size());
  for (const ParsedTensor& t : tensors) order.push_back(&t);
  std::sort(order.begin(), order.end(), [](const ParsedTensor* a, const ParsedTensor* b) {
    return a->begin != b->begin ? a->begin < b->begin : a->end < b->end;
  });
  uint64_t expected = 0;
  for (const ParsedTensor* t : order) {
    if (t->begin < expected) return Error("overlapping tensors: " + *t->name);
    if (t->begin > expected) return Error("gap before tensor: " + *t->name);
    expected = t->end;
  }
  if (expected != data_size) return Error("bytes after the last tensor");

  ValueArena& arena = *checkpoint.arena;
  Value* root = arena.New(Value::Kind::kDict);
  checkpoint.storages.reserve(tensors.size());
  for (ParsedTensor& t : tensors) {
    std::optional<std::vector<int64_t>> strides = ContiguousStrides(t.shape);
    if (!strides.has_value()) return Error("shape overflows: " + *t.name);
    StorageRecord storage;
    storage.dtype = t.dtype;
    storage.key = *t.name;
    storage.file_offset = data_start + t.begin;
    storage.nbytes = t.end - t.begin;
    checkpoint.storages.push_back(std::move(storage));

    Value* key = arena.New(Value::Kind::kString);
    key->str = *t.name;
    Value* tensor = arena.New(Value::Kind::kTensor);
    tensor->tensor.dtype = t.dtype;
    tensor->tensor.shape = std::move(t.shape);
    tensor->tensor.strides = std::move(*strides);
    tensor->tensor.storage_offset = 0;
    tensor->tensor.storage_index = static_cast<int>(checkpoint.storages.size() - 1);
    root->items.push_back(key);
    root->items.push_back(tensor);
  }
  // Tie records: another name for a tensor of the file, viewing its storage.
  if (!ties.empty()) {
    absl::flat_hash_map<std::string_view, const Value*> by_name;
    for (size_t i = 0; i + 1 < root->items.size(); i += 2) {
      by_name.emplace(root->items[i]->str, root->items[i + 1]);
    }
    for (const auto& [name, partner] : ties) {
      const std::string shown(name.substr(0, 128));
      if (name.empty() || name == kSafetensorsMetadataKey) return Error("bad tied tensor name");
      auto it = by_name.find(*partner);
      if (it == by_name.end() || it->second->tensor.storage_index < 0 ||
          checkpoint.storages[static_cast<size_t>(it->second->tensor.storage_index)].key !=
              *partner) {
        return Error("tie record names no tensor of the file: " + shown);
      }
      if (by_name.contains(name)) return Error("tied name is already a tensor: " + shown);
      Value* key = arena.New(Value::Kind::kString);
      key->str = std::string(name);
      Value* tensor = arena.New(Value::Kind::kTensor);
      tensor->tensor = it->second->tensor;
      root->items.push_back(key);
      root->items.push_back(tensor);
      by_name.emplace(key->str, tensor);
    }
  }
  root->depth = root->items.empty() ? 0 : 1;  // as the pickle reader counts nesting
  checkpoint.root = root;
  checkpoint.file = std::move(file);
  return checkpoint;
}

absl::Status ValidateSafetensorsLayout(
    const std::vector<SafetensorsEntry>& tensors,
    const std::vector<std::pair<std::string, std::string>>& metadata) {
  if (tensors.size() > static_cast<size_t>(std::numeric_limits<int>::max())) {
    return Error("too many tensors");
  }
  absl::flat_hash_set<std::string> names;
  uint64_t total = 0;
  for (const SafetensorsEntry& t : tensors) {
    if (t.name.empty()) return Error("empty tensor name");
    if (t.name == kSafetensorsMetadataKey) return Error("tensor named __metadata__");
    if (!IsValidUtf8(t.name)) return Error("tensor name is not UTF-8");
    if (!names.insert(t.name).second) return Error("duplicate tensor name: " + t.name);
    if (t.shape.size() > kMaxRank) return Error("too many dimensions: " + t.name);
    std::optional<uint64_t> nbytes = ByteSize(t.shape, t.dtype);
    if (!nbytes.has_value() || !ContiguousStrides(t.shape).has_value()) {
      return Error("bad shape: " + t.name);
    }
    if (*nbytes > std::numeric_limits<uint64_t>::max() - total) return Error("model too large");
    total += *nbytes;
  }
  absl::flat_hash_set<std::string> keys;
  for (const auto& [key, value] : metadata) {
    if (!IsValidUtf8(key) || !IsValidUtf8(value)) return Error("metadata is not UTF-8");
    if (!keys.insert(key).second) return Error("duplicate metadata key: " + key);
  }
  return absl::OkStatus();
}

uint64_t SafetensorsDataSize(const std::vector<SafetensorsEntry>& tensors) {
  uint64_t total = 0;
  for (const SafetensorsEntry& t : tensors) total += ByteSize(t.shape, t.dtype).value_or(0);
  return total;
}

std::string SafetensorsHeader(const std::vector<SafetensorsEntry>& tensors,
                              const std::vector<std::pair<std::string, std::string>>& metadata) {
  std::string json = "{";
  if (!metadata.empty()) {
    json += JsonQuote(kSafetensorsMetadataKey);
    json += ":{";
    for (size_t i = 0; i < metadata.size(); ++i) {
      if (i > 0) json += ',';
      json += JsonQuote(metadata[i].first);
      json += ':';
      json += JsonQuote(metadata[i].second);
    }
    json += '}';
  }
  uint64_t offset = 0;
  for (const SafetensorsEntry& t : tensors) {
    if (json.size() > 1) json += ',';
    json += JsonQuote(t.name);
    json += ":{\"dtype\":\"";
    json += DTypeName(t.dtype);
    json += "\",\"shape\":[";
    for (size_t i = 0; i < t.shape.size(); ++i) {
      if (i > 0) json += ',';
      json += std::to_string(t.shape[i]);
    }
    uint64_t end = offset + ByteSize(t.shape, t.dtype).value_or(0);
    json += "],\"data_offsets\":[";
    json += std::to_string(offset);
    json += ',';
    json += std::to_string(end);
    json += "]}";
    offset = end;
  }
  json += '}';
  json.append((kHeaderAlignment - json.size() % kHeaderAlignment) % kHeaderAlignment, ' ');
  std::string out(kLengthBytes, '\0');
  uint64_t n = json.size();
  for (size_t i = 0; i < kLengthBytes; ++i) out[i] = static_cast<char>(n >> (8 * i));
  return out + json;
}

absl::StatusOr<std::unique_ptr<SafetensorsWriter>> SafetensorsWriter::Create(
    const std::string& path, std::vector<SafetensorsEntry> tensors,
    std::vector<std::pair<std::string, std::string>> metadata) {
  if (absl::Status s = ValidateSafetensorsLayout(tensors, metadata); !s.ok()) return s;
  std::string header = SafetensorsHeader(tensors, metadata);
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return absl::ErrnoToStatus(errno, "safetensors: open " + path);
  std::unique_ptr<SafetensorsWriter> writer(
      new SafetensorsWriter(fd, path, SafetensorsDataSize(tensors)));
  if (absl::Status s = writer->WriteAll(header); !s.ok()) return s;
  return writer;
}

SafetensorsWriter::~SafetensorsWriter() {
  if (fd_ >= 0) ::close(fd_);
}

absl::Status SafetensorsWriter::WriteAll(std::string_view bytes) {
  while (!bytes.empty()) {
    ssize_t n = ::write(fd_, bytes.data(), bytes.size());
    if (n < 0) {
      if (errno == EINTR) continue;
      failed_ = absl::ErrnoToStatus(errno, "safetensors: write " + path_);
      return failed_;
    }
    bytes.remove_prefix(static_cast<size_t>(n));
  }
  return absl::OkStatus();
}

absl::Status SafetensorsWriter::Flush() {
  if (buffer_.empty()) return absl::OkStatus();
  absl::Status s = WriteAll(buffer_);
  buffer_.clear();
  return s;
}

absl::Status SafetensorsWriter::Append(std::string_view bytes) {
  if (!failed_.ok()) return failed_;
  if (fd_ < 0) return absl::FailedPreconditionError("safetensors: writer already finished");
  if (bytes.size() > data_size_ - written_) {
    return absl::FailedPreconditionError("safetensors: more bytes than the tensors declare");
  }
  written_ += bytes.size();
  if (buffer_.size() + bytes.size() <= kWriteBufferBytes) {
    buffer_.append(bytes.data(), bytes.size());
    return buffer_.size() == kWriteBufferBytes ? Flush() : absl::OkStatus();
  }
  if (absl::Status s = Flush(); !s.ok()) return s;
  if (bytes.size() >= kWriteBufferBytes) return WriteAll(bytes);
  buffer_.append(bytes.data(), bytes.size());
  return absl::OkStatus();
}

absl::Status SafetensorsWriter::Finish() {
  if (fd_ < 0) return absl::FailedPreconditionError("safetensors: writer already finished");
  absl::Status status = failed_;
  if (status.ok()) status = Flush();
  if (status.ok() && written_ != data_size_) {
    status = absl::FailedPreconditionError("safetensors: " + std::to_string(written_) + " of " +
                                           std::to_string(data_size_) + " tensor bytes written");
  }
  if (status.ok() && ::fsync(fd_) != 0) {
    status = absl::ErrnoToStatus(errno, "safetensors: fsync " + path_);
  }
  if (::close(fd_) != 0 && status.ok()) {
    status = absl::ErrnoToStatus(errno, "safetensors: close " + path_);
  }
  fd_ = -1;
  return status;
}

}  // namespace weightgate::checkpoint
