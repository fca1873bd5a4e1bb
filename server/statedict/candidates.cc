#include "server/statedict/candidates.h"

#include <algorithm>
#include <array>
#include <cctype>
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

// Readings that explain this many more spec tensors are "comparable" for
// the runner-up when they reach at least half the winner's score.
constexpr int64_t kRunnerUpDivisor = 2;
// Candidates examined (tensor by tensor) when looking for a runner-up.
constexpr size_t kMaxRunnerUpChecks = 8;

bool Better(const Scored& a, const Scored& b) {
  if (a.matched != b.matched) return a.matched > b.matched;
  if (a.leftover != b.leftover) return a.leftover < b.leftover;
  if (a.transform.ops() != b.transform.ops()) return a.transform.ops() < b.transform.ops();
  if (a.ema != b.ema) return !a.ema;
  if (a.container != b.container) return a.container < b.container;
  return a.description < b.description;
}

template <size_t N>
bool OneOf(absl::string_view s, const std::array<absl::string_view, N>& set) {
  return std::find(set.begin(), set.end(), s) != set.end();
}

bool IsEmaContainer(absl::string_view path) {
  for (absl::string_view part : absl::StrSplit(path, '.')) {
    if (OneOf(part, kEmaContainerKeys)) return true;
  }
  return false;
}

StripKind KindOfStrip(absl::string_view strip) {
  if (strip.empty()) return StripKind::kNone;
  if (OneOf(strip, kWrapperComponents)) return StripKind::kKnownWrapper;
  if (OneOf(strip, kTrainingAttributes) || OneOf(strip, kEmaAttributes)) {
    return StripKind::kTrainingAttribute;
  }
  return StripKind::kArbitrary;
}

// `text` as an RE2 literal (RE2::QuoteMeta's rule: non-word ASCII escaped).
std::string QuoteRegex(absl::string_view text) {
  std::string out;
  for (char c : text) {
    const unsigned char u = static_cast<unsigned char>(c);
    if (u < 0x80 && !std::isalnum(u) && c != '_') out.push_back('\\');
    out.push_back(c);
  }
  return out;
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

// Strips worth trying on `keys`: none, then leading components by frequency
// (ties by name), leaving out those the spec's keys start with (stripping
// them never helps) and wrappers the mask already removed.
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
  // Known leading components always; others (roots only a flag may strip)
  // up to kMaxStripCandidates.
  std::vector<std::string> out = {""};
  size_t arbitrary = 0;
  for (const auto& [first, n] : sorted) {
    if (KindOfStrip(first) != StripKind::kArbitrary) {
      out.emplace_back(first);
    } else if (arbitrary < kMaxStripCandidates) {
      out.emplace_back(first);
      ++arbitrary;
    }
  }
  return out;
}

class Search final {
 public:
  Search(const std::vector<Container>& containers, const SpecIndex& spec,
         const v1::NormalizationPolicy& policy, Renamer& renamer, const MatchOptions& options)
      : containers_(containers),
        spec_(spec),
        policy_(policy),
        renamer_(renamer),
        lookup_(spec),
        options_(options) {
    for (const SpecTensor& s : spec.tensors) {
      spec_first_.emplace(FirstComponent(s.name));
      spec_wrappers_ |= WrappersIn(s.name);
    }
    key_prefix_ = policy.key_prefix();
    while (!key_prefix_.empty() && key_prefix_.back() == '.') key_prefix_.pop_back();
  }

