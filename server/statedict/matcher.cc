#include "server/statedict/matcher.h"

#include <fnmatch.h>

#include <algorithm>
#include <map>
#include <optional>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "server/statedict/candidates.h"
#include "server/statedict/ties.h"

namespace weightgate::statedict {
namespace {

using checkpoint::DType;
using checkpoint::NamedTensor;
using checkpoint::TensorRecord;
using checkpoint::Value;
namespace v1 = weightgate::v1;

// Debian's abseil keeps its own string_view; dtype names come as std's.
std::string DN(DType d) { return std::string(checkpoint::DTypeName(d)); }

int64_t Numel(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

bool IsComplex(DType d) { return d == DType::kC64 || d == DType::kC128; }

bool Matches(const std::vector<std::string>& globs, const std::string& name) {
  for (const std::string& g : globs) {
    if (::fnmatch(g.c_str(), name.c_str(), 0) == 0) return true;
  }
  return false;
}

void FillCandidate(const Scored& s, const std::vector<Container>& containers, v1::Candidate* out) {
  out->set_container(containers[s.container].path);
  out->set_transform(s.description);
  out->set_matched(s.matched);
  out->set_leftover(s.leftover);
  out->set_weights(s.ema ? "ema" : "raw");
}

// The origin of a strip, for Fix.origin and the fix's detail.
const char* OriginOf(StripKind kind) {
  switch (kind) {
    case StripKind::kKnownWrapper: return "known_wrapper";
    case StripKind::kTrainingAttribute: return "training_attribute";
    case StripKind::kChosen: return "chosen_prefix";
    case StripKind::kArbitrary: return "any_prefix";
    case StripKind::kNone: break;
  }
  return "";
}

std::string Spaced(absl::string_view origin) {
  std::string out(origin);
  std::replace(out.begin(), out.end(), '_', ' ');
  return out;
}

v1::Fix* AddFix(v1::ValidationReport* report, absl::string_view kind, std::string detail,
                int64_t count, std::string from = "", std::string to = "",
                absl::string_view origin = "") {
  v1::Fix* fix = report->add_fixes();
  fix->set_origin(std::string(origin));
  if (!origin.empty()) absl::StrAppend(&detail, " (", Spaced(origin), ")");
  fix->set_kind(std::string(kind));
  fix->set_detail(std::move(detail));
  fix->set_count(count);
  fix->set_from(std::move(from));
  fix->set_to(std::move(to));
  return fix;
}

// Everything one MatchStateDict call works on; the phases below fill it in
// order.
struct MatchContext {
  MatchContext(const v1::NormalizationPolicy& p, const MatchOptions& o, v1::ValidationReport* r)
      : policy(p), options(o), report(r) {}

  const v1::NormalizationPolicy& policy;
  const MatchOptions& options;
  v1::ValidationReport* report;
  SpecIndex spec;
  std::optional<Renamer> renamer;
  std::vector<std::string> optional_globs;
  std::vector<Container> containers;
  // The winning candidate and its container.
  Scored winner;
  const Container* container = nullptr;
  // Per key of the container: the key after the prefix transform, after
  // renames, and the spec tensor it fills (-1 = none).
  std::vector<std::string> prefixed;
  std::vector<std::string> final_names;
  std::vector<int> key_to_spec;
  // Per spec tensor: the key that fills it (-1 = none).
  std::vector<int> spec_to_key;
  // Spec name -> the other members of its tie group (ties.h).
  absl::flat_hash_map<std::string, std::vector<std::string>> tie_partners;
  MatchResult result;
};

absl::Status IndexSpec(const v1::ModelSpec& spec_proto, MatchContext& ctx) {
  ctx.tie_partners = TiePartners(spec_proto);
  for (const v1::TensorSpec& t : spec_proto.tensors()) {
    ctx.spec.tensors.push_back({t.name(), checkpoint::DTypeFromName(t.dtype()),
                                std::vector<int64_t>(t.shape().begin(), t.shape().end())});
    ctx.spec.index.emplace(t.name(), static_cast<int>(ctx.spec.tensors.size() - 1));
  }
  absl::StatusOr<Renamer> renamer = Renamer::Create(ctx.policy, &ctx.spec.index);
  if (!renamer.ok()) return renamer.status();
  ctx.renamer.emplace(*std::move(renamer));
  if (ctx.policy.has_optional_keys()) {
    ctx.optional_globs.assign(ctx.policy.optional_keys().values().begin(),
                              ctx.policy.optional_keys().values().end());
  } else {
    ctx.optional_globs.emplace_back(kDefaultOptionalGlob);
  }
  for (const SpecTensor& s : ctx.spec.tensors) {
    ctx.spec.optional.push_back(Matches(ctx.optional_globs, s.name) ? 1 : 0);
  }
  return absl::OkStatus();
}

// Picks the winning (container, transform), or decides that the policy must
// choose (ambiguous_match, prefix_rename_needed). False when the report is
// final.
absl::StatusOr<bool> ChooseCandidate(MatchContext& ctx) {
  absl::StatusOr<std::optional<SearchOutcome>> searched =
      SearchCandidates(ctx.containers, ctx.spec, ctx.policy, *ctx.renamer, ctx.options);
  if (!searched.ok()) return searched.status();
  v1::ValidationReport* report = ctx.report;
  if (!searched->has_value()) {
    AddReason(report, "no_state_dict");
    report->set_error(absl::StrCat(
        "no ", ctx.policy.weights() == v1::NormalizationPolicy::WEIGHTS_EMA ? "EMA" : "raw",
        " weights in the checkpoint (policy weights)"));
    for (const SpecTensor& s : ctx.spec.tensors) report->add_missing_keys(s.name);
    ctx.result.invalid = true;
    return false;
  }
  SearchOutcome& outcome = **searched;
  ctx.winner = std::move(outcome.winner);
  ctx.container = &ctx.containers[ctx.winner.container];
  FillCandidate(ctx.winner, ctx.containers, report->mutable_winner());
  for (const Alternative& alt : outcome.alternatives) {
    v1::Candidate* c = report->add_alternatives();
    FillCandidate(alt.candidate, ctx.containers, c);
    c->set_select_flag(alt.select_flag);
    c->set_equal_to_winner(alt.equal_to_winner);
  }
  if (outcome.decision != SearchOutcome::Decision::kChosen) {
    AddReason(report, outcome.decision == SearchOutcome::Decision::kAmbiguous
                          ? "ambiguous_match"
                          : "prefix_rename_needed");
    report->set_error(outcome.message);
    report->set_container_path(ctx.container->path);
    ctx.result.invalid = true;
    return false;
  }
  if (outcome.runner_up.has_value()) {
    FillCandidate(*outcome.runner_up, ctx.containers, report->mutable_runner_up());
  }
  return true;
}

// One fix per step of the winning transform (container, wrappers, strip,
// add).
void ReportTransform(MatchContext& ctx) {
  const Container& c = *ctx.container;
  const Transform& t = ctx.winner.transform;
  v1::ValidationReport* report = ctx.report;
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
           absl::StrCat(kWrapperComponents[w], "."), "", "known_wrapper");
  }
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
           absl::StrCat(t.strip, "."), "", OriginOf(t.strip_kind));
  }
  if (!t.add.empty()) {
    int64_t n = static_cast<int64_t>(c.tensors.size());
    AddFix(report, "add_prefix", absl::StrCat("added '", t.add, ".' to ", n, " keys"), n, "",
           absl::StrCat(t.add, "."), "spec_root");
  }
}

