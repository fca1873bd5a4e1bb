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
};

// A dict under the checkpoint's root that holds tensors.
struct Container {
  std::string path;  // dotted; "" = the root
  const checkpoint::Value* value = nullptr;
  std::vector<checkpoint::NamedTensor> tensors;
};

// A prefix transform: wrapper components removed everywhere, then one leading
// attribute component stripped (keys without it are left alone), then one
// component prepended.
struct Transform {
  uint32_t wrapper_mask = 0;  // bits index kWrapperComponents
  std::string strip;
  std::string add;

  int ops() const;
  std::string Describe() const;
  std::string Apply(absl::string_view key) const;
};

struct Scored {
  size_t container = 0;  // index into the container list
  Transform transform;
  std::string description;
  int64_t matched = 0;
  int64_t leftover = 0;
  uint64_t signature = 0;  // which keys map to which spec tensors
};

// The winner of a candidate search and the best candidate that maps tensors
// differently (absent when there is none).
struct SearchOutcome {
  Scored winner;
  std::optional<Scored> runner_up;
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

// Scores every candidate and picks the best. options.cancelled is polled
// between candidates. ResourceExhausted past options.max_work, Cancelled
// when asked to stop. REQUIRES: !containers.empty().
absl::StatusOr<SearchOutcome> SearchCandidates(const std::vector<Container>& containers,
                                               const SpecIndex& spec,
                                               const weightgate::v1::NormalizationPolicy& policy,
                                               Renamer& renamer, const MatchOptions& options);

}  // namespace weightgate::statedict

#endif  // WEIGHTGATE_SERVER_STATEDICT_CANDIDATES_H_
