// Hugging Face sharded checkpoints, as `save_pretrained` writes them:
//   pytorch_model-00001-of-00003.bin ... + pytorch_model.bin.index.json
//   model-00001-of-00002.safetensors ... + model.safetensors.index.json
// The index is {"metadata": {"total_size": N}, "weight_map": {name: shard}}.
// Every shard the index names must exist and hold exactly the tensors the
// index maps to it; a shard of the same series on disk that the index does
// not name is an extra shard; `metadata.total_size`, when given, must equal
// the bytes of the tensors (counted per tensor or per distinct storage, as
// the two writers do). Without an index, a complete series
// `STEM-0000k-of-0000n.EXT` (k = 1..n) is read in order.
#ifndef WEIGHTGATE_SERVER_CHECKPOINT_HF_SHARDED_H_
#define WEIGHTGATE_SERVER_CHECKPOINT_HF_SHARDED_H_

#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "server/checkpoint/checkpoint.h"

namespace weightgate::checkpoint {

// Index files larger than this are refused.
inline constexpr uint64_t kMaxShardIndexBytes = uint64_t{64} << 20;
// Shards per set.
inline constexpr int kMaxShards = 100000;

// `model-00002-of-00005.safetensors` -> stem "model", k 2, n 5, ext
// "safetensors". Digits are at least 5 wide, as transformers writes them.
struct ShardName {
  std::string stem;
  int k = 0;
  int n = 0;
  std::string ext;
};
bool ParseShardName(std::string_view name, ShardName* out);

absl::StatusOr<Checkpoint> ReadHfIndexed(const std::string& index_path,
                                         const ReadOptions& options = {});

// `names` are the shard file names in `dir` of one series (any order).
absl::StatusOr<Checkpoint> ReadHfShardSeries(const std::string& dir,
                                             const std::vector<std::string>& names,
                                             const ReadOptions& options = {});

}  // namespace weightgate::checkpoint

#endif  // WEIGHTGATE_SERVER_CHECKPOINT_HF_SHARDED_H_