  // Every candidate of container `ci`.
  absl::Status ScoreContainer(size_t ci) {
    const Container& c = containers_[ci];
    if (policy_.prefixes() == v1::NormalizationPolicy::PREFIX_NONE) {
      return ScoreMasked(ci, ApplyMask(c, 0), {""}, false);
    }
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
      std::vector<std::string> strips = key_prefix_.empty() ? StripsFor(keys, spec_first_)
                                                            : std::vector<std::string>{key_prefix_};
      if (absl::Status s = ScoreMasked(ci, keys, strips, true); !s.ok()) return s;
    }
    return absl::OkStatus();
  }

  std::vector<Scored>& scored() { return scored_; }

  // Spec position -> tensor record that candidate `s` fills it with (the
  // first key of the right shape), nullptr where none.
  absl::StatusOr<std::vector<const checkpoint::TensorRecord*>> Assignment(const Scored& s) {
    const Container& c = containers_[s.container];
    if (absl::Status st = Charge(c.tensors.size()); !st.ok()) return st;
    std::vector<const checkpoint::TensorRecord*> out(spec_.tensors.size(), nullptr);
    const bool add = !s.transform.add.empty();
    Transform no_add = s.transform;
    no_add.add.clear();
    for (const NamedTensor& nt : c.tensors) {
      if (!s.transform.Selects(nt.name)) continue;
      std::string key = no_add.Apply(nt.name);
      int j;
      if (renamer_.identity()) {
        j = lookup_.Find(key, add);
      } else {
        j = lookup_.Find(renamer_.Rename(add ? absl::StrCat(s.transform.add, ".", key) : key).name,
                         false);
      }
      if (j >= 0 && out[j] == nullptr && nt.tensor->shape == spec_.tensors[j].shape) {
        out[j] = nt.tensor;
      }
    }
    return out;
  }

  // Whether two assignments select the same values.
  bool SameTensors(const std::vector<const checkpoint::TensorRecord*>& a,
                   const std::vector<const checkpoint::TensorRecord*>& b, bool* distinct) const {
    *distinct = false;
    for (size_t j = 0; j < a.size(); ++j) {
      if (a[j] == b[j]) continue;
      if (a[j] == nullptr || b[j] == nullptr) {
        // One reading leaves an optional tensor to be zero-filled: no
        // difference of weights.
        if (j < spec_.optional.size() && spec_.optional[j]) continue;
        return false;
      }
      *distinct = true;
      if (!SameView(*a[j], *b[j]) &&
          !(options_.same_bytes && a[j]->dtype == b[j]->dtype && a[j]->shape == b[j]->shape &&
            options_.same_bytes(*a[j], *b[j]))) {
        return false;
      }
    }
    return true;
  }

 private:
  static bool SameView(const checkpoint::TensorRecord& a, const checkpoint::TensorRecord& b) {
    return a.storage_index >= 0 && a.storage_index == b.storage_index && a.dtype == b.dtype &&
           a.shape == b.shape && a.strides == b.strides && a.storage_offset == b.storage_offset;
  }

  absl::Status Charge(uint64_t lookups) {
    if (options_.cancelled && options_.cancelled()) {
      return absl::CancelledError("validation cancelled");
    }
    work_ += lookups;
    if (work_ > options_.max_work) {
      return absl::ResourceExhaustedError(absl::StrCat(
          "matching needs more than ", options_.max_work, " key lookups (kMaxMatchWork)"));
    }
    return absl::OkStatus();
  }

  absl::Status ScoreMasked(size_t ci, const MaskedKeys& keys,
                           const std::vector<std::string>& strips, bool prefixes) {
    std::vector<bool> adds = {false};
    if (prefixes && !lookup_.root().empty()) adds.push_back(true);
    const bool ema_container = IsEmaContainer(containers_[ci].path);
    for (const std::string& strip : strips) {
      for (bool add : adds) {
        if (add && strip == lookup_.root()) continue;
        Transform t;
        t.wrapper_mask = keys.mask;
        t.strip = strip;
        if (add) t.add = lookup_.root();
        t.strip_kind = KindOfStrip(strip);
        if (!key_prefix_.empty()) {
          t.strip_kind = StripKind::kChosen;
          t.exclusive = true;
        }
        const bool allowed = t.strip_kind != StripKind::kArbitrary ||
                             policy_.prefixes() == v1::NormalizationPolicy::PREFIX_ANY;
        const bool ema = ema_container || OneOf(strip, kEmaAttributes);
        if (policy_.weights() == v1::NormalizationPolicy::WEIGHTS_RAW && ema) continue;
        if (policy_.weights() == v1::NormalizationPolicy::WEIGHTS_EMA && !ema) continue;
        if (absl::Status s = ScoreOne(ci, keys, std::move(t), allowed, ema); !s.ok()) return s;
      }
    }
    return absl::OkStatus();
  }

  absl::Status ScoreOne(size_t ci, const MaskedKeys& keys, Transform t, bool allowed, bool ema) {
    if (absl::Status s = Charge(keys.keys.size()); !s.ok()) return s;
    const Container& c = containers_[ci];
    Scored s;
    s.container = ci;
    s.description = t.Describe();
    s.allowed = allowed;
    s.ema = ema;
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
      } else if (t.exclusive) {
        continue;
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
        if (j >= static_cast<int>(spec_.optional.size()) || !spec_.optional[j]) ++s.required;
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
  const v1::NormalizationPolicy& policy_;
  Renamer& renamer_;
  SpecLookup lookup_;
  const MatchOptions& options_;
  absl::flat_hash_set<std::string> spec_first_;
  uint32_t spec_wrappers_ = 0;
  std::string key_prefix_;
  uint64_t work_ = 0;
  std::vector<char> claimed_;
  std::vector<Scored> scored_;
};

