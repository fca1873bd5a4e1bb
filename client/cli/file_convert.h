// File-level helpers of the CLI, without libtorch: turning a fetched
// safetensors blob into a torch.save archive, or into a safetensors file
// that holds every tensor name under its own key.
//
// A stored blob holds a tied tensor once: the other names are tie records in
// its metadata (server/checkpoint/safetensors.h). Both helpers read those
// names back; blobs stored before tie records existed hold both copies and
// name their ties only in the manifest, which `ties` passes in.
#ifndef WEIGHTGATE_CLIENT_CLI_FILE_CONVERT_H_
#define WEIGHTGATE_CLIENT_CLI_FILE_CONVERT_H_

#include <map>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace weightgate::cli {

// name -> the earlier tensor it is tied to (the manifest's tied_to).
using TieMap = std::map<std::string, std::string>;

// Writes the tensors of safetensors file `in` as a torch.save zip archive
// `out` (loads with torch.load(out, weights_only=True)). Tied names (tie
// records, or `ties` naming an earlier tensor of the same dtype and shape)
// share one storage, as torch.save writes tied weights.
absl::Status SafetensorsToTorch(const std::string& in, const std::string& out,
                                const TieMap& ties = {});

// True when safetensors file `in` holds tie records.
absl::StatusOr<bool> HasTieRecords(const std::string& in);

// Writes safetensors file `in` as `out` (via a temporary file; `out` may be
// `in`) with every tied name under its own key and its own copy of the
// bytes, tie records dropped: a file safetensors' load_file and
// load_state_dict(strict=True) take as it is.
absl::Status ExpandTies(const std::string& in, const std::string& out);

}  // namespace weightgate::cli

#endif  // WEIGHTGATE_CLIENT_CLI_FILE_CONVERT_H_
