#include "server/service/policy_check.h"

#include <set>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"

namespace weightgate::service {
namespace {

using weightgate::v1::NormalizationPolicy;

absl::Status Loosens(const std::string& field, const std::string& why) {
  return absl::PermissionDeniedError(
      absl::StrCat("policy override loosens the model's policy (", field, ": ", why,
                   "); only an admin may do that, or re-register the model with the new policy"));
}

// Strictness rank of the dtype mode: reject > cast > keep.
int DTypeRank(NormalizationPolicy::DTypeMode mode) {
  switch (mode) {
    case NormalizationPolicy::DTYPE_REJECT: return 2;
    case NormalizationPolicy::DTYPE_CAST: return 1;
    default: return 0;
  }
}

std::vector<std::string> OptionalKeys(const NormalizationPolicy& p) {
  if (!p.has_optional_keys()) return {"*.num_batches_tracked"};
  return {p.optional_keys().values().begin(), p.optional_keys().values().end()};
}

}  // namespace

absl::Status CheckOverrideOnlyTightens(const NormalizationPolicy& model,
                                       const NormalizationPolicy& req) {
  bool model_auto = model.container().empty() || model.container() == "auto";
  if (!model_auto && req.container() != model.container()) {
    return Loosens("container",
                   absl::StrCat("'", req.container(), "' instead of '", model.container(), "'"));
  }
  if (model.prefixes() == NormalizationPolicy::PREFIX_NONE &&
      req.prefixes() != NormalizationPolicy::PREFIX_NONE) {
    return Loosens("prefixes", "automatic prefix handling where the model uses keys as they are");
  }
  if (model.prefixes() != NormalizationPolicy::PREFIX_ANY &&
      req.prefixes() == NormalizationPolicy::PREFIX_ANY) {
    return Loosens("prefixes", "any root may be swapped for the spec's");
  }
  // Choosing raw or EMA weights where the model leaves it open only narrows
  // the readings; a key prefix strips a root the model does not.
  if (model.weights() != NormalizationPolicy::WEIGHTS_AUTO && req.weights() != model.weights()) {
    return Loosens("weights", "other weights than the model's policy selects");
  }
  if (req.key_prefix() != model.key_prefix()) {
    return Loosens("key_prefix",
                   absl::StrCat("'", req.key_prefix(), "' instead of '", model.key_prefix(), "'"));
  }
  if (req.rename_rules_size() != model.rename_rules_size()) {
    return Loosens("rename_rules", "different rename rules");
  }
  for (int i = 0; i < req.rename_rules_size(); ++i) {
    if (req.rename_rules(i).pattern() != model.rename_rules(i).pattern() ||
        req.rename_rules(i).replacement() != model.rename_rules(i).replacement()) {
      return Loosens("rename_rules", "different rename rules");
    }
  }
  if (req.legacy_gamma_beta() && !model.legacy_gamma_beta()) {
    return Loosens("legacy_gamma_beta", "turned on");
  }
  if (req.positional_remap() && !model.positional_remap()) {
    return Loosens("positional_remap", "turned on");
  }
  if (DTypeRank(req.dtype()) < DTypeRank(model.dtype())) {
    return Loosens(
        "dtype", absl::StrCat(NormalizationPolicy::DTypeMode_Name(req.dtype()), " is weaker than ",
                              NormalizationPolicy::DTypeMode_Name(model.dtype())));
  }
  std::vector<std::string> allowed = OptionalKeys(model);
  std::set<std::string> allowed_set(allowed.begin(), allowed.end());
  for (const std::string& pattern : OptionalKeys(req)) {
    if (!allowed_set.count(pattern)) {
      return Loosens("optional_keys", absl::StrCat("'", pattern, "' may be missing"));
    }
  }
  if (model.unexpected() == NormalizationPolicy::UNEXPECTED_REJECT &&
      req.unexpected() != NormalizationPolicy::UNEXPECTED_REJECT) {
    return Loosens("unexpected", "extra keys dropped where the model rejects them");
  }
  if (model.non_finite() == NormalizationPolicy::NONFINITE_REJECT &&
      req.non_finite() != NormalizationPolicy::NONFINITE_REJECT) {
    return Loosens("non_finite", "NaN/Inf allowed");
  }
  if (model.unknown_calls() == NormalizationPolicy::UNKNOWN_CALLS_REJECT &&
      req.unknown_calls() != NormalizationPolicy::UNKNOWN_CALLS_REJECT) {
    return Loosens("unknown_calls", "calls of unknown globals allowed");
  }
  return absl::OkStatus();
}

}  // namespace weightgate::service
