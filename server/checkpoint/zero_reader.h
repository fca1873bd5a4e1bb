// DeepSpeed ZeRO checkpoints (stages 1, 2 and 3), from the directory holding
// `latest` or from the tag directory itself (`global_stepN/`):
//   *_model_states.pt   `module` (the module's state_dict, weights often
//                       half precision; stage 3 keeps only buffers),
//                       `param_shapes` (one ordered {name: shape} per param
//                       group), `buffer_names`, `shared_params` {name:
//                       partner}, `frozen_param_shapes` /
//                       `frozen_param_fragments`, `ds_version`; stage 3 has
//                       one per data-parallel rank.
//   *_optim_states.pt   per data-parallel rank: `optimizer_state_dict` with
//                       `zero_stage`, `partition_count` and the flat fp32
//                       partitions: `single_partition_of_fp32_groups` (one
//                       per group, stages 1-2) or `fp32_flat_groups` (3).
// With ZeroWeights::kFp32 (the default) the fp32 master weights are rebuilt
// as DeepSpeed's zero_to_fp32.py does: stages 1-2 concatenate each group's
// partitions across ranks and cut the group's parameters from it in order
// (the unused tail must be padding to 2 * world size); stage 3 concatenates
// each rank's groups, and every parameter takes ceil(numel / world) elements
// from each rank, the last padded. Buffers and frozen parameters come from
// the model states, shared parameters name their partner's tensor. With
// ZeroWeights::kModule the module weights are taken as saved (stages 1-2).
// The metadata says which ("zero_weights=fp32", "zero_stage=2", ...).
//
// The pickled deepspeed classes (LossScaler, ZeroStageEnum,
// fragment_address) are read as data and not reported as opaque.
// Inconsistent sets (a rank's file missing, partitions of different
// lengths, shapes needing more elements than the partitions hold) are
// InvalidArgumentError("zero: <reason>").
#ifndef WEIGHTGATE_SERVER_CHECKPOINT_ZERO_READER_H_
#define WEIGHTGATE_SERVER_CHECKPOINT_ZERO_READER_H_

#include <string>

#include "absl/status/statusor.h"
#include "server/checkpoint/checkpoint.h"

namespace weightgate::checkpoint {

// True when `dir` (or the tag its `latest` names) holds ZeRO model or
// optimizer state files.
bool LooksLikeZeroDirectory(const std::string& dir);

absl::StatusOr<Checkpoint> ReadZero(const std::string& dir, const ReadOptions& options = {});

}  // namespace weightgate::checkpoint

#endif  // WEIGHTGATE_SERVER_CHECKPOINT_ZERO_READER_H_