// "--container PATH" for a container path ("." is the top level).
std::string ContainerFlag(absl::string_view path) {
  return absl::StrCat("--container ", path.empty() ? "." : path);
}

std::string WeightsFlag(const Scored& s) {
  return absl::StrCat("--weights ", s.ema ? "ema" : "raw");
}

// The flag(s) that select `x` among the readings `all` (x included).
std::string SelectFlag(const Scored& x, const std::vector<Scored>& all,
                       const std::vector<Container>& containers) {
  size_t same_class = 0, same_container = 0, same_container_strip = 0;
  for (const Scored& o : all) {
    same_class += o.ema == x.ema;
    if (o.container == x.container) {
      ++same_container;
      same_container_strip += o.transform.strip == x.transform.strip;
    }
  }
  if (same_class == 1) return WeightsFlag(x);
  std::vector<std::string> flags;
  if (same_container < all.size()) flags.push_back(ContainerFlag(containers[x.container].path));
  if (same_container > 1) {
    if (!x.transform.strip.empty() && same_container_strip == 1) {
      flags.push_back(absl::StrCat("--key_prefix ", x.transform.strip, "."));
    } else if (x.transform.strip.empty() && x.transform.wrapper_mask == 0) {
      flags.push_back("--prefixes none");
    }
  }
  if (flags.empty()) return "";
  return absl::StrJoin(flags, " ");
}

// The flag that makes an arbitrary root swap explicit: the sub-dict as the
// container when the stripped root is one, else the --rename rule.
std::string RenameFlag(const Scored& x, const std::vector<Container>& containers) {
  const Container& c = containers[x.container];
  const Value* sub = DictGet(c.value, x.transform.strip);
  if (x.transform.wrapper_mask == 0 && sub != nullptr && sub->kind == Value::Kind::kDict) {
    return ContainerFlag(c.path.empty() ? x.transform.strip
                                        : absl::StrCat(c.path, ".", x.transform.strip));
  }
  return absl::StrCat("--rename '^", QuoteRegex(x.transform.strip),
                      "\\.=", x.transform.add.empty() ? "" : absl::StrCat(x.transform.add, "."),
                      "'");
}