// Claims spec tensors by name: shape-matching keys first, so a duplicate with
// the wrong shape never hides a good one; then name-only matches (reported
// later as mismatches). Reports each rename that filled a spec tensor.
void ClaimByName(MatchContext& ctx) {
  const Container& c = *ctx.container;
  const size_t n_keys = c.tensors.size();
  ctx.prefixed.reserve(n_keys);
  for (const NamedTensor& nt : c.tensors)
    ctx.prefixed.push_back(ctx.winner.transform.Apply(nt.name));
  ctx.key_to_spec.assign(n_keys, -1);
  ctx.spec_to_key.assign(ctx.spec.tensors.size(), -1);
  ctx.final_names.resize(n_keys);
  for (size_t i = 0; i < n_keys; ++i)
    ctx.final_names[i] = ctx.renamer->Rename(ctx.prefixed[i]).name;
  for (int pass = 0; pass < 2; ++pass) {
    for (size_t i = 0; i < n_keys; ++i) {
      if (ctx.key_to_spec[i] >= 0 || !ctx.winner.transform.Selects(c.tensors[i].name)) continue;
      auto it = ctx.spec.index.find(ctx.final_names[i]);
      if (it == ctx.spec.index.end() || ctx.spec_to_key[it->second] >= 0) continue;
      if (pass == 0 && c.tensors[i].tensor->shape != ctx.spec.tensors[it->second].shape) continue;
      ctx.key_to_spec[i] = it->second;
      ctx.spec_to_key[it->second] = static_cast<int>(i);
    }
  }
  for (size_t i = 0; i < n_keys; ++i) {
    if (ctx.key_to_spec[i] < 0) continue;
    const Renamer::Result& r = ctx.renamer->Rename(ctx.prefixed[i]);
    if (r.renamed_by_rule || r.renamed_gamma_beta) {
      const bool legacy = r.renamed_gamma_beta && !r.renamed_by_rule;
      AddFix(ctx.report, "rename",
             absl::StrCat("renamed '", ctx.prefixed[i], "' -> '", r.name, "'"), 1, ctx.prefixed[i],
             r.name, legacy ? "legacy_rename" : "user_rule");
    }
  }
}

