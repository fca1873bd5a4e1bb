// The key pipeline after prefix handling: a model policy's rename rules, in
// order, then (when asked) the legacy gamma/beta -> weight/bias renames.
// Results are memoised because many candidate readings of one checkpoint
// produce the same keys.
//
// Not thread-safe: one Renamer per match.
#ifndef WEIGHTGATE_SERVER_STATEDICT_RENAMER_H_
#define WEIGHTGATE_SERVER_STATEDICT_RENAMER_H_

#include <regex>
#include <string>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "weightgate/v1/types.pb.h"

namespace weightgate::statedict {

class Renamer final {
 public:
  struct Result {
    std::string name;
    bool renamed_by_rule = false;
    bool renamed_gamma_beta = false;
  };

  // `spec_index` (spec name -> position; not owned, must outlive the
  // Renamer) decides where gamma/beta renames apply. InvalidArgument for a
  // rule that does not compile.
  static absl::StatusOr<Renamer> Create(const weightgate::v1::NormalizationPolicy& policy,
                                        const absl::flat_hash_map<std::string, int>* spec_index);

  // No rules and no legacy renames: every key maps to itself, and callers
  // skip the memo (which would otherwise hold every key of every candidate).
  bool identity() const { return rules_.empty() && !legacy_gamma_beta_; }

  const Result& Rename(const std::string& key);

 private:
  std::vector<std::pair<std::regex, std::string>> rules_;
  bool legacy_gamma_beta_ = false;
  const absl::flat_hash_map<std::string, int>* spec_index_ = nullptr;
  absl::flat_hash_map<std::string, Result> memo_;
};

// Applies `policy.rename_rules` in order to `key`; the regex syntax is
// ECMAScript (std::regex) and the replacement uses $1..$9 and $&.
absl::StatusOr<std::string> ApplyRenameRules(const weightgate::v1::NormalizationPolicy& policy,
                                             const std::string& key);

}  // namespace weightgate::statedict

#endif  // WEIGHTGATE_SERVER_STATEDICT_RENAMER_H_