std::string Describe(const Scored& s, const std::vector<Container>& containers) {
  const std::string& path = containers[s.container].path;
  return absl::StrCat(path.empty() ? "top level" : absl::StrCat("container '", path, "'"), " + ",
                      s.description, s.ema ? " (EMA)" : "");
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

bool Transform::Selects(absl::string_view key) const {
  if (!exclusive) return true;
  Transform wrappers_only;
  wrappers_only.wrapper_mask = wrapper_mask;
  std::string k = wrappers_only.Apply(key);
  return k.size() > strip.size() && k[strip.size()] == '.' &&
         k.compare(0, strip.size(), strip) == 0;
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
    if (policy.container() == ".") {
      add("", root);  // the top level, explicitly
    } else {
      add(policy.container(), ResolveContainer(root, policy.container()));
    }
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

absl::StatusOr<std::optional<SearchOutcome>> SearchCandidates(
    const std::vector<Container>& containers, const SpecIndex& spec,
    const v1::NormalizationPolicy& policy, Renamer& renamer, const MatchOptions& options) {
  using Records = std::vector<const checkpoint::TensorRecord*>;
  Search search(containers, spec, policy, renamer, options);
  for (size_t ci = 0; ci < containers.size(); ++ci) {
    if (absl::Status s = search.ScoreContainer(ci); !s.ok()) return s;
  }
  std::vector<Scored>& scored = search.scored();
  if (scored.empty()) return std::optional<SearchOutcome>();
  std::stable_sort(scored.begin(), scored.end(), Better);
  // Readings are compared on the spec tensors that must be present: one
  // that lacks an optional buffer explains the spec as well as one with it.
  int64_t best_allowed = -1, best_other = -1;
  for (const Scored& s : scored) {
    int64_t& best = s.allowed ? best_allowed : best_other;
    best = std::max(best, s.required);
  }
  // A reading outside the policy counts only when it explains strictly more.
  const bool needs_flag = best_other > best_allowed && best_other > 0;
  const int64_t best = needs_flag ? best_other : best_allowed;
  std::vector<const Scored*> top;
  for (const Scored& s : scored) {
    if (s.allowed != needs_flag && s.required == best) top.push_back(&s);
  }

  // Group the best readings by the tensors they select.
  struct Group {
    const Scored* first;
    Records records;
    std::vector<const Scored*> equal;  // other tensors, bitwise identical
  };
  std::vector<Group> groups;
  if (best > 0) {
    for (const Scored* s : top) {
      absl::StatusOr<Records> records = search.Assignment(*s);
      if (!records.ok()) return records.status();
      bool placed = false;
      for (Group& g : groups) {
        bool distinct = false;
        if (search.SameTensors(g.records, *records, &distinct)) {
          if (distinct) g.equal.push_back(s);
          placed = true;
          break;
        }
      }
      if (!placed) groups.push_back({s, *std::move(records), {}});
    }
  }

  SearchOutcome out;
  out.winner = groups.empty() ? (needs_flag ? *top.front() : scored.front()) : *groups[0].first;
  if (!groups.empty() && !needs_flag) {
    // Equally good readings with identical values: said, not ambiguous.
    for (const Scored* e : groups[0].equal) {
      out.alternatives.push_back({*e, "", /*equal_to_winner=*/true});
    }
  }
  if (groups.size() > 1) {
    std::vector<Scored> reps;
    for (const Group& g : groups) reps.push_back(*g.first);
    std::vector<std::string> named;
    for (const Scored& r : reps) {
      // A reading outside the policy is chosen by naming its root.
      std::string flag = r.allowed ? SelectFlag(r, reps, containers)
                                   : absl::StrCat("--key_prefix ", r.transform.strip, ".");
      named.push_back(absl::StrCat(Describe(r, containers), " [", flag.empty() ? "?" : flag, "]"));
      out.alternatives.push_back({r, std::move(flag), false});
    }
    out.decision = SearchOutcome::Decision::kAmbiguous;
    out.message =
        absl::StrCat(reps.size(), " readings explain the spec equally well (", reps[0].matched,
                     " tensors) with different weights: ", absl::StrJoin(named, "; "),
                     ". Choose one with its flag (or store it in the model's policy).");
    return std::optional<SearchOutcome>(std::move(out));
  }
  if (needs_flag) {
    std::string flag = RenameFlag(out.winner, containers);
    out.decision = SearchOutcome::Decision::kPrefixRenameNeeded;
    out.message = absl::StrCat(
        "only a root swap explains the spec: ", Describe(out.winner, containers), " matches ",
        out.winner.matched, " tensors (", best_allowed < 0 ? 0 : best_allowed,
        " required ones without it), and '", out.winner.transform.strip,
        ".' is no known wrapper or training attribute; pass ", flag, " (or --prefixes any)");
    out.alternatives.push_back({out.winner, std::move(flag), false});
    return std::optional<SearchOutcome>(std::move(out));
  }

  // The runner-up: the best other reading that selects other tensors and
  // reaches at least half the winner's score.
  if (!groups.empty()) {
    size_t checks = 0;
    for (const Scored& s : scored) {
      if (s.matched * kRunnerUpDivisor < out.winner.matched || s.matched == 0) break;
      if (&s == groups[0].first) continue;
      if (std::find(top.begin(), top.end(), &s) != top.end()) continue;
      if (++checks > kMaxRunnerUpChecks) break;
      absl::StatusOr<Records> records = search.Assignment(s);
      if (!records.ok()) return records.status();
      bool distinct = false;
      if (search.SameTensors(groups[0].records, *records, &distinct)) continue;
      out.runner_up = s;
      break;
    }
  }
  return std::optional<SearchOutcome>(std::move(out));
}

}  // namespace weightgate::statedict
