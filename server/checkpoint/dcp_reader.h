// torch.distributed.checkpoint directories, as FileSystemWriter writes them
// (torch >= 2.0 `torch.distributed.checkpoint`, and torch 1.13's
// `torch.distributed._shard.checkpoint`):
//   .metadata      a pickle of Metadata(state_dict_metadata, planner_data,
//                  storage_data): state_dict_metadata maps each key to
//                  TensorStorageMetadata(properties, size, chunks=[
//                  ChunkStorageMetadata(offsets, sizes)]) or
//                  BytesStorageMetadata; storage_data maps MetadataIndex(fqn,
//                  offset, index) to _StorageInfo(relative_path, offset,
//                  length).
//   __R_N.distcp   per rank files; every tensor chunk is a complete torch.save
//                  zip at [offset, offset + length).
// The metadata pickle goes through the same restricted unpickler as any
// checkpoint; the dataclasses above are read as data (their BUILD state),
// never constructed, and are not reported as opaque. Chunks must lie inside
// their tensor, must not overlap and must cover it exactly. A tensor held by
// one chunk points at that chunk's bytes; a sharded tensor is stitched by its
// offsets (any dims) into the set's scratch file, one tensor at a time.
// Bytes entries (non-tensor state) are skipped and counted in the metadata.
#ifndef WEIGHTGATE_SERVER_CHECKPOINT_DCP_READER_H_
#define WEIGHTGATE_SERVER_CHECKPOINT_DCP_READER_H_

#include <string>

#include "absl/status/statusor.h"
#include "server/checkpoint/checkpoint.h"

namespace weightgate::checkpoint {

// Chunks per tensor; pairwise overlap checks are quadratic in it.
inline constexpr size_t kMaxDcpChunksPerTensor = 4096;

// Reads the directory `dir` holding `.metadata`. Errors are
// InvalidArgumentError("dcp: <reason>").
absl::StatusOr<Checkpoint> ReadDcp(const std::string& dir, const ReadOptions& options = {});

}  // namespace weightgate::checkpoint

#endif  // WEIGHTGATE_SERVER_CHECKPOINT_DCP_READER_H_
