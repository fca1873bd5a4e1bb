#include "server/statedict/candidates.h"

#include <algorithm>
#include <utility>

#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "server/statedict/matcher.h"

namespace weightgate::statedict {
namespace {

using checkpoint::NamedTensor;
using checkpoint::Value;
namespace v1 = weightgate::v1;

// Leading attribute components tried as strips per (container, wrapper
// mask), most frequent first.
constexpr size_t kMaxStripCandidates = 4;

bool Better(const Scored& a, const Scored& b) {
  if (a.matched != b.matched) return a.matched > b.matched;
  if (a.leftover != b.leftover) return a.leftover < b.leftover;
  if (a.transform.ops() != b.transform.ops()) return a.transform.ops() < b.transform.ops();
  if (a.container != b.container) return a.container < b.container;
  return a.description < b.description;
}

bool IsWrapper(absl::string_view part) {
  for (absl::string_view w : kWrapperComponents) {
    if (part == w) return true;
  }
  return false;
}

// Bits of kWrapperComponents that occur as a component of `name`.
uint32_t WrappersIn(absl::string_view name) {
  uint32_t present = 0;
  for (absl::string_view part : absl::StrSplit(name, '.')) {
    for (size_t w = 0; w < kWrapperComponents.size(); ++w) {
      if (part == kWrapperComponents[w]) present |= 1u << w;
    }
  }
  return present;
}

// The spec seen through an added root: lookups of "ROOT." + key without
// building the string.
class SpecLookup final {
 public:
  explicit SpecLookup(const SpecIndex& spec) : spec_(spec) {
    // The spec's own common root: the first component every spec key shares.
    for (size_t j = 0; j < spec.tensors.size(); ++j) {
      absl::string_view name = spec.tensors[j].name;
      absl::string_view first = FirstComponent(name);
      if (first.size() == name.size() || (j > 0 && first != root_)) {
        root_.clear();
        break;
      }
      root_ = std::string(first);
    }
    if (root_.empty()) return;
    for (size_t j = 0; j < spec.tensors.size(); ++j) {
      under_root_.emplace(spec.tensors[j].name.substr(root_.size() + 1), static_cast<int>(j));
    }
  }

  const std::string& root() const { return root_; }

  // Spec position of `key` (with `root()` prepended when `add`), or -1.
  int Find(absl::string_view key, bool add) const {
    const absl::flat_hash_map<std::string, int>& index = add ? under_root_ : spec_.index;
    auto it = index.find(key);
    return it == index.end() ? -1 : it->second;
  }

 private:
  const SpecIndex& spec_;
  std::string root_;
  absl::flat_hash_map<std::string, int> under_root_;
};

// A container's keys with one wrapper mask applied.
struct MaskedKeys {
  uint32_t mask = 0;
  std::vector<std::string> storage;  // only when mask != 0
  std::vector<absl::string_view> keys;
};

MaskedKeys ApplyMask(const Container& c, uint32_t mask) {
  MaskedKeys out;
  out.mask = mask;
  out.keys.reserve(c.tensors.size());
  if (mask == 0) {
    for (const NamedTensor& nt : c.tensors) out.keys.emplace_back(nt.name);
    return out;
  }
  Transform t;
  t.wrapper_mask = mask;
  out.storage.reserve(c.tensors.size());
  for (const NamedTensor& nt : c.tensors) out.storage.push_back(t.Apply(nt.name));
  for (const std::string& k : out.storage) out.keys.emplace_back(k);
  return out;
}

// Strips worth trying on `keys`: none, then the most frequent leading
// components (ties by name), leaving out those the spec's keys start with
// (stripping them never helps) and wrappers the mask already removed.
std::vector<std::string> StripsFor(const MaskedKeys& keys,
                                   const absl::flat_hash_set<std::string>& spec_first) {
  absl::flat_hash_map<absl::string_view, int64_t> counts;
  for (absl::string_view k : keys.keys) {
    absl::string_view first = FirstComponent(k);
    if (first.size() == k.size()) continue;
    ++counts[first];
  }
  std::vector<std::pair<absl::string_view, int64_t>> sorted;
  for (const auto& [first, n] : counts) {
    if (spec_first.contains(first)) continue;
    bool removed = false;
    for (size_t w = 0; w < kWrapperComponents.size(); ++w) {
      if ((keys.mask & (1u << w)) && first == kWrapperComponents[w]) removed = true;
    }
    if (!removed) sorted.emplace_back(first, n);
  }
  std::sort(sorted.begin(), sorted.end(), [](const auto& a, const auto& b) {
    return a.second != b.second ? a.second > b.second : a.first < b.first;
  });
  std::vector<std::string> out = {""};
  for (size_t i = 0; i < sorted.size() && i < kMaxStripCandidates; ++i) {
    out.emplace_back(sorted[i].first);
  }
  return out;
}

class Search final {
 public:
  Search(const std::vector<Container>& containers, const SpecIndex& spec, Renamer& renamer,
         const MatchOptions& options)
      : containers_(containers), spec_(spec), renamer_(renamer), lookup_(spec), options_(options) {
    for (const SpecTensor& s : spec.tensors) {
      spec_first_.emplace(FirstComponent(s.name));
      spec_wrappers_ |= WrappersIn(s.name);
    }
  }

