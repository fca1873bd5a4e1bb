#include "server/checkpoint/torch_reader.h"

#include <algorithm>
#include <functional>
#include <string>
#include <utility>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "common/str_util.h"

namespace weightgate::checkpoint {

using common::AbslView;
using common::Cat;
using common::StdView;

namespace {

using Kind = Value::Kind;

// Little-endian bytes of 0x1950a86a20f9469cfc6c, the legacy magic number.
constexpr std::string_view kLegacyMagic("\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19", 10);
constexpr std::string_view kLegacyMagicDecimal = "119547037146038801333356";
constexpr int64_t kLegacyProtocolVersion = 1001;
// Small records (version, byteorder) are read whole; cap them.
constexpr uint64_t kMaxRecordBytes = 64;
// Storage keys are short decimal or hex strings.
constexpr size_t kMaxStorageKeyLength = 256;

absl::Status Invalid(std::string_view reason) {
  return absl::InvalidArgumentError(AbslView(reason));
}

// ('storage', StorageClass, key, location, numel[, view_metadata]) -> parts.
struct StorageId {
  DType dtype;
  std::string_view storage_class;
  std::string_view key;
  int64_t numel;
  const Value* view_metadata = nullptr;
};

absl::StatusOr<StorageId> ParseStorageId(const Value& pid, std::string_view format) {
  if (pid.kind != Kind::kTuple || pid.items.size() < 5 || pid.items[0]->kind != Kind::kString ||
      pid.items[0]->str != "storage") {
    return Invalid(Cat(format, ": persistent id is not a storage"));
  }
  const Value* cls = pid.items[1];
  if (cls->kind != Kind::kGlobal) {
    return Invalid(Cat(format, ": storage type is not a class"));
  }
  std::string_view cls_name = std::string_view(cls->str).substr(cls->str.rfind('.') + 1);
  std::string_view cls_module =
      std::string_view(cls->str).substr(0, cls->str.size() - cls_name.size());
  if ((cls_module != "torch." && cls_module != "torch.cuda.") ||
      (!DTypeFromTorchStorage(cls_name).has_value() && cls_name != "UntypedStorage")) {
    if (absl::StrContains(cls->str, "QInt") || absl::StrContains(cls->str, "QUInt")) {
      return Invalid(Cat(format, ": quantized tensors are not supported"));
    }
    return Invalid(Cat(format, ": unsupported storage type ", cls->str.substr(0, 128)));
  }
  StorageId id;
  id.dtype = cls->dtype;
  id.storage_class = cls->str;
  if (pid.items[2]->kind != Kind::kString || pid.items[2]->str.empty() ||
      pid.items[2]->str.size() > kMaxStorageKeyLength) {
    return Invalid(Cat(format, ": bad storage key"));
  }
  id.key = pid.items[2]->str;
  if (!ValueToInt(pid.items[4], &id.numel) || id.numel < 0) {
    return Invalid(Cat(format, ": bad storage size"));
  }
  if (pid.items.size() > 5) id.view_metadata = pid.items[5];
  return id;
}

absl::StatusOr<uint64_t> StorageBytesFor(const StorageId& id, std::string_view format) {
  uint64_t nbytes;
  if (__builtin_mul_overflow(static_cast<uint64_t>(id.numel), ItemSize(id.dtype), &nbytes)) {
    return Invalid(Cat(format, ": storage '", id.key, "' size overflows"));
  }
  return nbytes;
}

// The storages a pickle names by key. The first mention creates the record
// (`locate` says where its bytes are); later mentions must agree on dtype and
// size, so tied weights and views share one record.
class StorageTable final {
 public:
  StorageTable(Checkpoint& ckpt, std::string_view format) : ckpt_(ckpt), format_(format) {}

  absl::StatusOr<Value*> Resolve(const StorageId& id,
                                 const std::function<absl::Status(StorageRecord&)>& locate) {
    absl::StatusOr<uint64_t> nbytes = StorageBytesFor(id, format_);
    if (!nbytes.ok()) return nbytes.status();
    auto it = by_key_.find(AbslView(id.key));
    int index;
    if (it != by_key_.end()) {
      index = it->second;
      const StorageRecord& r = ckpt_.storages[static_cast<size_t>(index)];
      if (r.dtype != id.dtype || r.nbytes != *nbytes) {
        return Invalid(Cat(format_, ": storage '", id.key, "' named with two types or sizes"));
      }
    } else {
      StorageRecord r;
      r.dtype = id.dtype;
      r.key = std::string(id.key);
      r.nbytes = *nbytes;
      if (absl::Status s = locate(r); !s.ok()) return s;
      index = static_cast<int>(ckpt_.storages.size());
      ckpt_.storages.push_back(std::move(r));
      by_key_.emplace(std::string(id.key), index);
    }
    Value* v = ckpt_.arena->New(Kind::kStorage);
    v->storage_index = index;
    return v;
  }

