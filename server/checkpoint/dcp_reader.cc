#include "server/checkpoint/dcp_reader.h"

#include <algorithm>
#include <cstring>
#include <map>
#include <memory>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "common/str_util.h"
#include "server/checkpoint/checkpoint_set.h"
#include "server/checkpoint/pickle_reader.h"
#include "server/checkpoint/set_builder.h"
#include "server/checkpoint/torch_reader.h"
#include "server/checkpoint/zip_reader.h"

namespace weightgate::checkpoint {

using common::Cat;
namespace {

using Kind = Value::Kind;

absl::Status Bad(std::string_view what) { return absl::InvalidArgumentError(Cat("dcp: ", what)); }

// The modules whose classes .metadata pickles, in both torch generations.
constexpr std::string_view kDataModules[] = {
    "torch.distributed.checkpoint.metadata",
    "torch.distributed._shard.checkpoint.metadata",
    "torch.distributed.checkpoint.filesystem",
    "torch.distributed._shard.checkpoint.filesystem",
    "torch.distributed._shard.sharded_tensor.metadata",
};
// The dataclasses (and the memory-format enums TensorProperties pickles)
// read as plain data.
constexpr std::string_view kDataClasses[] = {
    "Metadata",      "TensorStorageMetadata", "BytesStorageMetadata", "ChunkStorageMetadata",
    "MetadataIndex", "TensorProperties",      "MEM_FORMAT_ENCODING",  "_MEM_FORMAT_ENCODING",
    "StorageMeta",   "_StorageInfo",
};

// True for "module.Class" or "module.Class.MEMBER" of the tables above,
// and torch.serialization._get_layout (TensorProperties' layout, by name).
bool IsDataGlobal(std::string_view name) {
  if (name == "torch.serialization._get_layout") return true;
  for (std::string_view m : kDataModules) {
    if (name.size() <= m.size() + 1 || name.substr(0, m.size()) != m || name[m.size()] != '.') {
      continue;
    }
    std::string_view rest = name.substr(m.size() + 1);
    std::string_view cls = rest.substr(0, rest.find('.'));
    for (std::string_view c : kDataClasses) {
      if (cls == c) return true;
    }
  }
  return false;
}

// The class name of an opaque object of the tables above; "" otherwise.
std::string_view ClassOf(const Value* v) {
  if (v == nullptr || v->kind != Kind::kOpaque || !IsDataGlobal(v->str)) return {};
  std::string_view s = v->str;
  return s.substr(s.rfind('.') + 1);
}

// A dataclass field: its BUILD state is the instance __dict__ (or a
// (dict, slots) pair).
const Value* Field(const Value* obj, std::string_view name) {
  if (obj == nullptr || obj->kind != Kind::kOpaque || obj->state == nullptr) return nullptr;
  const Value* st = obj->state;
  if (st->kind == Kind::kDict) return st->Get(name);
  if (st->kind == Kind::kTuple) {
    for (const Value* item : st->items) {
      if (item != nullptr && item->kind == Kind::kDict) {
        if (const Value* f = item->Get(name); f != nullptr) return f;
      }
    }
  }
  return nullptr;
}

bool IntList(const Value* v, std::vector<int64_t>* out) {
  if (v == nullptr || (v->kind != Kind::kTuple && v->kind != Kind::kList)) return false;
  out->clear();
  for (const Value* item : v->items) {
    int64_t x;
    if (!ValueToInt(item, &x)) return false;
    out->push_back(x);
  }
  return true;
}

std::string Dims(const std::vector<int64_t>& d) {
  std::string out = "[";
  for (size_t i = 0; i < d.size(); ++i) out += Cat(i == 0 ? "" : ", ", d[i]);
  return out + "]";
}

struct ChunkInfo {
  std::vector<int64_t> offsets;
  std::vector<int64_t> sizes;
};

struct StorageInfo {
  std::string relative_path;
  uint64_t offset = 0;
  uint64_t length = 0;
};

// Key of storage_data: fqn and chunk offsets.
using ChunkKey = std::pair<std::string, std::vector<int64_t>>;

// numel of `shape`, or -1 on overflow / negative dims.
int64_t Numel(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (int64_t d : shape) {
    if (d < 0 || __builtin_mul_overflow(n, d, &n)) return -1;
  }
  return n;
}

absl::Status CheckCover(const std::string& fqn, const std::vector<int64_t>& size,
                        const std::vector<ChunkInfo>& chunks) {
  int64_t total = Numel(size);
  if (total < 0) return Bad(Cat(fqn, ": bad size ", Dims(size)));
  int64_t covered = 0;
  for (const ChunkInfo& c : chunks) {
    if (c.offsets.size() != size.size() || c.sizes.size() != size.size()) {
      return Bad(Cat(fqn, ": chunk at ", Dims(c.offsets), " has the wrong rank"));
    }
    for (size_t d = 0; d < size.size(); ++d) {
      if (c.offsets[d] < 0 || c.sizes[d] < 0 || c.offsets[d] > size[d] ||
          c.sizes[d] > size[d] - c.offsets[d]) {
        return Bad(Cat(fqn, ": chunk ", Dims(c.offsets), "+", Dims(c.sizes), " lies outside ",
                       Dims(size)));
      }
    }
    int64_t n = Numel(c.sizes);
    if (n < 0 || __builtin_add_overflow(covered, n, &covered)) return Bad(Cat(fqn, ": bad chunk"));
  }
  for (size_t i = 0; i < chunks.size(); ++i) {
    if (Numel(chunks[i].sizes) == 0) continue;
    for (size_t j = i + 1; j < chunks.size(); ++j) {
      if (Numel(chunks[j].sizes) == 0) continue;
      bool overlap = true;
      for (size_t d = 0; d < size.size() && overlap; ++d) {
        const ChunkInfo& a = chunks[i];
        const ChunkInfo& b = chunks[j];
        overlap =
            a.offsets[d] < b.offsets[d] + b.sizes[d] && b.offsets[d] < a.offsets[d] + a.sizes[d];
      }
      if (overlap) {
        return Bad(Cat(fqn, ": overlapping chunks at ", Dims(chunks[i].offsets), " and ",
                       Dims(chunks[j].offsets)));
      }
    }
  }
  if (covered != total) {
    return Bad(Cat(fqn, ": missing chunks: they cover ", covered, " of ", total, " elements"));
  }
  return absl::OkStatus();
}

class DcpReader {
 public:
  DcpReader(std::string dir, const ReadOptions& options)
      : dir_(std::move(dir)), options_(options), builder_("dcp") {}

