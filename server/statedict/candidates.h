// Internal to server/statedict: the candidate readings of a checkpoint that
// the matcher chooses among. A candidate is a container (where the
// state_dict sits) and a prefix transform (wrapper components removed, one
// leading attribute stripped, one component added); it is scored by how many
// (name, shape) pairs of the spec its keys match.
//
// The search is bounded whatever the checkpoint: containers that are the
// same dict are read once, each container gets a small fixed set of
// transforms (two wrapper masks, a few strips, at most one add), and every
// candidate costs one hash lookup per key, counted against kMaxMatchWork.
#ifndef WEIGHTGATE_SERVER_STATEDICT_CANDIDATES_H_
#define WEIGHTGATE_SERVER_STATEDICT_CANDIDATES_H_

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "server/checkpoint/dtype.h"
#include "server/checkpoint/value.h"
#include "server/statedict/matcher.h"
#include "server/statedict/renamer.h"
#include "weightgate/v1/types.pb.h"

namespace weightgate::statedict {

// One expected tensor, decoded from the spec proto.
struct SpecTensor {
  std::string name;
  std::optional<checkpoint::DType> dtype;
  std::vector<int64_t> shape;
};

// The spec, in order, with a name -> position index.
struct SpecIndex {
  std::vector<SpecTensor> tensors;
  absl::flat_hash_map<std::string, int> index;
  // Per tensor: may be missing (policy optional_keys), so it does not count
  // when readings are compared for ambiguity.
  std::vector<char> optional;
};

// A dict under the checkpoint's root that holds tensors.
struct Container {
  std::string path;  // dotted; "" = the root
  const checkpoint::Value* value = nullptr;
  std::vector<checkpoint::NamedTensor> tensors;
};

// Why a transform strips its leading component.
enum class StripKind {
  kNone,
  kKnownWrapper,       // a leading wrapper component kept elsewhere
  kTrainingAttribute,  // Lightning's model./net., EMA attributes
  kChosen,             // policy.key_prefix
  kArbitrary,          // anything else: allowed only with prefixes ANY
};

// A prefix transform: wrapper components removed everywhere, then one leading
// attribute component stripped (keys without it are left alone, or, when
// `exclusive`, not used), then one component prepended.
struct Transform {
  uint32_t wrapper_mask = 0;  // bits index kWrapperComponents
  std::string strip;
  std::string add;
  StripKind strip_kind = StripKind::kNone;
  bool exclusive = false;

  int ops() const;
  std::string Describe() const;
  std::string Apply(absl::string_view key) const;
  // False for a key an exclusive transform leaves out.
  bool Selects(absl::string_view key) const;
};

struct Scored {
  size_t container = 0;  // index into the container list
  Transform transform;
  std::string description;
  int64_t matched = 0;
  int64_t required = 0;  // matched spec tensors that are not optional
  int64_t leftover = 0;
  uint64_t signature = 0;  // which keys map to which spec tensors
  bool ema = false;        // an EMA container or attribute
  // Within what the policy allows without a flag (or with the flags given).
  bool allowed = true;
};

// A candidate worth reporting beside the winner.
struct Alternative {
  Scored candidate;
  std::string select_flag;
  bool equal_to_winner = false;
};

struct SearchOutcome {
  enum class Decision {
    kChosen,              // `winner` is the reading
    kAmbiguous,           // alternatives explain the spec equally well, differently
    kPrefixRenameNeeded,  // only a reading the policy does not allow explains it
  };
  Decision decision = Decision::kChosen;
  Scored winner;
  // Only for kChosen: the best real alternative that selects other tensors.
  std::optional<Scored> runner_up;
  std::vector<Alternative> alternatives;
  // For kAmbiguous and kPrefixRenameNeeded: what to tell the user.
  std::string message;
};

absl::string_view FirstComponent(absl::string_view key);

// The value at key `key` of dict `v`; nullptr when `v` is no dict or lacks it.
const checkpoint::Value* DictGet(const checkpoint::Value* v, absl::string_view key);

// The containers to try: the policy's explicit path, or the root and the
// usual container keys one and two levels deep; only those holding tensors,
// and each dict once (the first path that reaches it). ResourceExhausted
// past kMaxMatchKeys / kMaxMatchKeyBytes.
absl::StatusOr<std::vector<Container>> FindContainers(
    const checkpoint::Value* root, const weightgate::v1::NormalizationPolicy& policy,
    const MatchOptions& options);

// Scores every candidate and decides. Candidates the policy allows compete
// on score (ties: fewer leftover keys, fewer transform steps, raw before EMA,
// container order, description); when the best of them select different
// tensors (options.same_bytes decides), the match is ambiguous. A candidate
// outside the policy (an arbitrary root swap) only counts when it explains
// strictly more of the spec: then the policy needs a flag. Empty when
// policy.weights leaves no candidate. options.cancelled is polled between
// candidates. ResourceExhausted past options.max_work, Cancelled when asked
// to stop. REQUIRES: !containers.empty().
absl::StatusOr<std::optional<SearchOutcome>> SearchCandidates(
    const std::vector<Container>& containers, const SpecIndex& spec,
    const weightgate::v1::NormalizationPolicy& policy, Renamer& renamer,
    const MatchOptions& options);

}  // namespace weightgate::statedict

#endif  // WEIGHTGATE_SERVER_STATEDICT_CANDIDATES_H_