  // Index of the storage named `key`, or -1.
  int Find(std::string_view key) const {
    auto it = by_key_.find(AbslView(key));
    return it == by_key_.end() ? -1 : it->second;
  }

 private:
  Checkpoint& ckpt_;
  const std::string_view format_;
  absl::flat_hash_map<std::string, int> by_key_;
};

}  // namespace

PickleLimits PickleLimitsFrom(const ReadOptions& options) {
  PickleLimits limits;
  limits.max_stack_depth = options.max_stack_depth;
  limits.max_nesting = options.max_nesting;
  limits.max_memo_entries = options.max_memo_entries;
  limits.max_values = options.max_values;
  limits.budget_fixed_bytes = options.budget_fixed_bytes;
  limits.budget_per_input_byte = options.budget_per_input_byte;
  return limits;
}

ZipLimits ZipLimitsFrom(const ReadOptions& options) {
  ZipLimits limits;
  limits.max_entries = options.max_zip_entries;
  limits.max_compression_ratio = options.max_compression_ratio;
  limits.max_total_inflated = options.max_inflated_bytes;
  limits.inflated_fixed_bytes = options.inflated_fixed_bytes;
  limits.inflated_per_archive_byte = options.inflated_per_archive_byte;
  return limits;
}

bool IsTorchZip(const ZipReader& zip, std::string* prefix) {
  if (zip.entries().empty()) return false;
  const std::string& first = zip.entries().front().name;
  size_t slash = first.find('/');
  if (slash == std::string::npos || slash == 0) return false;
  std::string p = first.substr(0, slash);
  if (zip.Find(Cat(p, "/data.pkl")) == nullptr) return false;
  *prefix = std::move(p);
  return true;
}

bool IsTorchScript(const ZipReader& zip, std::string_view prefix) {
  if (zip.Find(Cat(prefix, "/constants.pkl")) == nullptr) return false;
  std::string code = Cat(prefix, "/code/");
  for (const ZipEntry& e : zip.entries()) {
    if (absl::StartsWith(e.name, code)) return true;
  }
  return false;
}

absl::StatusOr<Checkpoint> ReadTorchZip(std::shared_ptr<const common::MappedFile> file,
                                        const ZipReader& zip, const ReadOptions& options) {
  std::string prefix;
  if (!IsTorchZip(zip, &prefix)) {
    return Invalid("not a checkpoint: zip archive without <prefix>/data.pkl");
  }
  Checkpoint ckpt;
  ckpt.file = file;
  ckpt.archive_prefix = prefix;
  ckpt.format = IsTorchScript(zip, prefix) ? Format::kTorchScript : Format::kTorchZip;
  const std::string_view fmt = ckpt.format == Format::kTorchScript ? "torchscript" : "torch zip";
  const std::string_view base(file->data());

  for (std::string_view record : {"byteorder", "version"}) {
    const ZipEntry* e = zip.Find(Cat(prefix, "/", record));
    if (e == nullptr) continue;
    if (e->size > kMaxRecordBytes) return Invalid(Cat(fmt, ": ", record, " record too long"));
    std::string scratch;
    absl::StatusOr<std::string_view> bytes = zip.Read(*e, &scratch);
    if (!bytes.ok()) return bytes.status();
    std::string text(StdView(absl::StripAsciiWhitespace(AbslView(*bytes))));
    if (record == "byteorder" && text != "little") {
      if (text == "big") return Invalid(Cat(fmt, ": big-endian checkpoints are not supported"));
      return Invalid(Cat(fmt, ": bad byteorder record"));
    }
    ckpt.metadata.push_back(Cat(record, "=", text));
  }

  const ZipEntry* pkl = zip.Find(Cat(prefix, "/data.pkl"));
  if (pkl->size > options.max_pickle_bytes) return Invalid(Cat(fmt, ": data.pkl too large"));
  // The budget follows the bytes data.pkl occupies in the file: a deflated
  // pickle does not earn a larger one by inflating.
  ReadBudget budget(ReadBudget::LimitFor(options.budget_fixed_bytes, options.budget_per_input_byte,
                                         pkl->compressed_size));
  if (pkl->method != 0) {
    if (absl::Status s = budget.Charge(pkl->size, "inflating data.pkl"); !s.ok()) {
      return WithPrefix(s, Cat(fmt, ": "));
    }
  }
  std::string pkl_scratch;
  absl::StatusOr<std::string_view> pickle = zip.Read(*pkl, &pkl_scratch);
  if (!pickle.ok()) return pickle.status();

  StorageTable storages(ckpt, fmt);
  PickleContext ctx;
  ctx.arena = ckpt.arena.get();
  ctx.limits = PickleLimitsFrom(options);
  ctx.budget = &budget;
  ctx.storages = &ckpt.storages;
  ctx.opaque_globals = &ckpt.opaque_globals;
  ctx.unsafe_globals = &ckpt.unsafe_globals;
  ctx.called_globals = &ckpt.called_globals;
  ctx.weights_only_blockers = &ckpt.weights_only_blockers;
  ctx.persistent_load = [&](const Value& pid) -> absl::StatusOr<Value*> {
    absl::StatusOr<StorageId> id = ParseStorageId(pid, fmt);
    if (!id.ok()) return id.status();
    return storages.Resolve(*id, [&](StorageRecord& r) -> absl::Status {
      const ZipEntry* e = zip.Find(Cat(prefix, "/data/", id->key));
      if (e == nullptr) return Invalid(Cat(fmt, ": missing storage data/", id->key));
      if (r.nbytes > e->size) {
        return Invalid(
            Cat(fmt, ": storage '", id->key, "' needs ", r.nbytes, " bytes, entry has ", e->size));
      }
      if (e->method == 0) {
        std::string unused;
        absl::StatusOr<std::string_view> bytes = zip.Read(*e, &unused);
        if (!bytes.ok()) return bytes.status();
        r.file_offset = static_cast<uint64_t>(bytes->data() - base.data());
      } else {
        if (absl::Status s = budget.Charge(e->size, Cat("inflating storage data/", id->key));
            !s.ok()) {
          return WithPrefix(s, Cat(fmt, ": "));
        }
        std::string inflated;
        absl::StatusOr<std::string_view> bytes = zip.Read(*e, &inflated);
        if (!bytes.ok()) return bytes.status();
        inflated.resize(bytes->size());
        r.inflated_index = static_cast<int>(ckpt.inflated.size());
        ckpt.inflated.push_back(std::move(inflated));
      }
      return absl::OkStatus();
    });
  };
  absl::StatusOr<Value*> root = Unpickle(*pickle, ctx);
  if (!root.ok()) return root.status();
  ckpt.root = *root;
  ckpt.budget_limit = budget.limit();
  ckpt.budget_used = budget.used();
  return ckpt;
}

bool LooksLikeTorchLegacy(std::string_view data) {
  // Protocol >= 2: PROTO n [FRAME len] LONG1 10 <magic>.
  if (data.size() >= 2 && static_cast<unsigned char>(data[0]) == 0x80) {
    size_t off = 2;
    if (data.size() > off && static_cast<unsigned char>(data[off]) == 0x95) off += 9;
    if (data.size() >= off + 2 + kLegacyMagic.size() &&
        static_cast<unsigned char>(data[off]) == 0x8a && data[off + 1] == 10 &&
        data.substr(off + 2, kLegacyMagic.size()) == kLegacyMagic) {
      return true;
    }
    return false;
  }
  // Protocols 0 and 1: LONG "119547037146038801333356L\n".
  return data.size() > 1 && data[0] == 'L' &&
         data.substr(1, kLegacyMagicDecimal.size()) == kLegacyMagicDecimal;
}

absl::StatusOr<Checkpoint> ReadTorchLegacy(std::shared_ptr<const common::MappedFile> file,
                                           const ReadOptions& options) {
  Checkpoint ckpt;
  ckpt.file = file;
  ckpt.format = Format::kTorchLegacy;
  std::string_view data = file->data();
  size_t off = 0;

  // The pickles come first and their size is known only once read: the
  // budget starts at the fixed allowance and grows with the bytes consumed,
  // so storage bytes after the pickles (or junk) earn nothing.
  ReadBudget budget(options.budget_fixed_bytes);
  PickleContext ctx;
  ctx.arena = ckpt.arena.get();
  ctx.limits = PickleLimitsFrom(options);
  ctx.budget = &budget;
  ctx.budget_per_consumed_byte = options.budget_per_input_byte;
  ctx.storages = &ckpt.storages;
  ctx.opaque_globals = &ckpt.opaque_globals;
  ctx.unsafe_globals = &ckpt.unsafe_globals;
  ctx.called_globals = &ckpt.called_globals;
  ctx.weights_only_blockers = &ckpt.weights_only_blockers;

  auto next = [&](std::string_view what) -> absl::StatusOr<Value*> {
    std::string_view rest = data.substr(off);
    if (rest.size() > options.max_pickle_bytes) rest = rest.substr(0, options.max_pickle_bytes);
    size_t used = 0;
    absl::StatusOr<Value*> v = Unpickle(rest, ctx, &used);
    if (!v.ok()) return WithPrefix(v.status(), Cat("legacy ", what, ": "));
    off += used;
    return v;
  };

  absl::StatusOr<Value*> magic = next("magic");
  if (!magic.ok()) return magic.status();
  if ((*magic)->kind != Kind::kBigInt || (*magic)->str != kLegacyMagic) {
    return Invalid("torch legacy: bad magic number");
  }
  absl::StatusOr<Value*> version = next("protocol version");
  if (!version.ok()) return version.status();
  int64_t v;
  if (!ValueToInt(*version, &v) || v != kLegacyProtocolVersion) {
    return Invalid("torch legacy: unsupported protocol version");
  }
  ckpt.metadata.push_back(Cat("protocol_version=", v));
  absl::StatusOr<Value*> sys_info = next("sys_info");
  if (!sys_info.ok()) return sys_info.status();
  if ((*sys_info)->kind != Kind::kDict) return Invalid("torch legacy: sys_info is not a dict");
  if (const Value* le = (*sys_info)->Get("little_endian");
      le != nullptr && le->kind == Kind::kBool && !le->b) {
    return Invalid("torch legacy: big-endian checkpoints are not supported");
  }

  StorageTable storages(ckpt, "torch legacy");
  ctx.persistent_load = [&](const Value& pid) -> absl::StatusOr<Value*> {
    if (pid.kind == Kind::kTuple && !pid.items.empty() && pid.items[0]->kind == Kind::kString &&
        pid.items[0]->str == "module") {
      return ckpt.arena->New(Kind::kNone);  // saved module source: not needed
    }
    absl::StatusOr<StorageId> id = ParseStorageId(pid, "torch legacy");
    if (!id.ok()) return id.status();
    if (id->view_metadata != nullptr && id->view_metadata->kind != Kind::kNone) {
      return Invalid("torch legacy: storage views are not supported");
    }
    return storages.Resolve(*id, [&](StorageRecord& r) -> absl::Status {
      // The bytes follow the pickles; the extent is checked once they are found.
      if (r.nbytes > data.size()) {
        return Invalid(Cat("torch legacy: storage '", id->key, "' larger than the file"));
      }
      return absl::OkStatus();
    });
  };
  absl::StatusOr<Value*> root = next("object");
  if (!root.ok()) return root.status();
  ckpt.root = *root;
  ctx.persistent_load = nullptr;

  absl::StatusOr<Value*> keys = next("storage keys");
  if (!keys.ok()) return keys.status();
  if ((*keys)->kind != Kind::kList) return Invalid("torch legacy: storage keys are not a list");
  std::vector<bool> placed(ckpt.storages.size(), false);
  for (const Value* key : (*keys)->items) {
    if (key->kind != Kind::kString) return Invalid("torch legacy: storage key is not a string");
    int found = storages.Find(key->str);
    if (found < 0) {
      return Invalid(Cat("torch legacy: storage '", key->str.substr(0, 64), "' never used"));
    }
    size_t index = static_cast<size_t>(found);
    if (placed[index]) return Invalid(Cat("torch legacy: storage '", key->str, "' twice"));
    StorageRecord& r = ckpt.storages[index];
    if (8 > data.size() - off) {
      return Invalid(Cat("torch legacy: truncated before storage '", key->str, "'"));
    }
    uint64_t count = 0;
    for (int k = 0; k < 8; ++k) {
      count |= uint64_t{static_cast<unsigned char>(data[off + static_cast<size_t>(k)])} << (8 * k);
    }
    off += 8;
    uint64_t nbytes;
    if (__builtin_mul_overflow(count, ItemSize(r.dtype), &nbytes) || nbytes != r.nbytes) {
      return Invalid(Cat("torch legacy: storage '", key->str, "' has ", count,
                         " elements, its tensors declared ", r.nbytes / ItemSize(r.dtype)));
    }
    if (nbytes > data.size() - off) {
      return Invalid(Cat("torch legacy: storage '", key->str, "' truncated"));
    }
    r.file_offset = off;
    off += static_cast<size_t>(nbytes);
    placed[index] = true;
  }
  for (size_t k = 0; k < placed.size(); ++k) {
    if (!placed[k]) {
      return Invalid(Cat("torch legacy: storage '", ckpt.storages[k].key, "' has no data"));
    }
  }
  ckpt.budget_limit = budget.limit();
  ckpt.budget_used = budget.used();
  return ckpt;
}

}  // namespace weightgate::checkpoint
