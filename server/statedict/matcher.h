// The matcher decides which tensors of a parsed checkpoint become which
// tensors of a model's spec, without touching a tensor byte (except to tell
// whether two candidate readings hold identical values). It finds the
// state_dict inside the checkpoint (container), strips or adds wrapper and
// attribute prefixes, applies the policy's rename rules, the legacy
// gamma/beta renames and the opt-in positional remap, then compares names,
// shapes and dtypes against the spec.
//
// It never guesses. Automatic repairs are the known wrappers, one leading
// training attribute (kTrainingAttributes, kEmaAttributes) and adding the
// spec's own common root; among the readings they allow, the one matching
// the most (name, shape) pairs of the spec wins, with deterministic
// tie-breaks. Two best readings that select different tensors (teacher /
// student, raw / EMA, two containers) are INVALID `ambiguous_match`, each
// named with the flag that selects it; identical tensors are reported as
// equal. A reading that needs an arbitrary root swap is INVALID
// `prefix_rename_needed` with the --rename rule that does it (or
// prefixes ANY). The runner-up is reported only when it is a real
// alternative (other tensors, at least half the winner's score).
//
// Everything here is pure logic over checkpoint::Value trees: no libtorch, no
// I/O. Numeric checks (NaN/Inf) and writing happen in normalizer.cc.
#ifndef WEIGHTGATE_SERVER_STATEDICT_MATCHER_H_
#define WEIGHTGATE_SERVER_STATEDICT_MATCHER_H_

#include <array>
#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "server/checkpoint/dtype.h"
#include "server/checkpoint/value.h"
#include "server/statedict/renamer.h"
#include "weightgate/v1/types.pb.h"

namespace weightgate::statedict {

// Keys under which training scripts keep the state_dict, in the order tried
// (after the top level). One level of nesting is tried too ("model.state_dict").
inline constexpr std::array<absl::string_view, 8> kContainerKeys = {
    "state_dict", "model_state_dict", "model",     "module",
    "net",        "state_dict_ema",   "model_ema", "ema"};

// Leading attributes that training wrappers put in front of the model's own
// keys (Lightning's self.model / self.net, and their EMA copies). Stripping
// one is an automatic repair; any other root is not (prefix_rename_needed).
inline constexpr std::array<absl::string_view, 2> kTrainingAttributes = {"model", "net"};
inline constexpr std::array<absl::string_view, 4> kEmaAttributes = {"model_ema", "ema", "ema_model",
                                                                    "net_ema"};
// Container keys that hold EMA weights.
inline constexpr std::array<absl::string_view, 3> kEmaContainerKeys = {"state_dict_ema",
                                                                       "model_ema", "ema"};

// Key components that wrappers insert: DataParallel/DDP, torch.compile, FSDP,
// activation checkpointing. Stripping one removes every occurrence, because
// FSDP and compiled submodules put them at every level, not just in front.
inline constexpr std::array<absl::string_view, 4> kWrapperComponents = {
    "module", "_orig_mod", "_fsdp_wrapped_module", "_checkpoint_wrapped_module"};

// Caps on the candidate search, whatever the checkpoint: tensor keys over all
// containers tried, their bytes, and key lookups over all candidates scored
// (each candidate costs one lookup per key of its container). A checkpoint
// that needs more is INVALID `resource_limit`, naming the cap. A real
// state_dict of 100k tensors needs well under a tenth of each.
inline constexpr size_t kMaxMatchKeys = size_t{1} << 20;
inline constexpr uint64_t kMaxMatchKeyBytes = uint64_t{64} << 20;
inline constexpr uint64_t kMaxMatchWork = uint64_t{1} << 23;

// Spec keys that may be missing when policy.optional_keys is unset.
inline constexpr absl::string_view kDefaultOptionalGlob = "*.num_batches_tracked";

// One output tensor: a spec tensor and where its values come from.
struct MatchedTensor {
  std::string name;         // spec name: the key written to the output
  std::string source_name;  // key in the checkpoint, relative to the container
  // Source view; nullptr for an optional spec tensor filled with zeros.
  const checkpoint::TensorRecord* source = nullptr;
  checkpoint::DType source_dtype = checkpoint::DType::kF32;
  checkpoint::DType out_dtype = checkpoint::DType::kF32;
  std::vector<int64_t> shape;
  // Index of the first earlier MatchedTensor that is the very same view of
  // the same storage (tied weights), or -1.
  int tied_to = -1;

  bool cast() const { return source != nullptr && source_dtype != out_dtype; }
  uint64_t out_nbytes() const;
};

struct MatchResult {
  // Spec order. Empty when nothing usable was found.
  std::vector<MatchedTensor> tensors;
  // True when the report already has a rejection reason; numeric checks
  // still run (to report non-finite values) but nothing is written.
  bool invalid = false;
};

// Matches `root` (the checkpoint's object tree) against `spec` under
// `policy` and fills report fields: container_path, fixes, reasons,
// missing_keys, unexpected_keys, shape_mismatches, dtype_mismatches,
// shared_storages, winner, runner_up, tensor_count, total_bytes. Verdict is
// left to the caller (numeric checks may still add reasons).
//
// Errors only for a policy that cannot be applied (a rename rule that is not
// valid RE2 or breaks a cap, see renamer.h) and for cancellation; checkpoint
// problems, including one that needs more than the caps above, are report
// reasons.
struct MatchOptions {
  // Polled during the candidate search; true stops the match with
  // Cancelled. Default: never.
  std::function<bool()> cancelled;
  // Whether two tensor views hold bitwise-identical values (same dtype and
  // shape assumed checked). Default: only the very same view of the same
  // storage counts as identical.
  std::function<bool(const checkpoint::TensorRecord&, const checkpoint::TensorRecord&)> same_bytes;
  // The caps above (lower them to test them).
  size_t max_keys = kMaxMatchKeys;
  uint64_t max_key_bytes = kMaxMatchKeyBytes;
  uint64_t max_work = kMaxMatchWork;
};

absl::StatusOr<MatchResult> MatchStateDict(const checkpoint::Value* root,
                                           const weightgate::v1::ModelSpec& spec,
                                           const weightgate::v1::NormalizationPolicy& policy,
                                           weightgate::v1::ValidationReport* report,
                                           const MatchOptions& options = {});

// The value at dotted `path` under `root` through dict keys ("" = root);
// nullptr when absent.
const checkpoint::Value* ResolveContainer(const checkpoint::Value* root, absl::string_view path);

// The state_dict of a reference checkpoint: the first of kContainerKeys (and
// "tensors" for JSON specs) that holds tensors, else the top level. Names are
// kept as they are. Sets *container_path.
std::vector<checkpoint::NamedTensor> ReferenceTensors(const checkpoint::Value* root,
                                                      std::string* container_path);

// Verdict from the report's reasons and fixes: INVALID with any reason,
// NORMALIZED with any fix, else VALID.
weightgate::v1::Verdict VerdictOf(const weightgate::v1::ValidationReport& report);

// Adds `reason` to report.reasons unless it is there already.
void AddReason(weightgate::v1::ValidationReport* report, std::string_view reason);

}  // namespace weightgate::statedict

#endif  // WEIGHTGATE_SERVER_STATEDICT_MATCHER_H_
