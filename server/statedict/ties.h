// Tied weights: tensors a model holds once under several names (an LM head
// sharing the embedding). The spec records the ties its reference shows
// (same storage, offset, shape, strides and dtype); a checkpoint that omits
// one member of a tie (safetensors writers drop the duplicate) is filled
// from a present partner, which the report lists as a "fill_tied" fix and
// the output writers store as one shared tensor.
#ifndef WEIGHTGATE_SERVER_STATEDICT_TIES_H_
#define WEIGHTGATE_SERVER_STATEDICT_TIES_H_

#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "server/checkpoint/value.h"
#include "weightgate/v1/types.pb.h"

namespace weightgate::statedict {

// Groups of two or more names among `tensors` that view the very same bytes
// the same way, in first-seen order.
std::vector<weightgate::v1::TieGroup> TiesFromTensors(
    const std::vector<checkpoint::NamedTensor>& tensors);

// name -> the other members of its tie group, from spec.ties().
absl::flat_hash_map<std::string, std::vector<std::string>> TiePartners(
    const weightgate::v1::ModelSpec& spec);

}  // namespace weightgate::statedict

#endif  // WEIGHTGATE_SERVER_STATEDICT_TIES_H_
