// A checkpoint may be a set of files read as one: a Hugging Face sharded
// directory or its index JSON, a torch.distributed.checkpoint directory, ...
// ReadCheckpointSet looks at a path (file, directory or index file), picks
// the layout from the names it finds, reads every piece with the single-file
// readers and returns one merged Checkpoint whose tensor records point into
// the pieces' mapped files (see set_builder.h). Nothing is copied except the
// tensors a layout must assemble (stitched chunks).
//
// Directory layouts, probed in this order:
//  - `.metadata` present: torch.distributed.checkpoint (dcp_reader.h);
//  - `*.index.json`: HF sharded with an index (hf_sharded.h); the
//    safetensors index wins over a `.bin` one when both are present;
//  - `NAME-0000k-of-0000n.EXT` files: an un-indexed HF shard series;
//  - exactly one checkpoint file (.safetensors, .bin, .pt, .pth, .ckpt):
//    that file.
// DeepSpeed and Megatron layouts are recognised and refused with a clear
// error until they are read.
//
// Errors are InvalidArgumentError with a short reason naming the file.
#ifndef WEIGHTGATE_SERVER_CHECKPOINT_CHECKPOINT_SET_H_
#define WEIGHTGATE_SERVER_CHECKPOINT_CHECKPOINT_SET_H_

#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "server/checkpoint/checkpoint.h"

namespace weightgate::checkpoint {

// Entries of one directory listing; more is an error.
inline constexpr size_t kMaxSetDirectoryEntries = 100000;

// True when `path` is a directory, or a regular file named `*.index.json`
// or `.metadata`: ReadCheckpointFile passes such paths to ReadCheckpointSet.
bool IsCheckpointSetPath(const std::string& path);

absl::StatusOr<Checkpoint> ReadCheckpointSet(const std::string& path,
                                             const ReadOptions& options = {});

// sha256 (hex) naming a set's content: for a directory (an index file or
// `.metadata` stands for its directory), over one line "relpath\0size\0sha256\n"
// per regular file below it (three levels deep, sorted by path); for a
// plain file, its own sha256.
absl::StatusOr<std::string> Sha256CheckpointSet(const std::string& path);

// Helpers for the layout readers.

// The names in `dir` (no "." or ".."), sorted; regular files only unless
// `with_dirs`.
absl::StatusOr<std::vector<std::string>> ListDirectory(const std::string& dir,
                                                       bool with_dirs = false);

// True when `name` is one path component a set may name: non-empty, no '/',
// '\\' or NUL, not "." or "..".
bool IsPlainFileName(std::string_view name);

// Regular files below `dir`, as relative '/'-joined paths, descending at
// most `depth` levels into subdirectories; appended to *out unsorted.
absl::Status ListFilesBelow(const std::string& dir, const std::string& rel, int depth,
                            std::vector<std::string>* out);

std::string JoinPath(std::string_view dir, std::string_view name);

}  // namespace weightgate::checkpoint

#endif  // WEIGHTGATE_SERVER_CHECKPOINT_CHECKPOINT_SET_H_
