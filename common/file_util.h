// Whole-file reads of small files (metadata, policies, PEM), and file sizes.
// Large inputs (checkpoints, blobs) are mapped (common/mapped_file.h), never
// read whole.
#ifndef WEIGHTGATE_COMMON_FILE_UTIL_H_
#define WEIGHTGATE_COMMON_FILE_UTIL_H_

#include <cstddef>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace weightgate::common {

// The bytes of the file at `path`. NotFound "<path> not found" when it does
// not exist; Internal "open <path>: <errno text>" when it cannot be opened or
// read; OutOfRange "<path> is larger than <max_bytes> bytes" when it holds
// more than `max_bytes` (checked while reading, so /dev/zero stops).
absl::StatusOr<std::string> ReadFile(const std::string& path,
                                     size_t max_bytes = std::numeric_limits<size_t>::max());

// Size in bytes of the regular file at `path`; -1 when there is none.
int64_t RegularFileSize(const std::string& path);

// The names in directory `dir` (without "." and ".."), sorted; empty when it
// cannot be read.
std::vector<std::string> ListDir(const std::string& dir);

}  // namespace weightgate::common

#endif  // WEIGHTGATE_COMMON_FILE_UTIL_H_