  // Every candidate of container `ci`.
  absl::Status ScoreContainer(size_t ci, bool prefixes) {
    const Container& c = containers_[ci];
    if (!prefixes) return ScoreMasked(ci, ApplyMask(c, 0), {""}, false);
    // Wrappers the checkpoint has and the spec does not are removed
    // everywhere (FSDP puts them at every level); keeping them is tried too,
    // so a real attribute that shares a wrapper's name can survive.
    uint32_t present = 0;
    for (const NamedTensor& nt : c.tensors) present |= WrappersIn(nt.name);
    const uint32_t full = present & ~spec_wrappers_;
    std::vector<uint32_t> masks = {full};
    if (full != 0) masks.push_back(0);
    for (uint32_t mask : masks) {
      MaskedKeys keys = ApplyMask(c, mask);
      if (absl::Status s = ScoreMasked(ci, keys, StripsFor(keys, spec_first_), true); !s.ok()) {
        return s;
      }
    }
    return absl::OkStatus();
  }

  std::vector<Scored>& scored() { return scored_; }

 private:
  absl::Status ScoreMasked(size_t ci, const MaskedKeys& keys,
                           const std::vector<std::string>& strips, bool prefixes) {
    std::vector<bool> adds = {false};
    if (prefixes && !lookup_.root().empty()) adds.push_back(true);
    for (const std::string& strip : strips) {
      for (bool add : adds) {
        if (add && strip == lookup_.root()) continue;
        Transform t;
        t.wrapper_mask = keys.mask;
        t.strip = strip;
        if (add) t.add = lookup_.root();
        if (absl::Status s = ScoreOne(ci, keys, std::move(t)); !s.ok()) return s;
      }
    }
    return absl::OkStatus();
  }

  absl::Status ScoreOne(size_t ci, const MaskedKeys& keys, Transform t) {
    if (options_.cancelled && options_.cancelled()) {
      return absl::CancelledError("validation cancelled");
    }
    work_ += keys.keys.size();
    if (work_ > options_.max_work) {
      return absl::ResourceExhaustedError(absl::StrCat(
          "matching needs more than ", options_.max_work, " key lookups (kMaxMatchWork)"));
    }
    const Container& c = containers_[ci];
    Scored s;
    s.container = ci;
    s.description = t.Describe();
    claimed_.assign(spec_.tensors.size(), 0);
    uint64_t h = 1469598103934665603ull ^ (static_cast<uint64_t>(ci) << 48);
    const bool identity = renamer_.identity();
    const bool add = !t.add.empty();
    std::string full;
    for (size_t i = 0; i < keys.keys.size(); ++i) {
      absl::string_view key = keys.keys[i];
      if (!t.strip.empty() && key.size() > t.strip.size() && key[t.strip.size()] == '.' &&
          key.substr(0, t.strip.size()) == t.strip) {
        key.remove_prefix(t.strip.size() + 1);
      }
      int j;
      if (identity) {
        j = lookup_.Find(key, add);
      } else {
        full = add ? absl::StrCat(t.add, ".", key) : std::string(key);
        j = lookup_.Find(renamer_.Rename(full).name, false);
      }
      if (j < 0) continue;
      h = (h ^ (i * 1000003u + static_cast<uint64_t>(j))) * 1099511628211ull;
      if (!claimed_[j] && c.tensors[i].tensor->shape == spec_.tensors[j].shape) {
        claimed_[j] = 1;
        ++s.matched;
      }
    }
    s.signature = h;
    // Keys left over include duplicates that lost to a key with the right shape.
    s.leftover = static_cast<int64_t>(c.tensors.size()) - s.matched;
    s.transform = std::move(t);
    scored_.push_back(std::move(s));
    return absl::OkStatus();
  }

