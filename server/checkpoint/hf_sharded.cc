#include "server/checkpoint/hf_sharded.h"

#include <algorithm>
#include <map>
#include <memory>
#include <set>
#include <utility>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "common/str_util.h"
#include "server/checkpoint/checkpoint_set.h"
#include "server/checkpoint/json.h"
#include "server/checkpoint/set_builder.h"

namespace weightgate::checkpoint {

using common::Cat;
namespace {

absl::Status Invalid(std::string_view what) {
  return absl::InvalidArgumentError(std::string(what));
}

bool ParseDigits(std::string_view s, int* out) {
  if (s.size() < 5 || s.size() > 6) return false;
  int v = 0;
  for (char c : s) {
    if (c < '0' || c > '9') return false;
    v = v * 10 + (c - '0');
  }
  *out = v;
  return true;
}

// Reads one shard file and returns it with its tensors.
absl::StatusOr<Checkpoint> ReadShard(const std::string& path, const ReadOptions& options) {
  absl::StatusOr<std::shared_ptr<const common::MappedFile>> file = common::MappedFile::Open(path);
  if (!file.ok()) return file.status();
  absl::StatusOr<Checkpoint> part = ReadCheckpoint(*std::move(file), options);
  if (!part.ok()) {
    return absl::InvalidArgumentError(Cat("shard ", path, ": ", part.status().message()));
  }
  return part;
}

}  // namespace

bool ParseShardName(std::string_view name, ShardName* out) {
  size_t dot = name.rfind('.');
  if (dot == std::string_view::npos || dot == 0) return false;
  std::string_view base = name.substr(0, dot);
  size_t of = base.rfind("-of-");
  if (of == std::string_view::npos) return false;
  size_t dash = base.rfind('-', of == 0 ? 0 : of - 1);
  if (dash == std::string_view::npos || dash == 0) return false;
  ShardName s;
  if (!ParseDigits(base.substr(dash + 1, of - dash - 1), &s.k) ||
      !ParseDigits(base.substr(of + 4), &s.n) || s.k < 1 || s.k > s.n || s.n > kMaxShards) {
    return false;
  }
  s.stem = std::string(base.substr(0, dash));
  s.ext = std::string(name.substr(dot + 1));
  *out = std::move(s);
  return true;
}

absl::StatusOr<Checkpoint> ReadHfIndexed(const std::string& index_path,
                                         const ReadOptions& options) {
  size_t slash = index_path.rfind('/');
  std::string dir = slash == std::string::npos ? "." : index_path.substr(0, slash);
  std::string index_name = slash == std::string::npos ? index_path : index_path.substr(slash + 1);
  absl::StatusOr<std::shared_ptr<const common::MappedFile>> file =
      common::MappedFile::Open(index_path);
  if (!file.ok()) return file.status();
  if ((*file)->size() > kMaxShardIndexBytes) {
    return Invalid(
        Cat("shard index ", index_name, ": larger than ", kMaxShardIndexBytes, " bytes"));
  }
  JsonLimits limits;
  limits.max_bytes = kMaxShardIndexBytes;
  absl::StatusOr<JsonValue> json = ParseJson((*file)->data(), limits);
  if (!json.ok()) return Invalid(Cat("shard index ", index_name, ": ", json.status().message()));
  const JsonValue* weight_map = json->is_object() ? json->Find("weight_map") : nullptr;
  if (weight_map == nullptr || !weight_map->is_object()) {
    return Invalid(Cat("shard index ", index_name, ": no \"weight_map\" object"));
  }
  std::optional<uint64_t> total_size;
  if (const JsonValue* meta = json->Find("metadata"); meta != nullptr && meta->is_object()) {
    if (const JsonValue* t = meta->Find("total_size"); t != nullptr) {
      total_size = t->AsUint64();
      if (!total_size.has_value()) {
        // Some writers emit a float; accept an integral one.
        std::optional<double> d = t->AsDouble();
        if (!d.has_value() || *d < 0 || *d != static_cast<double>(static_cast<uint64_t>(*d))) {
          return Invalid(Cat("shard index ", index_name, ": bad metadata.total_size"));
        }
        total_size = static_cast<uint64_t>(*d);
      }
    }
  }

  // Shards in order of first mention; tensor names per shard.
  std::vector<std::string> shards;
  absl::flat_hash_map<std::string, size_t> shard_pos;
  std::vector<absl::flat_hash_set<std::string>> expected;
  absl::flat_hash_map<std::string, size_t> tensor_shard;
  for (const JsonMember& m : weight_map->members) {
    if (!m.value.is_string()) {
      return Invalid(Cat("shard index ", index_name, ": weight_map[", m.key, "] is not a string"));
    }
    const std::string& shard = m.value.text;
    if (!IsPlainFileName(shard)) {
      return Invalid(Cat("shard index ", index_name, ": bad shard file name \"", shard, "\""));
    }
    auto [it, inserted] = shard_pos.emplace(shard, shards.size());
    if (inserted) {
      if (shards.size() >= static_cast<size_t>(kMaxShards)) {
        return Invalid(Cat("shard index ", index_name, ": more than ", kMaxShards, " shards"));
      }
      shards.push_back(shard);
      expected.emplace_back();
    }
    expected[it->second].insert(m.key);
    tensor_shard[m.key] = it->second;
  }
  if (shards.empty()) return Invalid(Cat("shard index ", index_name, ": empty weight_map"));

  absl::StatusOr<std::vector<std::string>> listing = ListDirectory(dir);
  if (!listing.ok()) return listing.status();
  std::set<std::string> present(listing->begin(), listing->end());
  for (const std::string& shard : shards) {
    if (!present.contains(shard))
      return Invalid(Cat("missing shard ", shard, " named by ", index_name));
  }
  // A series named by the index must be complete, and nothing else of it
  // may lie beside it.
  std::set<std::tuple<std::string, int, std::string>> series;
  std::set<int> numbers;
  for (const std::string& shard : shards) {
    ShardName s;
    if (ParseShardName(shard, &s)) {
      series.emplace(s.stem, s.n, s.ext);
      numbers.insert(s.k);
    }
  }
  for (const std::string& name : *listing) {
    ShardName s;
    if (!ParseShardName(name, &s) || shard_pos.contains(name)) continue;
    if (series.contains({s.stem, s.n, s.ext})) {
      return Invalid(Cat("extra shard ", name, " not named by ", index_name));
    }
  }

  if (series.size() == 1) {
    const auto& [stem, n, ext] = *series.begin();
    for (int k = 1; k <= n; ++k) {
      if (!numbers.contains(k)) {
        return Invalid(Cat("missing shard ", k, " of ", n, " (", stem, "-*-of-*.", ext,
                           "): the index names no tensor in it"));
      }
    }
  }
  SetBuilder builder(index_name.find(".safetensors.") != std::string::npos ? "hf_safetensors_index"
                                                                           : "hf_index");
  uint64_t tensor_bytes = 0;
  uint64_t storage_bytes = 0;
  for (size_t i = 0; i < shards.size(); ++i) {
    absl::StatusOr<Checkpoint> part = ReadShard(JoinPath(dir, shards[i]), options);
    if (!part.ok()) return part.status();
    std::vector<NamedTensor> tensors = FlattenTensors(part->root);
    absl::flat_hash_set<std::string> seen;
    absl::flat_hash_set<int> storages;
    for (const NamedTensor& t : tensors) {
      if (!expected[i].contains(t.name)) {
        auto where = tensor_shard.find(t.name);
        return Invalid(Cat("shard ", shards[i], " holds tensor ", t.name, " that ", index_name,
                           where == tensor_shard.end() ? std::string(" does not name")
                                                       : Cat(" maps to ", shards[where->second])));
      }
      seen.insert(t.name);
      tensor_bytes += t.tensor->nbytes();
      if (t.tensor->storage_index >= 0 && storages.insert(t.tensor->storage_index).second) {
        storage_bytes += part->storages[static_cast<size_t>(t.tensor->storage_index)].nbytes;
      }
    }
    for (const std::string& name : expected[i]) {
      if (!seen.contains(name)) {
        return Invalid(Cat("tensor ", name, " named by ", index_name, " is absent from its shard ",
                           shards[i]));
      }
    }
    if (absl::Status s = builder.AddPart(*std::move(part), tensors, shards[i]); !s.ok()) return s;
  }
  if (total_size.has_value() && *total_size != tensor_bytes && *total_size != storage_bytes) {
    return Invalid(Cat(index_name, ": metadata.total_size is ", *total_size,
                       " bytes but the shards hold ", tensor_bytes));
  }
  builder.AddMetadata(Cat("set_files=", shards.size()));
  builder.AddMetadata(Cat("set_index=", index_name));
  return builder.Finish();
}

absl::StatusOr<Checkpoint> ReadHfShardSeries(const std::string& dir,
                                             const std::vector<std::string>& names,
                                             const ReadOptions& options) {
  std::map<int, std::string> by_k;
  std::optional<std::tuple<std::string, int, std::string>> series;
  for (const std::string& name : names) {
    ShardName s;
    if (!ParseShardName(name, &s)) return Invalid(Cat("not a shard file name: ", name));
    std::tuple<std::string, int, std::string> key{s.stem, s.n, s.ext};
    if (series.has_value() && *series != key) {
      return Invalid(Cat("shards of different series: ", by_k.begin()->second, " and ", name));
    }
    series = key;
    if (!by_k.emplace(s.k, name).second) return Invalid(Cat("shard ", s.k, " appears twice"));
  }
  if (!series.has_value()) return Invalid("no shard files");
  const auto& [stem, n, ext] = *series;
  for (int k = 1; k <= n; ++k) {
    if (!by_k.contains(k)) {
      return Invalid(Cat("missing shard ", k, " of ", n, " (", stem, "-*-of-*.", ext, ")"));
    }
  }
  SetBuilder builder("hf_shards");
  for (const auto& [k, name] : by_k) {
    absl::StatusOr<Checkpoint> part = ReadShard(JoinPath(dir, name), options);
    if (!part.ok()) return part.status();
    std::vector<NamedTensor> tensors = FlattenTensors(part->root);
    if (absl::Status s = builder.AddPart(*std::move(part), tensors, name); !s.ok()) return s;
  }
  builder.AddMetadata(Cat("set_files=", n));
  return builder.Finish();
}

}  // namespace weightgate::checkpoint
