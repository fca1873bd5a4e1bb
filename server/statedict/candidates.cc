#include "server/statedict/candidates.h"

#include <algorithm>
#include <map>
#include <utility>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "server/statedict/matcher.h"

namespace weightgate::statedict {
namespace {

using checkpoint::NamedTensor;
using checkpoint::Value;
namespace v1 = weightgate::v1;

// Caps that keep the candidate search small on checkpoints with thousands of
// top-level names: only the most frequent first components are tried as
// attribute prefixes to strip or add.
constexpr size_t kMaxStripCandidates = 6;
constexpr size_t kMaxAddCandidates = 6;

bool Better(const Scored& a, const Scored& b) {
  if (a.matched != b.matched) return a.matched > b.matched;
  if (a.leftover != b.leftover) return a.leftover < b.leftover;
  if (a.transform.ops() != b.transform.ops()) return a.transform.ops() < b.transform.ops();
  if (a.container != b.container) return a.container < b.container;
  return a.description < b.description;
}

Scored Score(size_t ci, const Container& c, const Transform& t, Renamer& renamer,
             const SpecIndex& spec) {
  Scored s;
  s.container = ci;
  s.transform = t;
  s.description = t.Describe();
  std::vector<char> claimed(spec.tensors.size(), 0);
  uint64_t h = 1469598103934665603ull ^ (static_cast<uint64_t>(ci) << 48);
  const bool identity = renamer.identity();
  for (size_t i = 0; i < c.tensors.size(); ++i) {
    std::string prefixed = t.Apply(c.tensors[i].name);
    const std::string& name = identity ? prefixed : renamer.Rename(prefixed).name;
    auto it = spec.index.find(name);
    if (it == spec.index.end()) continue;
    int j = it->second;
    h = (h ^ (i * 1000003u + static_cast<uint64_t>(j))) * 1099511628211ull;
    if (!claimed[j] && c.tensors[i].tensor->shape == spec.tensors[j].shape) {
      claimed[j] = 1;
      ++s.matched;
    }
  }
  s.signature = h;
  // Keys left over include duplicates that lost to a key with the right shape.
  s.leftover = static_cast<int64_t>(c.tensors.size()) - s.matched;
  return s;
}

std::vector<std::string> TopFirstComponents(const std::vector<std::string>& names, size_t limit,
                                            const absl::flat_hash_set<std::string>& exclude) {
  std::map<std::string, int64_t> counts;
  for (const std::string& n : names) {
    if (n.find('.') == std::string::npos) continue;
    std::string first(FirstComponent(n));
    if (exclude.contains(first)) continue;
    ++counts[first];
  }
  std::vector<std::pair<std::string, int64_t>> sorted(counts.begin(), counts.end());
  std::stable_sort(sorted.begin(), sorted.end(),
                   [](const auto& a, const auto& b) { return a.second > b.second; });
  std::vector<std::string> out;
  for (size_t i = 0; i < sorted.size() && i < limit; ++i) out.push_back(sorted[i].first);
  return out;
}

// Every transform worth trying on container `c`.
std::vector<Transform> TransformsFor(const Container& c, const std::vector<std::string>& adds) {
  static const absl::flat_hash_set<std::string> wrapper_names(kWrapperComponents.begin(),
                                                              kWrapperComponents.end());
  uint32_t present = 0;
  for (const NamedTensor& nt : c.tensors) {
    for (absl::string_view part : absl::StrSplit(nt.name, '.')) {
      for (size_t w = 0; w < kWrapperComponents.size(); ++w) {
        if (part == kWrapperComponents[w]) present |= 1u << w;
      }
    }
  }
  std::vector<Transform> out;
  for (uint32_t mask = 0; mask <= present; ++mask) {
    if ((mask & ~present) != 0) continue;
    Transform base;
    base.wrapper_mask = mask;
    std::vector<std::string> stripped;
    stripped.reserve(c.tensors.size());
    for (const NamedTensor& nt : c.tensors) stripped.push_back(base.Apply(nt.name));
    std::vector<std::string> strips = {""};
    for (std::string& s : TopFirstComponents(stripped, kMaxStripCandidates, wrapper_names)) {
      strips.push_back(std::move(s));
    }
    for (const std::string& strip : strips) {
      for (const std::string& add : adds) {
        if (!strip.empty() && strip == add) continue;
        Transform t = base;
        t.strip = strip;
        t.add = add;
        out.push_back(std::move(t));
      }
    }
  }
  return out;
}

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

std::vector<Container> FindContainers(const Value* root, const v1::NormalizationPolicy& policy) {
  std::vector<Container> out;
  auto add = [&](std::string path, const Value* v) {
    if (v == nullptr) return;
    Container c{std::move(path), checkpoint::FlattenTensors(v)};
    if (!c.tensors.empty()) out.push_back(std::move(c));
  };
  if (!policy.container().empty() && policy.container() != "auto") {
    add(policy.container(), ResolveContainer(root, policy.container()));
    return out;
  }
  add("", root);
  for (absl::string_view key : kContainerKeys) {
    const Value* v = DictGet(root, key);
    if (v == nullptr) continue;
    add(std::string(key), v);
    for (absl::string_view inner : kContainerKeys) {
      add(absl::StrCat(key, ".", inner), DictGet(v, inner));
    }
  }
  return out;
}

SearchOutcome SearchCandidates(const std::vector<Container>& containers, const SpecIndex& spec,
                               const v1::NormalizationPolicy& policy, Renamer& renamer) {
  // Prefixes to add come from the spec's most frequent first components.
  std::vector<std::string> spec_names;
  for (const SpecTensor& s : spec.tensors) spec_names.push_back(s.name);
  std::vector<std::string> adds = {""};
  for (std::string& a : TopFirstComponents(spec_names, kMaxAddCandidates, {})) {
    adds.push_back(std::move(a));
  }
  std::vector<Scored> scored;
  for (size_t ci = 0; ci < containers.size(); ++ci) {
    const Container& c = containers[ci];
    if (policy.prefixes() == v1::NormalizationPolicy::PREFIX_NONE) {
      scored.push_back(Score(ci, c, Transform{}, renamer, spec));
      continue;
    }
    for (const Transform& t : TransformsFor(c, adds)) {
      scored.push_back(Score(ci, c, t, renamer, spec));
    }
  }
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
