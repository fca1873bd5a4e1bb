// The key pipeline after prefix handling: a model policy's rename rules, in
// order, then (when asked) the legacy gamma/beta -> weight/bias renames.
//
// Rules are RE2 regular expressions (linear time in the key, whatever the
// pattern: no backtracking, no recursion), and every match in a key is
// replaced. The replacement may use $1..$9 (or \1..\9) for groups, $& (or
// \0) for the whole match, $$ and \\ for a literal '$' and '\'. Rules,
// patterns and replacements are capped, and so is what one key may turn
// into: a policy that breaks a cap is an InvalidArgument when it is
// registered; a key that breaks one while being renamed makes the match
// INVALID `resource_limit` (see status()).
//
// Results are memoised because many candidate readings of one checkpoint
// produce the same keys. Not thread-safe: one Renamer per match.
#ifndef WEIGHTGATE_SERVER_STATEDICT_RENAMER_H_
#define WEIGHTGATE_SERVER_STATEDICT_RENAMER_H_

#include <cstddef>
#include <memory>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "weightgate/v1/types.pb.h"

namespace re2 {
class RE2;
}  // namespace re2

namespace weightgate::statedict {

struct CompiledRenameRule;  // renamer.cc

// Caps on a policy's rename rules (checked when a model is registered and
// whenever a policy is applied).
inline constexpr size_t kMaxRenameRules = 64;
inline constexpr size_t kMaxRenamePatternBytes = 1024;
inline constexpr size_t kMaxRenameReplacementBytes = 1024;
// Memory RE2 may use for one compiled rule (program and DFA cache); a
// pattern whose program does not fit is refused at register time.
inline constexpr int64_t kMaxRenameRuleMemory = int64_t{1} << 20;
// Caps per key while renaming: matches one rule may replace, and how much
// longer than the original a key may grow.
inline constexpr size_t kMaxRenameMatchesPerKey = 256;
inline constexpr size_t kMaxRenameGrowthBytes = 4096;

class Renamer final {
 public:
  struct Result {
    std::string name;
    bool renamed_by_rule = false;
    bool renamed_gamma_beta = false;
  };

  // `spec_index` (spec name -> position; not owned, must outlive the
  // Renamer) decides where gamma/beta renames apply. InvalidArgument for a
  // rule that breaks a cap or does not compile.
  static absl::StatusOr<Renamer> Create(const weightgate::v1::NormalizationPolicy& policy,
                                        const absl::flat_hash_map<std::string, int>* spec_index);

  Renamer(Renamer&&) noexcept;
  Renamer& operator=(Renamer&&) noexcept;
  ~Renamer();

  // No rules and no legacy renames: every key maps to itself, and callers
  // skip the memo (which would otherwise hold every key of every candidate).
  bool identity() const { return rules_.empty() && !legacy_gamma_beta_; }

  // `key` renamed. A key that hits a per-key cap keeps its name and sets
  // status().
  const Result& Rename(const std::string& key);

  // OK, or ResourceExhausted naming the first per-key cap a key hit.
  const absl::Status& status() const { return status_; }

 private:
  Renamer();

  std::vector<CompiledRenameRule> rules_;
  bool legacy_gamma_beta_ = false;
  const absl::flat_hash_map<std::string, int>* spec_index_ = nullptr;
  absl::flat_hash_map<std::string, Result> memo_;
  absl::Status status_;
};

// OK when every rename rule of `policy` is within the caps, compiles, and
// its replacement names only groups the pattern has; else InvalidArgument
// saying which rule and why. RegisterModel calls it.
absl::Status ValidateRenameRules(const weightgate::v1::NormalizationPolicy& policy);

// Applies `policy.rename_rules` in order to `key` (the syntax above).
absl::StatusOr<std::string> ApplyRenameRules(const weightgate::v1::NormalizationPolicy& policy,
                                             const std::string& key);

}  // namespace weightgate::statedict

#endif  // WEIGHTGATE_SERVER_STATEDICT_RENAMER_H_