  const std::vector<Container>& containers_;
  const SpecIndex& spec_;
  Renamer& renamer_;
  SpecLookup lookup_;
  const MatchOptions& options_;
  absl::flat_hash_set<std::string> spec_first_;
  uint32_t spec_wrappers_ = 0;
  uint64_t work_ = 0;
  std::vector<char> claimed_;
  std::vector<Scored> scored_;
};

}  // namespace

int Transform::ops() const {
  return __builtin_popcount(wrapper_mask) + (strip.empty() ? 0 : 1) + (add.empty() ? 0 : 1);
}

std::string Transform::Describe() const {
  std::vector<std::string> parts;
  for (size_t w = 0; w < kWrapperComponents.size(); ++w) {
    if (wrapper_mask & (1u << w))
      parts.push_back(absl::StrCat("strip '", kWrapperComponents[w], ".'"));
  }
  if (!strip.empty()) parts.push_back(absl::StrCat("strip '", strip, ".'"));
  if (!add.empty()) parts.push_back(absl::StrCat("add '", add, ".'"));
  return parts.empty() ? "none" : absl::StrJoin(parts, " + ");
}

std::string Transform::Apply(absl::string_view key) const {
  std::string out;
  if (wrapper_mask == 0) {
    out = std::string(key);
  } else {
    for (absl::string_view part : absl::StrSplit(key, '.')) {
      bool drop = false;
      for (size_t w = 0; w < kWrapperComponents.size(); ++w) {
        if ((wrapper_mask & (1u << w)) && part == kWrapperComponents[w]) drop = true;
      }
      if (drop) continue;
      if (!out.empty()) out.push_back('.');
      out.append(part.data(), part.size());
    }
  }
  if (!strip.empty() && out.size() > strip.size() && out.compare(0, strip.size(), strip) == 0 &&
      out[strip.size()] == '.') {
    out.erase(0, strip.size() + 1);
  }
  if (!add.empty()) out = absl::StrCat(add, ".", out);
  return out;
}

absl::string_view FirstComponent(absl::string_view key) {
  size_t dot = key.find('.');
  return dot == absl::string_view::npos ? key : key.substr(0, dot);
}

const Value* DictGet(const Value* v, absl::string_view key) {
  if (v == nullptr || v->kind != Value::Kind::kDict) return nullptr;
  for (size_t i = 0; i + 1 < v->items.size(); i += 2) {
    const Value* k = v->items[i];
    if (k != nullptr && k->kind == Value::Kind::kString && k->str == key) return v->items[i + 1];
  }
  return nullptr;
}

absl::StatusOr<std::vector<Container>> FindContainers(const Value* root,
                                                      const v1::NormalizationPolicy& policy,
                                                      const MatchOptions& options) {
  std::vector<Container> out;
  absl::flat_hash_set<const Value*> seen;
  size_t keys = 0;
  uint64_t key_bytes = 0;
  absl::Status status;
  auto add = [&](std::string path, const Value* v) {
    if (v == nullptr || !status.ok() || !seen.insert(v).second) return;
    Container c{std::move(path), v, checkpoint::FlattenTensors(v)};
    keys += c.tensors.size();
    for (const NamedTensor& nt : c.tensors) key_bytes += nt.name.size();
    if (keys > options.max_keys) {
      status = absl::ResourceExhaustedError(absl::StrCat("the containers tried hold more than ",
                                                         options.max_keys,
                                                         " tensor keys (kMaxMatchKeys)"));
    } else if (key_bytes > options.max_key_bytes) {
      status = absl::ResourceExhaustedError(
          absl::StrCat("the containers tried hold more than ", options.max_key_bytes,
                       " bytes of tensor keys (kMaxMatchKeyBytes)"));
    } else if (!c.tensors.empty()) {
      out.push_back(std::move(c));
    }
  };
  if (!policy.container().empty() && policy.container() != "auto") {
    add(policy.container(), ResolveContainer(root, policy.container()));
  } else {
    add("", root);
    for (absl::string_view key : kContainerKeys) {
      const Value* v = DictGet(root, key);
      if (v == nullptr) continue;
      add(std::string(key), v);
      for (absl::string_view inner : kContainerKeys) {
        add(absl::StrCat(key, ".", inner), DictGet(v, inner));
      }
    }
  }
  if (!status.ok()) return status;
  return out;
}

absl::StatusOr<SearchOutcome> SearchCandidates(const std::vector<Container>& containers,
                                               const SpecIndex& spec,
                                               const v1::NormalizationPolicy& policy,
                                               Renamer& renamer, const MatchOptions& options) {
  Search search(containers, spec, renamer, options);
  const bool prefixes = policy.prefixes() != v1::NormalizationPolicy::PREFIX_NONE;
  for (size_t ci = 0; ci < containers.size(); ++ci) {
    if (absl::Status s = search.ScoreContainer(ci, prefixes); !s.ok()) return s;
  }
  std::vector<Scored>& scored = search.scored();
  std::stable_sort(scored.begin(), scored.end(), Better);
  SearchOutcome out;
  out.winner = scored.front();
  for (size_t i = 1; i < scored.size(); ++i) {
    if (scored[i].signature != out.winner.signature || scored[i].matched != out.winner.matched) {
      out.runner_up = scored[i];
      break;
    }
  }
  return out;
}

}  // namespace weightgate::statedict