  absl::StatusOr<Checkpoint> Read();

 private:
  absl::StatusOr<std::shared_ptr<const common::MappedFile>> File(const std::string& relative_path);
  absl::StatusOr<Checkpoint> ReadChunk(const std::string& fqn, const ChunkInfo& chunk);
  absl::Status ReadTensor(const std::string& fqn, const Value* meta);

  std::string dir_;
  const ReadOptions& options_;
  SetBuilder builder_;
  std::map<ChunkKey, StorageInfo> storage_;
  absl::flat_hash_map<std::string, std::shared_ptr<const common::MappedFile>> files_;
};

absl::StatusOr<std::shared_ptr<const common::MappedFile>> DcpReader::File(
    const std::string& relative_path) {
  auto it = files_.find(relative_path);
  if (it != files_.end()) return it->second;
  if (!IsPlainFileName(relative_path)) {
    return Bad(Cat("bad storage file name \"", relative_path, "\""));
  }
  absl::StatusOr<std::shared_ptr<const common::MappedFile>> file =
      common::MappedFile::Open(JoinPath(dir_, relative_path));
  if (!file.ok()) return Bad(Cat("missing storage file ", relative_path));
  files_.emplace(relative_path, *file);
  return file;
}

absl::StatusOr<Checkpoint> DcpReader::ReadChunk(const std::string& fqn, const ChunkInfo& chunk) {
  auto it = storage_.find({fqn, chunk.offsets});
  if (it == storage_.end()) {
    return Bad(Cat(fqn, ": no storage entry for the chunk at ", Dims(chunk.offsets)));
  }
  const StorageInfo& info = it->second;
  absl::StatusOr<std::shared_ptr<const common::MappedFile>> file = File(info.relative_path);
  if (!file.ok()) return file.status();
  std::string_view data = (*file)->data();
  if (info.offset > data.size() || info.length > data.size() - info.offset) {
    return Bad(Cat(fqn, ": chunk at [", info.offset, ", +", info.length, ") lies past the end of ",
                   info.relative_path));
  }
  std::string_view bytes = data.substr(info.offset, info.length);
  if (!LooksLikeZip(bytes)) {
    return Bad(Cat(fqn, ": chunk in ", info.relative_path, " at ", info.offset,
                   " is not a torch.save archive"));
  }
  absl::StatusOr<ZipReader> zip = ZipReader::Open(bytes, ZipLimitsFrom(options_));
  if (!zip.ok()) return Bad(Cat(fqn, ": ", zip.status().message()));
  absl::StatusOr<Checkpoint> part = ReadTorchZip(*file, *zip, options_);
  if (!part.ok()) return Bad(Cat(fqn, ": ", part.status().message()));
  if (part->root == nullptr || part->root->kind != Kind::kTensor) {
    return Bad(Cat(fqn, ": chunk in ", info.relative_path, " holds no tensor"));
  }
  if (part->root->tensor.shape != chunk.sizes) {
    return Bad(Cat(fqn, ": chunk at ", Dims(chunk.offsets), " has shape ",
                   Dims(part->root->tensor.shape), ", metadata says ", Dims(chunk.sizes)));
  }
  return part;
}

absl::Status DcpReader::ReadTensor(const std::string& fqn, const Value* meta) {
  std::vector<int64_t> size;
  if (!IntList(Field(meta, "size"), &size)) return Bad(Cat(fqn, ": tensor metadata has no size"));
  const Value* chunk_list = Field(meta, "chunks");
  if (chunk_list == nullptr || chunk_list->kind != Kind::kList) {
    return Bad(Cat(fqn, ": tensor metadata has no chunks"));
  }
  if (chunk_list->items.size() > kMaxDcpChunksPerTensor) {
    return Bad(Cat(fqn, ": more than ", kMaxDcpChunksPerTensor, " chunks"));
  }
  std::vector<ChunkInfo> chunks;
  for (const Value* c : chunk_list->items) {
    ChunkInfo info;
    if (ClassOf(c) != "ChunkStorageMetadata" || !IntList(Field(c, "offsets"), &info.offsets) ||
        !IntList(Field(c, "sizes"), &info.sizes)) {
      return Bad(Cat(fqn, ": bad chunk metadata"));
    }
    chunks.push_back(std::move(info));
  }
  if (chunks.empty()) return Bad(Cat(fqn, ": no chunks"));
  if (absl::Status s = CheckCover(fqn, size, chunks); !s.ok()) return s;

  // The dtype the metadata records, when it is readable (dict state in
  // torch >= 2, a (dtype, layout, ...) tuple in 1.13).
  std::optional<DType> dtype;
  if (const Value* props = Field(meta, "properties"); props != nullptr && props->state) {
    const Value* d = props->state->kind == Kind::kDict ? props->state->Get("dtype")
                     : props->state->kind == Kind::kTuple && !props->state->items.empty()
                         ? props->state->items[0]
                         : nullptr;
    if (d != nullptr && d->kind == Kind::kDtype) dtype = d->dtype;
  }

  if (chunks.size() == 1) {
    absl::StatusOr<Checkpoint> part = ReadChunk(fqn, chunks[0]);
    if (!part.ok()) return part.status();
    if (dtype.has_value() && part->root->tensor.dtype != *dtype) {
      return Bad(Cat(fqn, ": chunk dtype ", DTypeName(part->root->tensor.dtype),
                     " differs from the metadata's ", DTypeName(*dtype)));
    }
    std::vector<NamedTensor> one = {{fqn, &part->root->tensor}};
    const std::string origin = storage_[{fqn, chunks[0].offsets}].relative_path;
    return builder_.AddPart(*std::move(part), one, origin);
  }

  // Stitch: one buffer of the whole tensor, chunks copied in by offsets.
  std::string buffer;
  DType have = DType::kF32;
  for (size_t i = 0; i < chunks.size(); ++i) {
    absl::StatusOr<Checkpoint> part = ReadChunk(fqn, chunks[i]);
    if (!part.ok()) return part.status();
    const TensorRecord& rec = part->root->tensor;
    if (i == 0) {
      have = rec.dtype;
      if (dtype.has_value() && have != *dtype) {
        return Bad(Cat(fqn, ": chunk dtype ", DTypeName(have), " differs from the metadata's ",
                       DTypeName(*dtype)));
      }
      // CheckCover bounded numel by the chunks, each of which the reader
      // found backed by file bytes: the buffer is no larger than the input.
      buffer.assign(static_cast<size_t>(Numel(size)) * ItemSize(have), '\0');
    } else if (rec.dtype != have) {
      return Bad(Cat(fqn, ": chunks of different dtypes (", DTypeName(have), ", ",
                     DTypeName(rec.dtype), ")"));
    }
    std::string_view src = part->TensorStorageBytes(rec);
    if (src.empty() && rec.numel() > 0) return Bad(Cat(fqn, ": chunk bytes missing"));
    CopyStridedInto(rec, src, chunks[i].offsets, size, buffer.data());
    builder_.AddGlobals(*part);
  }
  return builder_.AddAssembled(fqn, have, size, buffer, "stitched chunks");
}

absl::StatusOr<Checkpoint> DcpReader::Read() {
  absl::StatusOr<std::shared_ptr<const common::MappedFile>> meta_file =
      common::MappedFile::Open(JoinPath(dir_, ".metadata"));
  if (!meta_file.ok()) return meta_file.status();
  std::string_view bytes = (*meta_file)->data();
  if (bytes.size() > options_.max_pickle_bytes) return Bad(".metadata is too large");

  Checkpoint meta;
  std::vector<std::string> opaque;
  PickleContext ctx;
  ctx.arena = meta.arena.get();
  ctx.limits = PickleLimitsFrom(options_);
  ctx.opaque_globals = &opaque;
  ctx.unsafe_globals = &meta.unsafe_globals;
  absl::StatusOr<Value*> root = Unpickle(bytes, ctx);
  if (!root.ok()) return Bad(Cat(".metadata: ", root.status().message()));
  for (std::string& g : opaque) {
    if (!IsDataGlobal(g)) meta.opaque_globals.push_back(std::move(g));
  }
  if (meta.unsafe()) {
    // Nothing in it is interpreted further; callers reject it.
    meta.file = *meta_file;
    meta.root = *root;
    meta.metadata.push_back("set_layout=dcp");
    return meta;
  }
  builder_.AddGlobals(meta);
  if (ClassOf(*root) != "Metadata") {
    return Bad(Cat(".metadata holds ", DebugString(*root, 1), ", not a Metadata"));
  }
  const Value* sd_meta = Field(*root, "state_dict_metadata");
  const Value* storage_data = Field(*root, "storage_data");
  if (sd_meta == nullptr || sd_meta->kind != Kind::kDict) {
    return Bad(".metadata has no state_dict_metadata");
  }
  if (storage_data == nullptr || storage_data->kind != Kind::kDict) {
    return Bad(".metadata has no storage_data (not written by FileSystemWriter?)");
  }
  for (size_t k = 0; k + 1 < storage_data->items.size(); k += 2) {
    const Value* index = storage_data->items[k];
    const Value* info = storage_data->items[k + 1];
    const Value* fqn = Field(index, "fqn");
    std::vector<int64_t> offsets;
    const Value* off = Field(index, "offset");
    if (ClassOf(index) != "MetadataIndex" || fqn == nullptr || !fqn->is_string() ||
        (off != nullptr && off->kind != Kind::kNone && !IntList(off, &offsets))) {
      return Bad(Cat("bad storage_data key ", DebugString(index, 2)));
    }
    const Value* path = Field(info, "relative_path");
    int64_t offset;
    int64_t length;
    if (ClassOf(info) != "_StorageInfo" || path == nullptr || !path->is_string() ||
        !ValueToInt(Field(info, "offset"), &offset) ||
        !ValueToInt(Field(info, "length"), &length) || offset < 0 || length < 0) {
      return Bad(Cat("bad storage_data entry for ", fqn->str));
    }
    StorageInfo s{path->str, static_cast<uint64_t>(offset), static_cast<uint64_t>(length)};
    if (!storage_.emplace(ChunkKey{fqn->str, offsets}, std::move(s)).second) {
      return Bad(
          Cat("storage_data names the chunk of ", fqn->str, " at ", Dims(offsets), " twice"));
    }
  }
  int64_t bytes_entries = 0;
  for (size_t k = 0; k + 1 < sd_meta->items.size(); k += 2) {
    const Value* key = sd_meta->items[k];
    const Value* value = sd_meta->items[k + 1];
    if (key == nullptr || !key->is_string()) return Bad("state_dict_metadata key is not a string");
    std::string_view cls = ClassOf(value);
    if (cls == "BytesStorageMetadata") {
      ++bytes_entries;
      continue;
    }
    if (cls != "TensorStorageMetadata") {
      return Bad(Cat(key->str, ": unknown storage metadata ", DebugString(value, 1)));
    }
    if (absl::Status s = ReadTensor(key->str, value); !s.ok()) return s;
  }
  builder_.AddMetadata(Cat("set_files=", files_.size()));
  if (bytes_entries > 0) builder_.AddMetadata(Cat("dcp_bytes_entries=", bytes_entries));
  return builder_.Finish();
}

}  // namespace

absl::StatusOr<Checkpoint> ReadDcp(const std::string& dir, const ReadOptions& options) {
  DcpReader reader(dir, options);
  return reader.Read();
}

}  // namespace weightgate::checkpoint
