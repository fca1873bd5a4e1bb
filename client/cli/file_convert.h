// File-level helpers of the CLI: hashing, and turning a fetched safetensors
// blob into a torch.save archive without libtorch.
#ifndef WEIGHTGATE_CLIENT_CLI_FILE_CONVERT_H_
#define WEIGHTGATE_CLIENT_CLI_FILE_CONVERT_H_

#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace weightgate::cli {

// Hex sha256 of a file's bytes.
absl::StatusOr<std::string> Sha256File(const std::string& path);

// Writes the tensors of safetensors file `in` as a torch.save zip archive
// `out` (loads with torch.load(out, weights_only=True)).
absl::Status SafetensorsToTorch(const std::string& in, const std::string& out);

}  // namespace weightgate::cli

#endif  // WEIGHTGATE_CLIENT_CLI_FILE_CONVERT_H_
