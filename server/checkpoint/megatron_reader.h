// Megatron-LM tensor-parallel checkpoints: `latest_checkpointed_iteration.txt`
// naming `iter_NNNNNNN/` or `release/`, which holds one `mp_rank_XX/` (or
// `mp_rank_XX_YYY/` with pipeline stages) per rank with `model_optim_rng.pt`
// whose `model` holds the rank's slice of every parameter. Each tensor is
// merged across the ranks:
//  - a per-name override (ReadOptions::tp_merge_dims) wins;
//  - with the spec's shape (ReadOptions::expected_shape): ranks whose shapes
//    equal it are replicated and must hold equal bytes; otherwise the one
//    dim along which the rank shapes add up to the spec's (all other dims
//    equal) is the merge dim;
//  - without it: Megatron's layer names (column-parallel QKV / fc1 /
//    embeddings / output layer along dim 0, row-parallel projections along
//    dim 1), else ranks holding equal shapes and bytes are replicated;
//  - anything else is ambiguous: InvalidArgumentError naming the tensor and
//    the override to pass.
// Pipeline stages (`mp_rank_XX_YYY`, YYY the stage) are merged per stage as
// above, then joined: each stage numbers its transformer layers ("layers.N"
// in a name) from 0, so a layer's global number is its local one plus the
// layers of the earlier stages, counted from the files (stages may differ in
// size; `args.num_layers`, when saved, must match the total). A name other
// than a layer's may appear in one stage only, except the last stage's copy
// of the tied word embeddings (legacy `word_embeddings_for_head.weight`, or
// Megatron core's `output_layer.weight` when the spec has no output layer),
// which must equal stage 0's and is dropped.
// A missing rank or stage, a tensor missing from a rank or of different
// dtypes across ranks is "megatron: inconsistent ranks"; layers not numbered
// from 0 or disagreeing with the arguments "megatron: inconsistent layer
// counts"; a name in two stages "megatron: duplicate tensor".
#ifndef WEIGHTGATE_SERVER_CHECKPOINT_MEGATRON_READER_H_
#define WEIGHTGATE_SERVER_CHECKPOINT_MEGATRON_READER_H_

#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "server/checkpoint/checkpoint.h"

namespace weightgate::checkpoint {

// True when `dir` looks like a Megatron checkpoint (or one iteration of it).
bool LooksLikeMegatronDirectory(const std::string& dir);

absl::StatusOr<Checkpoint> ReadMegatron(const std::string& dir, const ReadOptions& options = {});

// A lookup for ReadOptions::expected_shape over spec (name, shape) pairs:
// the spec name equal to the asked one, else the one sharing the longest
// dotted suffix (wrapper prefixes differ between training and serving).
std::function<std::optional<std::vector<int64_t>>(std::string_view)> MakeSpecShapeLookup(
    std::vector<std::pair<std::string, std::vector<int64_t>>> spec);

}  // namespace weightgate::checkpoint

#endif  // WEIGHTGATE_SERVER_CHECKPOINT_MEGATRON_READER_H_
