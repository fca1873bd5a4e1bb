#include "server/statedict/renamer.h"

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"

namespace weightgate::statedict {

namespace v1 = weightgate::v1;

absl::StatusOr<Renamer> Renamer::Create(const v1::NormalizationPolicy& policy,
                                        const absl::flat_hash_map<std::string, int>* spec_index) {
  Renamer r;
  r.spec_index_ = spec_index;
  r.legacy_gamma_beta_ = policy.legacy_gamma_beta();
  for (const v1::RenameRule& rule : policy.rename_rules()) {
    try {
      r.rules_.emplace_back(std::regex(rule.pattern(), std::regex::ECMAScript), rule.replacement());
    } catch (const std::regex_error& e) {
      return absl::InvalidArgumentError(
          absl::StrCat("rename rule '", rule.pattern(), "': invalid regex: ", e.what()));
    }
  }
  return r;
}

const Renamer::Result& Renamer::Rename(const std::string& key) {
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

absl::StatusOr<std::string> ApplyRenameRules(const v1::NormalizationPolicy& policy,
                                             const std::string& key) {
  absl::flat_hash_map<std::string, int> empty;
  v1::NormalizationPolicy rules_only;
  *rules_only.mutable_rename_rules() = policy.rename_rules();
  absl::StatusOr<Renamer> renamer = Renamer::Create(rules_only, &empty);
  if (!renamer.ok()) return renamer.status();
  return renamer->Rename(key).name;
}

}  // namespace weightgate::statedict
