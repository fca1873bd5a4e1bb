// File-level helpers of the CLI: turning a fetched safetensors
// blob into a torch.save archive without libtorch.
#ifndef WEIGHTGATE_CLIENT_CLI_FILE_CONVERT_H_
#define WEIGHTGATE_CLIENT_CLI_FILE_CONVERT_H_

#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace weightgate::cli {

// Writes the tensors of safetensors file `in` as a torch.save zip archive
// `out` (loads with torch.load(out, weights_only=True)).
absl::Status SafetensorsToTorch(const std::string& in, const std::string& out);

}  // namespace weightgate::cli

#endif  // WEIGHTGATE_CLIENT_CLI_FILE_CONVERT_H_
