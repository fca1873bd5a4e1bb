#include "server/statedict/matcher.h"

#include <fnmatch.h>

#include <algorithm>
#include <map>
#include <optional>
#include <regex>
#include <utility>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "server/statedict/ties.h"

namespace weightgate::statedict {
namespace {

using checkpoint::DType;
using checkpoint::NamedTensor;
using checkpoint::TensorRecord;
using checkpoint::Value;
namespace v1 = weightgate::v1;

// Caps that keep the candidate search small on checkpoints with thousands of
// top-level names: only the most frequent first components are tried as
// attribute prefixes to strip or add.
constexpr size_t kMaxStripCandidates = 6;
constexpr size_t kMaxAddCandidates = 6;

// Debian's abseil keeps its own string_view; dtype names come as std's.
std::string DN(DType d) { return std::string(checkpoint::DTypeName(d)); }

int64_t Numel(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

void AddReason(v1::ValidationReport* report, absl::string_view reason) {
  for (const std::string& r : report->reasons()) {
    if (r == reason) return;
  }
  report->add_reasons(std::string(reason));
}

const Value* DictGet(const Value* v, absl::string_view key) {
  if (v == nullptr || v->kind != Value::Kind::kDict) return nullptr;
  for (size_t i = 0; i + 1 < v->items.size(); i += 2) {
    const Value* k = v->items[i];
    if (k != nullptr && k->kind == Value::Kind::kString && k->str == key) return v->items[i + 1];
  }
  return nullptr;
}

absl::string_view FirstComponent(absl::string_view key) {
  size_t dot = key.find('.');
  return dot == absl::string_view::npos ? key : key.substr(0, dot);
}

struct Container {
  std::string path;
  std::vector<NamedTensor> tensors;
};

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

// A prefix transform: wrapper components removed everywhere, then one leading
// attribute component stripped (keys without it are left alone), then one
// component prepended.
struct Transform {
  uint32_t wrapper_mask = 0;
  std::string strip;
  std::string add;

  int ops() const {
    return __builtin_popcount(wrapper_mask) + (strip.empty() ? 0 : 1) + (add.empty() ? 0 : 1);
  }

  std::string Describe() const {
    std::vector<std::string> parts;
    for (size_t w = 0; w < kWrapperComponents.size(); ++w) {
      if (wrapper_mask & (1u << w))
        parts.push_back(absl::StrCat("strip '", kWrapperComponents[w], ".'"));
    }
    if (!strip.empty()) parts.push_back(absl::StrCat("strip '", strip, ".'"));
    if (!add.empty()) parts.push_back(absl::StrCat("add '", add, ".'"));
    return parts.empty() ? "none" : absl::StrJoin(parts, " + ");
  }

  std::string Apply(absl::string_view key) const {
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
};

// The key pipeline after prefixes: rename rules, then legacy gamma/beta.
// Memoised because many candidate transforms produce the same keys.
class Renamer final {
 public:
  struct Result {
    std::string name;
    bool renamed_by_rule = false;
    bool renamed_gamma_beta = false;
  };

  static absl::StatusOr<Renamer> Create(const v1::NormalizationPolicy& policy,
                                        const absl::flat_hash_map<std::string, int>* spec_index) {
    Renamer r;
    r.spec_index_ = spec_index;
    r.legacy_gamma_beta_ = policy.legacy_gamma_beta();
    for (const v1::RenameRule& rule : policy.rename_rules()) {
      try {
        r.rules_.emplace_back(std::regex(rule.pattern(), std::regex::ECMAScript),
                              rule.replacement());
      } catch (const std::regex_error& e) {
        return absl::InvalidArgumentError(
            absl::StrCat("rename rule '", rule.pattern(), "': invalid regex: ", e.what()));
      }
    }
    return r;
  }

  // No rules and no legacy renames: every key maps to itself, and the
  // candidate search skips the memo (which would otherwise hold every key
  // of every candidate).
  bool identity() const { return rules_.empty() && !legacy_gamma_beta_; }

  const Result& Rename(const std::string& key) {
    auto it = memo_.find(key);
    if (it != memo_.end()) return it->second;
    Result res;
    res.name = key;
    for (const auto& [re, replacement] : rules_) {
      std::string next = std::regex_replace(res.name, re, replacement);
      if (next != res.name) {
        res.name = std::move(next);
        res.renamed_by_rule = true;
      }
    }
    if (legacy_gamma_beta_ && !spec_index_->contains(res.name)) {
      absl::string_view name = res.name;
      size_t dot = name.rfind('.');
      absl::string_view last = dot == absl::string_view::npos ? name : name.substr(dot + 1);
      absl::string_view base = dot == absl::string_view::npos ? "" : name.substr(0, dot + 1);
      absl::string_view repl = last == "gamma" ? "weight" : last == "beta" ? "bias" : "";
      if (!repl.empty()) {
        std::string candidate = absl::StrCat(base, repl);
        if (spec_index_->contains(candidate)) {
          res.name = std::move(candidate);
          res.renamed_gamma_beta = true;
        }
      }
    }
    return memo_.emplace(key, std::move(res)).first->second;
  }

 private:
  std::vector<std::pair<std::regex, std::string>> rules_;
  bool legacy_gamma_beta_ = false;
  const absl::flat_hash_map<std::string, int>* spec_index_ = nullptr;
  absl::flat_hash_map<std::string, Result> memo_;
};

struct SpecTensor {
  std::string name;
  std::optional<DType> dtype;
  std::vector<int64_t> shape;
};

struct Scored {
  size_t container = 0;
  Transform transform;
  std::string description;
  int64_t matched = 0;
  int64_t leftover = 0;
  uint64_t signature = 0;
};

bool Better(const Scored& a, const Scored& b) {
  if (a.matched != b.matched) return a.matched > b.matched;
  if (a.leftover != b.leftover) return a.leftover < b.leftover;
  if (a.transform.ops() != b.transform.ops()) return a.transform.ops() < b.transform.ops();
  if (a.container != b.container) return a.container < b.container;
  return a.description < b.description;
}

Scored Score(size_t ci, const Container& c, const Transform& t, Renamer& renamer,
             const std::vector<SpecTensor>& spec,
             const absl::flat_hash_map<std::string, int>& spec_index) {
  Scored s;
  s.container = ci;
  s.transform = t;
  s.description = t.Describe();
  std::vector<char> claimed(spec.size(), 0);
  uint64_t h = 1469598103934665603ull ^ (static_cast<uint64_t>(ci) << 48);
  const bool identity = renamer.identity();
  for (size_t i = 0; i < c.tensors.size(); ++i) {
    std::string prefixed = t.Apply(c.tensors[i].name);
    const std::string& name = identity ? prefixed : renamer.Rename(prefixed).name;
    auto it = spec_index.find(name);
    if (it == spec_index.end()) continue;
    int j = it->second;
    h = (h ^ (i * 1000003u + static_cast<uint64_t>(j))) * 1099511628211ull;
    if (!claimed[j] && c.tensors[i].tensor->shape == spec[j].shape) {
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

bool Matches(const std::vector<std::string>& globs, const std::string& name) {
  for (const std::string& g : globs) {
    if (::fnmatch(g.c_str(), name.c_str(), 0) == 0) return true;
  }
  return false;
}

bool IsComplex(DType d) { return d == DType::kC64 || d == DType::kC128; }

void FillCandidate(const Scored& s, const std::vector<Container>& containers, v1::Candidate* out) {
  out->set_container(containers[s.container].path);
  out->set_transform(s.description);
  out->set_matched(s.matched);
}

v1::Fix* AddFix(v1::ValidationReport* report, absl::string_view kind, std::string detail,
                int64_t count, std::string from = "", std::string to = "") {
  v1::Fix* fix = report->add_fixes();
  fix->set_kind(std::string(kind));
  fix->set_detail(std::move(detail));
  fix->set_count(count);
  fix->set_from(std::move(from));
  fix->set_to(std::move(to));
  return fix;
}

}  // namespace

uint64_t MatchedTensor::out_nbytes() const {
  return static_cast<uint64_t>(Numel(shape)) * checkpoint::ItemSize(out_dtype);
}

const Value* ResolveContainer(const Value* root, absl::string_view path) {
  const Value* v = root;
  if (path.empty()) return v;
  for (absl::string_view part : absl::StrSplit(path, '.')) {
    v = DictGet(v, part);
    if (v == nullptr) return nullptr;
  }
  return v;
}

std::vector<NamedTensor> ReferenceTensors(const Value* root, std::string* container_path) {
  std::vector<absl::string_view> keys(kContainerKeys.begin(), kContainerKeys.end());
  keys.push_back("tensors");
  container_path->clear();
  // Descend through known container keys (at most two levels, like the
  // matcher): {'model': {'state_dict': {...}}} gives "model.state_dict".
  const Value* current = root;
  for (int level = 0; level < 2; ++level) {
    const Value* next = nullptr;
    for (absl::string_view key : keys) {
      const Value* v = DictGet(current, key);
      if (v == nullptr || v->kind != Value::Kind::kDict) continue;
      if (checkpoint::FlattenTensors(v).empty()) continue;
      next = v;
      if (!container_path->empty()) container_path->push_back('.');
      container_path->append(key.data(), key.size());
      break;
    }
    if (next == nullptr) break;
    current = next;
  }
  return checkpoint::FlattenTensors(current);
}

absl::StatusOr<std::string> ApplyRenameRules(const v1::NormalizationPolicy& policy,
                                             const std::string& key) {
  absl::flat_hash_map<std::string, int> empty;
  v1::NormalizationPolicy rules_only;
  *rules_only.mutable_rename_rules() = policy.rename_rules();
  absl::StatusOr<Renamer> renamer = Renamer::Create(rules_only, &empty);
  if (!renamer.ok()) return renamer.status();
  return renamer->Rename(key).name;
}

v1::Verdict VerdictOf(const v1::ValidationReport& report) {
  if (!report.reasons().empty()) return v1::INVALID;
  if (!report.fixes().empty()) return v1::NORMALIZED;
  return v1::VALID;
}

absl::StatusOr<MatchResult> MatchStateDict(const Value* root, const v1::ModelSpec& spec_proto,
                                           const v1::NormalizationPolicy& policy,
                                           v1::ValidationReport* report) {
  std::vector<SpecTensor> spec;
  absl::flat_hash_map<std::string, int> spec_index;
  for (const v1::TensorSpec& t : spec_proto.tensors()) {
    spec.push_back({t.name(), checkpoint::DTypeFromName(t.dtype()),
                    std::vector<int64_t>(t.shape().begin(), t.shape().end())});
    spec_index.emplace(t.name(), static_cast<int>(spec.size() - 1));
  }
  const absl::flat_hash_map<std::string, std::vector<std::string>> tie_partners =
      TiePartners(spec_proto);
  absl::StatusOr<Renamer> renamer_or = Renamer::Create(policy, &spec_index);
  if (!renamer_or.ok()) return renamer_or.status();
  Renamer& renamer = *renamer_or;

  MatchResult result;
  std::vector<Container> containers = FindContainers(root, policy);
  if (containers.empty()) {
    AddReason(report, "no_state_dict");
    result.invalid = true;
    for (const SpecTensor& s : spec) report->add_missing_keys(s.name);
    return result;
  }

  // ---- candidate search ----
  absl::flat_hash_set<std::string> wrapper_names(kWrapperComponents.begin(),
                                                 kWrapperComponents.end());
  absl::flat_hash_set<std::string> spec_first;
  std::vector<std::string> spec_names;
  for (const SpecTensor& s : spec) {
    spec_names.push_back(s.name);
    spec_first.insert(std::string(FirstComponent(s.name)));
  }
  std::vector<Scored> scored;
  for (size_t ci = 0; ci < containers.size(); ++ci) {
    const Container& c = containers[ci];
    if (policy.prefixes() == v1::NormalizationPolicy::PREFIX_NONE) {
      scored.push_back(Score(ci, c, Transform{}, renamer, spec, spec_index));
      continue;
    }
    uint32_t present = 0;
    for (const NamedTensor& nt : c.tensors) {
      for (absl::string_view part : absl::StrSplit(nt.name, '.')) {
        for (size_t w = 0; w < kWrapperComponents.size(); ++w) {
          if (part == kWrapperComponents[w]) present |= 1u << w;
        }
      }
    }
    // Prefixes to add come from the spec's first components the checkpoint lacks.
    absl::flat_hash_set<std::string> no_exclude;
    std::vector<std::string> add_candidates;
    for (const std::string& a : TopFirstComponents(spec_names, kMaxAddCandidates, no_exclude)) {
      add_candidates.push_back(a);
    }
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
      std::vector<std::string> adds = {""};
      adds.insert(adds.end(), add_candidates.begin(), add_candidates.end());
      for (const std::string& strip : strips) {
        for (const std::string& add : adds) {
          if (!strip.empty() && strip == add) continue;
          Transform t = base;
          t.strip = strip;
          t.add = add;
          scored.push_back(Score(ci, c, t, renamer, spec, spec_index));
        }
      }
    }
  }
  std::stable_sort(scored.begin(), scored.end(), Better);
  const Scored& winner = scored.front();
  FillCandidate(winner, containers, report->mutable_winner());
  for (size_t i = 1; i < scored.size(); ++i) {
    if (scored[i].signature != winner.signature || scored[i].matched != winner.matched) {
      FillCandidate(scored[i], containers, report->mutable_runner_up());
      break;
    }
  }

  // ---- the winner, in detail ----
  const Container& c = containers[winner.container];
  const Transform& t = winner.transform;
  report->set_container_path(c.path);
  if (!c.path.empty()) {
    AddFix(report, "select_container",
           absl::StrCat("state_dict taken from '", c.path, "' (", c.tensors.size(), " tensors)"),
           static_cast<int64_t>(c.tensors.size()), "", c.path);
  }
  for (size_t w = 0; w < kWrapperComponents.size(); ++w) {
    if (!(t.wrapper_mask & (1u << w))) continue;
    int64_t n = 0;
    for (const NamedTensor& nt : c.tensors) {
      for (absl::string_view part : absl::StrSplit(nt.name, '.')) {
        if (part == kWrapperComponents[w]) {
          ++n;
          break;
        }
      }
    }
    AddFix(report, "strip_prefix",
           absl::StrCat("stripped '", kWrapperComponents[w], ".' from ", n, " keys"), n,
           absl::StrCat(kWrapperComponents[w], "."), "");
  }
  std::vector<std::string> prefixed;
  prefixed.reserve(c.tensors.size());
  for (const NamedTensor& nt : c.tensors) prefixed.push_back(t.Apply(nt.name));
  if (!t.strip.empty()) {
    Transform only_wrappers;
    only_wrappers.wrapper_mask = t.wrapper_mask;
    int64_t n = 0;
    for (const NamedTensor& nt : c.tensors) {
      std::string k = only_wrappers.Apply(nt.name);
      if (k.size() > t.strip.size() && k.compare(0, t.strip.size(), t.strip) == 0 &&
          k[t.strip.size()] == '.') {
        ++n;
      }
    }
    AddFix(report, "strip_prefix", absl::StrCat("stripped '", t.strip, ".' from ", n, " keys"), n,
           absl::StrCat(t.strip, "."), "");
  }
  if (!t.add.empty()) {
    int64_t n = static_cast<int64_t>(c.tensors.size());
    AddFix(report, "add_prefix", absl::StrCat("added '", t.add, ".' to ", n, " keys"), n, "",
           absl::StrCat(t.add, "."));
  }

  // Claim spec tensors: shape-matching keys first, so a duplicate with the
  // wrong shape never hides a good one; then name-only matches (mismatches).
  const size_t n_keys = c.tensors.size();
  std::vector<int> key_to_spec(n_keys, -1);
  std::vector<int> spec_to_key(spec.size(), -1);
  std::vector<std::string> final_names(n_keys);
  for (size_t i = 0; i < n_keys; ++i) final_names[i] = renamer.Rename(prefixed[i]).name;
  for (int pass = 0; pass < 2; ++pass) {
    for (size_t i = 0; i < n_keys; ++i) {
      if (key_to_spec[i] >= 0) continue;
      auto it = spec_index.find(final_names[i]);
      if (it == spec_index.end() || spec_to_key[it->second] >= 0) continue;
      if (pass == 0 && c.tensors[i].tensor->shape != spec[it->second].shape) continue;
      key_to_spec[i] = it->second;
      spec_to_key[it->second] = static_cast<int>(i);
    }
  }
  for (size_t i = 0; i < n_keys; ++i) {
    if (key_to_spec[i] < 0) continue;
    const Renamer::Result& r = renamer.Rename(prefixed[i]);
    if (r.renamed_by_rule || r.renamed_gamma_beta) {
      AddFix(report, "rename",
             absl::StrCat("renamed '", prefixed[i], "' -> '", r.name, "'",
                          r.renamed_gamma_beta && !r.renamed_by_rule ? " (legacy gamma/beta)" : ""),
             1, prefixed[i], r.name);
    }
  }

  std::vector<std::string> optional_globs;
  if (policy.has_optional_keys()) {
    optional_globs.assign(policy.optional_keys().values().begin(),
                          policy.optional_keys().values().end());
  } else {
    optional_globs.emplace_back(kDefaultOptionalGlob);
  }

  if (policy.positional_remap()) {
    std::vector<size_t> free_keys;
    for (size_t i = 0; i < n_keys; ++i) {
      if (key_to_spec[i] < 0) free_keys.push_back(i);
    }
    for (int attempt = 0; attempt < 2 && !free_keys.empty(); ++attempt) {
      std::vector<size_t> free_spec;
      for (size_t j = 0; j < spec.size(); ++j) {
        if (spec_to_key[j] >= 0) continue;
        if (attempt == 1 && Matches(optional_globs, spec[j].name)) continue;
        free_spec.push_back(j);
      }
      if (free_spec.size() != free_keys.size()) continue;
      bool same = true;
      for (size_t k = 0; k < free_spec.size() && same; ++k) {
        same = c.tensors[free_keys[k]].tensor->shape == spec[free_spec[k]].shape;
      }
      if (!same) continue;
      for (size_t k = 0; k < free_spec.size(); ++k) {
        key_to_spec[free_keys[k]] = static_cast<int>(free_spec[k]);
        spec_to_key[free_spec[k]] = static_cast<int>(free_keys[k]);
        AddFix(report, "positional_remap",
               absl::StrCat("mapped '", c.tensors[free_keys[k]].name, "' -> '",
                            spec[free_spec[k]].name, "' by position"),
               1, c.tensors[free_keys[k]].name, spec[free_spec[k]].name);
      }
      break;
    }
  }

  // ---- per spec tensor ----
  std::map<std::pair<std::string, std::string>, int64_t> casts;
  for (size_t j = 0; j < spec.size(); ++j) {
    const SpecTensor& s = spec[j];
    int i = spec_to_key[j];
    std::string tied_from;  // a tie member the checkpoint omits is its partner (ties.h)
    if (auto p = i < 0 ? tie_partners.find(s.name) : tie_partners.end(); p != tie_partners.end()) {
      for (const std::string& partner : p->second) {
        auto pj = spec_index.find(partner);
        if (pj != spec_index.end() && spec_to_key[pj->second] >= 0) {
          i = spec_to_key[pj->second];
          tied_from = partner;
          break;
        }
      }
    }
    if (i < 0) {
      if (Matches(optional_globs, s.name) && s.dtype.has_value()) {
        MatchedTensor m;
        m.name = s.name;
        m.out_dtype = *s.dtype;
        m.source_dtype = *s.dtype;
        m.shape = s.shape;
        result.tensors.push_back(std::move(m));
        AddFix(report, "fill_optional", absl::StrCat("filled optional '", s.name, "' with zeros"),
               1, "", s.name);
      } else {
        report->add_missing_keys(s.name);
      }
      continue;
    }
    const NamedTensor& nt = c.tensors[i];
    const TensorRecord& rec = *nt.tensor;
    if (rec.shape != s.shape) {
      v1::Mismatch* m = report->add_shape_mismatches();
      m->set_name(s.name);
      m->mutable_expected_shape()->Assign(s.shape.begin(), s.shape.end());
      m->mutable_actual_shape()->Assign(rec.shape.begin(), rec.shape.end());
      m->set_expected_dtype(s.dtype ? DN(*s.dtype) : "");
      m->set_actual_dtype(DN(rec.dtype));
      continue;
    }
    MatchedTensor m;
    m.name = s.name;
    m.source_name = nt.name;
    m.source = &rec;
    m.source_dtype = rec.dtype;
    m.out_dtype = rec.dtype;
    m.shape = rec.shape;
    if (s.dtype.has_value() && *s.dtype != rec.dtype) {
      bool castable = !(IsComplex(rec.dtype) && !IsComplex(*s.dtype));
      if (policy.dtype() == v1::NormalizationPolicy::DTYPE_CAST && castable) {
        m.out_dtype = *s.dtype;
        ++casts[{DN(rec.dtype), DN(*s.dtype)}];
      } else {
        v1::Mismatch* mm = report->add_dtype_mismatches();
        mm->set_name(s.name);
        mm->mutable_expected_shape()->Assign(s.shape.begin(), s.shape.end());
        mm->mutable_actual_shape()->Assign(rec.shape.begin(), rec.shape.end());
        mm->set_expected_dtype(DN(*s.dtype));
        mm->set_actual_dtype(DN(rec.dtype));
        if (policy.dtype() != v1::NormalizationPolicy::DTYPE_KEEP || !castable) {
          AddReason(report, "dtype_mismatch");
        }
      }
    }
    if (!tied_from.empty()) {
      AddFix(report, "fill_tied",
             absl::StrCat("filled '", s.name, "' from its tied partner '", tied_from, "'"), 1,
             tied_from, s.name);
    }
    result.tensors.push_back(std::move(m));
  }
  for (const auto& [dtypes, n] : casts) {
    AddFix(report, "cast",
           absl::StrCat("cast ", n, n == 1 ? " tensor " : " tensors ", dtypes.first, " -> ",
                        dtypes.second),
           n, dtypes.first, dtypes.second);
  }

  std::vector<std::string> unexpected;
  for (size_t i = 0; i < n_keys; ++i) {
    if (key_to_spec[i] < 0) unexpected.push_back(c.tensors[i].name);
  }
  for (const std::string& u : unexpected) report->add_unexpected_keys(u);
  if (!unexpected.empty()) {
    if (policy.unexpected() == v1::NormalizationPolicy::UNEXPECTED_REJECT) {
      AddReason(report, "unexpected_keys");
    } else {
      AddFix(report, "drop_unexpected",
             absl::StrCat("dropped ", unexpected.size(), " unexpected key",
                          unexpected.size() == 1 ? "" : "s"),
             static_cast<int64_t>(unexpected.size()));
    }
  }
  if (report->missing_keys_size() > 0) AddReason(report, "missing_keys");
  if (report->shape_mismatches_size() > 0) AddReason(report, "shape_mismatch");

  // ---- shared storages and ties ----
  std::map<int, std::vector<size_t>> by_storage;
  for (size_t k = 0; k < result.tensors.size(); ++k) {
    const TensorRecord* rec = result.tensors[k].source;
    if (rec != nullptr && rec->storage_index >= 0) by_storage[rec->storage_index].push_back(k);
  }
  for (const auto& [storage, members] : by_storage) {
    if (members.size() < 2) continue;
    v1::SharedStorage* shared = report->add_shared_storages();
    for (size_t k : members) shared->add_names(result.tensors[k].name);
    for (size_t a = 1; a < members.size(); ++a) {
      MatchedTensor& later = result.tensors[members[a]];
      for (size_t b = 0; b < a; ++b) {
        const MatchedTensor& first = result.tensors[members[b]];
        if (first.tied_to < 0 && first.source->dtype == later.source->dtype &&
            first.source->shape == later.source->shape &&
            first.source->strides == later.source->strides &&
            first.source->storage_offset == later.source->storage_offset &&
            first.out_dtype == later.out_dtype) {
          later.tied_to = static_cast<int>(members[b]);
          break;
        }
      }
    }
  }

  int64_t total = 0;
  for (const MatchedTensor& m : result.tensors) total += static_cast<int64_t>(m.out_nbytes());
  report->set_tensor_count(static_cast<int64_t>(result.tensors.size()));
  report->set_total_bytes(total);
  result.invalid = !report->reasons().empty();
  return result;
}

}  // namespace weightgate::statedict