// Opt-in: unclaimed keys fill unclaimed spec tensors in order when their
// shapes agree one for one (first counting optional spec tensors, then
// without them).
void ClaimByPosition(MatchContext& ctx) {
  if (!ctx.policy.positional_remap()) return;
  const Container& c = *ctx.container;
  std::vector<size_t> free_keys;
  for (size_t i = 0; i < c.tensors.size(); ++i) {
    if (ctx.key_to_spec[i] < 0) free_keys.push_back(i);
  }
  for (int attempt = 0; attempt < 2 && !free_keys.empty(); ++attempt) {
    std::vector<size_t> free_spec;
    for (size_t j = 0; j < ctx.spec.tensors.size(); ++j) {
      if (ctx.spec_to_key[j] >= 0) continue;
      if (attempt == 1 && Matches(ctx.optional_globs, ctx.spec.tensors[j].name)) continue;
      free_spec.push_back(j);
    }
    if (free_spec.size() != free_keys.size()) continue;
    bool same = true;
    for (size_t k = 0; k < free_spec.size() && same; ++k) {
      same = c.tensors[free_keys[k]].tensor->shape == ctx.spec.tensors[free_spec[k]].shape;
    }
    if (!same) continue;
    for (size_t k = 0; k < free_spec.size(); ++k) {
      ctx.key_to_spec[free_keys[k]] = static_cast<int>(free_spec[k]);
      ctx.spec_to_key[free_spec[k]] = static_cast<int>(free_keys[k]);
      AddFix(ctx.report, "positional_remap",
             absl::StrCat("mapped '", c.tensors[free_keys[k]].name, "' -> '",
                          ctx.spec.tensors[free_spec[k]].name, "' by position"),
             1, c.tensors[free_keys[k]].name, ctx.spec.tensors[free_spec[k]].name);
    }
    break;
  }
}

