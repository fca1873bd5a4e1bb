// Fsck checks a store directory without changing it: every blob's content
// against the sha256 it is named by, every metadata file's syntax, and every
// reference (version -> blob, alias -> version, TorchScript spec -> blob).
// It never takes the store lock, creates, moves or deletes anything, so it
// may run beside live replicas (a write racing with it can show as a
// transient finding; run it again to confirm).
#ifndef WEIGHTGATE_SERVER_STORE_FSCK_H_
#define WEIGHTGATE_SERVER_STORE_FSCK_H_

#include <cstdint>
#include <ostream>
#include <string>
#include <vector>

namespace weightgate::store {

struct FsckResult {
  uint64_t blobs = 0;
  uint64_t blob_bytes = 0;
  uint64_t models = 0;
  uint64_t versions = 0;
  // One line per problem, e.g. "damaged blob <sha>: content hashes to <sha2>
  // (used by m@3, m@4)".
  std::vector<std::string> problems;
};

// Checks the store at `root`; `progress` (may be null) gets a line per blob
// hashed.
FsckResult Fsck(const std::string& root, std::ostream* progress = nullptr);

}  // namespace weightgate::store

#endif  // WEIGHTGATE_SERVER_STORE_FSCK_H_
