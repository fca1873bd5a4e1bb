// Hex sha256 of a file, for ModelSpec.source_sha256, the TorchScript blob
// name and ValidationReport.input_sha256. Reads in bounded chunks so hashing
// a large checkpoint does not grow memory.
#ifndef WEIGHTGATE_SERVER_STATEDICT_SHA256_H_
#define WEIGHTGATE_SERVER_STATEDICT_SHA256_H_

#include <string>
#include <string_view>

#include "absl/status/statusor.h"

namespace weightgate::statedict {

// Lower-case hex sha256 of the file at `path`.
absl::StatusOr<std::string> Sha256File(const std::string& path);

// Lower-case hex sha256 of `bytes`.
std::string Sha256Hex(std::string_view bytes);

}  // namespace weightgate::statedict

#endif  // WEIGHTGATE_SERVER_STATEDICT_SHA256_H_