// Per spec tensor: missing (or filled when optional), shape and dtype
// checked, cast planned. Fills ctx.result.tensors in spec order.
void CheckSpecTensors(MatchContext& ctx) {
  v1::ValidationReport* report = ctx.report;
  std::map<std::pair<std::string, std::string>, int64_t> casts;
  for (size_t j = 0; j < ctx.spec.tensors.size(); ++j) {
    const SpecTensor& s = ctx.spec.tensors[j];
    int i = ctx.spec_to_key[j];
    std::string tied_from;  // a tie member the checkpoint omits is its partner (ties.h)
    if (auto p = i < 0 ? ctx.tie_partners.find(s.name) : ctx.tie_partners.end();
        p != ctx.tie_partners.end()) {
      for (const std::string& partner : p->second) {
        auto pj = ctx.spec.index.find(partner);
        if (pj != ctx.spec.index.end() && ctx.spec_to_key[pj->second] >= 0) {
          i = ctx.spec_to_key[pj->second];
          tied_from = partner;
          break;
        }
      }
    }
    if (i < 0) {
      if (Matches(ctx.optional_globs, s.name) && s.dtype.has_value()) {
        MatchedTensor m;
        m.name = s.name;
        m.out_dtype = *s.dtype;
        m.source_dtype = *s.dtype;
        m.shape = s.shape;
        ctx.result.tensors.push_back(std::move(m));
        AddFix(report, "fill_optional", absl::StrCat("filled optional '", s.name, "' with zeros"),
               1, "", s.name);
      } else {
        report->add_missing_keys(s.name);
      }
      continue;
    }
    const NamedTensor& nt = ctx.container->tensors[i];
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
      if (ctx.policy.dtype() == v1::NormalizationPolicy::DTYPE_CAST && castable) {
        m.out_dtype = *s.dtype;
        ++casts[{DN(rec.dtype), DN(*s.dtype)}];
      } else {
        v1::Mismatch* mm = report->add_dtype_mismatches();
        mm->set_name(s.name);
        mm->mutable_expected_shape()->Assign(s.shape.begin(), s.shape.end());
        mm->mutable_actual_shape()->Assign(rec.shape.begin(), rec.shape.end());
        mm->set_expected_dtype(DN(*s.dtype));
        mm->set_actual_dtype(DN(rec.dtype));
        if (ctx.policy.dtype() != v1::NormalizationPolicy::DTYPE_KEEP || !castable) {
          AddReason(report, "dtype_mismatch");
        }
      }
    }
    if (!tied_from.empty()) {
      AddFix(report, "fill_tied",
             absl::StrCat("filled '", s.name, "' from its tied partner '", tied_from, "'"), 1,
             tied_from, s.name);
    }
    ctx.result.tensors.push_back(std::move(m));
  }
  for (const auto& [dtypes, n] : casts) {
    AddFix(report, "cast",
           absl::StrCat("cast ", n, n == 1 ? " tensor " : " tensors ", dtypes.first, " -> ",
                        dtypes.second),
           n, dtypes.first, dtypes.second);
  }
}

// Keys nothing claimed: dropped or rejected; then the reasons of the spec
// side.
void ReportLeftovers(MatchContext& ctx) {
  v1::ValidationReport* report = ctx.report;
  std::vector<std::string> unexpected;
  for (size_t i = 0; i < ctx.key_to_spec.size(); ++i) {
    if (ctx.key_to_spec[i] < 0) unexpected.push_back(ctx.container->tensors[i].name);
  }
  for (const std::string& u : unexpected) report->add_unexpected_keys(u);
  if (!unexpected.empty()) {
    if (ctx.policy.unexpected() == v1::NormalizationPolicy::UNEXPECTED_REJECT) {
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
}

// Members of a spec tie that the checkpoint holds as separate copies with
// equal bytes (a safetensors file that kept both names, a fetched file with
// tied names written out) are tied too, so every form of the same weights is
// stored alike: once.
void TieEqualSpecTies(MatchContext& ctx) {
  if (ctx.tie_partners.empty() || !ctx.options.same_bytes) return;
  std::vector<MatchedTensor>& tensors = ctx.result.tensors;
  absl::flat_hash_map<std::string, size_t> index;
  for (size_t k = 0; k < tensors.size(); ++k) index.emplace(tensors[k].name, k);
  for (size_t k = 0; k < tensors.size(); ++k) {
    MatchedTensor& later = tensors[k];
    if (later.tied_to >= 0 || later.source == nullptr) continue;
    auto partners = ctx.tie_partners.find(later.name);
    if (partners == ctx.tie_partners.end()) continue;
    // The earliest untied partner in output order, as TieSharedStorages picks.
    const MatchedTensor* first = nullptr;
    size_t first_k = k;
    for (const std::string& p : partners->second) {
      auto it = index.find(p);
      if (it == index.end() || it->second >= first_k) continue;
      first_k = it->second;
      first = &tensors[first_k];
    }
    if (first == nullptr || first->tied_to >= 0 || first->source == nullptr) continue;
    if (first->source->dtype == later.source->dtype &&
        first->source->shape == later.source->shape && first->out_dtype == later.out_dtype &&
        ctx.options.same_bytes(*first->source, *later.source)) {
      later.tied_to = static_cast<int>(first_k);
    }
  }
}

// Output tensors that share a storage are reported; identical views of one
// storage are tied so the output keeps them as one.
void TieSharedStorages(MatchContext& ctx) {
  std::vector<MatchedTensor>& tensors = ctx.result.tensors;
  std::map<int, std::vector<size_t>> by_storage;
  for (size_t k = 0; k < tensors.size(); ++k) {
    const TensorRecord* rec = tensors[k].source;
    if (rec != nullptr && rec->storage_index >= 0) by_storage[rec->storage_index].push_back(k);
  }
  for (const auto& [storage, members] : by_storage) {
    if (members.size() < 2) continue;
    v1::SharedStorage* shared = ctx.report->add_shared_storages();
    for (size_t k : members) shared->add_names(tensors[k].name);
    for (size_t a = 1; a < members.size(); ++a) {
      MatchedTensor& later = tensors[members[a]];
      for (size_t b = 0; b < a; ++b) {
        const MatchedTensor& first = tensors[members[b]];
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
}

void Summarize(MatchContext& ctx) {
  int64_t total = 0;
  // A tied tensor's bytes are counted (and stored) once.
  for (const MatchedTensor& m : ctx.result.tensors) {
    if (m.tied_to < 0) total += static_cast<int64_t>(m.out_nbytes());
  }
  ctx.report->set_tensor_count(static_cast<int64_t>(ctx.result.tensors.size()));
  ctx.report->set_total_bytes(total);
  ctx.result.invalid = !ctx.report->reasons().empty();
}

// INVALID `resource_limit` for a cap the checkpoint hit; other errors are
// returned.
absl::Status LimitHit(MatchContext& ctx, const absl::Status& status) {
  if (!absl::IsResourceExhausted(status)) return status;
  AddReason(ctx.report, "resource_limit");
  ctx.report->set_error(std::string(status.message()));
  ctx.result.tensors.clear();
  ctx.result.invalid = true;
  return absl::OkStatus();
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

void AddReason(v1::ValidationReport* report, std::string_view reason) {
  for (const std::string& r : report->reasons()) {
    if (r == reason) return;
  }
  report->add_reasons(std::string(reason));
}

v1::Verdict VerdictOf(const v1::ValidationReport& report) {
  if (!report.reasons().empty()) return v1::INVALID;
  if (!report.fixes().empty()) return v1::NORMALIZED;
  return v1::VALID;
}

absl::StatusOr<MatchResult> MatchStateDict(const Value* root, const v1::ModelSpec& spec_proto,
                                           const v1::NormalizationPolicy& policy,
                                           v1::ValidationReport* report,
                                           const MatchOptions& options) {
  MatchContext ctx(policy, options, report);
  if (absl::Status s = IndexSpec(spec_proto, ctx); !s.ok()) return s;
  absl::StatusOr<std::vector<Container>> containers = FindContainers(root, policy, options);
  if (!containers.ok()) {
    if (absl::Status s = LimitHit(ctx, containers.status()); !s.ok()) return s;
    return std::move(ctx.result);
  }
  ctx.containers = *std::move(containers);
  if (ctx.containers.empty()) {
    AddReason(report, "no_state_dict");
    ctx.result.invalid = true;
    for (const SpecTensor& s : ctx.spec.tensors) report->add_missing_keys(s.name);
    return std::move(ctx.result);
  }
  absl::StatusOr<bool> chosen = ChooseCandidate(ctx);
  if (!chosen.ok()) {
    if (absl::Status e = LimitHit(ctx, chosen.status()); !e.ok()) return e;
    return std::move(ctx.result);
  }
  if (!*chosen) return std::move(ctx.result);
  ReportTransform(ctx);
  ClaimByName(ctx);
  if (!ctx.renamer->status().ok()) {
    // A key the rename rules could not rename within their caps: no reading
    // of this checkpoint can be trusted.
    report->clear_fixes();
    LimitHit(ctx, ctx.renamer->status()).IgnoreError();
    return std::move(ctx.result);
  }
  ClaimByPosition(ctx);
  CheckSpecTensors(ctx);
  ReportLeftovers(ctx);
  TieSharedStorages(ctx);
  TieEqualSpecTies(ctx);
  Summarize(ctx);
  return std::move(ctx.result);
}

}  // namespace weightgate::statedict
