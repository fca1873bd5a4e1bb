// BlobCache keeps recently fetched blobs open (memory-mapped, with their
// parsed safetensors manifest) so thousands of workers fetching the same
// model share one mapping and one header parse. Bounded by total blob
// bytes, least recently used first out; an evicted blob stays alive for the
// streams still holding it (shared_ptr), like TF Serving's servable handles.
// Reads of the mapping are guarded (MappingGuard): a blob whose file goes
// away while mapped is marked damaged instead of killing the process, and
// Get() reopens a damaged blob rather than serving it again.
//
// This class is thread-safe.
#ifndef WEIGHTGATE_SERVER_STORE_BLOB_CACHE_H_
#define WEIGHTGATE_SERVER_STORE_BLOB_CACHE_H_

#include <cstdint>
#include <list>
#include <map>
#include <memory>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "common/mapped_file.h"
#include "server/store/mapping_guard.h"
#include "server/store/store.h"
#include "weightgate/v1/stream.pb.h"

namespace weightgate::store {

struct OpenBlob {
  std::shared_ptr<const common::MappedFile> file;
  // Tensors (name, dtype, shape, byte range in the blob, ties), header size,
  // total.
  weightgate::v1::Manifest manifest;
  // Declared after `file`, so it is released before the mapping goes.
  std::unique_ptr<MappingGuard> guard;

  // True once a read of the mapping faulted because the file went away
  // (bytes read from it may be zeros): end the stream with an error.
  bool damaged() const { return guard != nullptr && guard->damaged(); }
};

class BlobCache final {
 public:
  // `store` is not owned. `capacity_bytes` bounds the mapped bytes kept open.
  BlobCache(const Store* store, uint64_t capacity_bytes)
      : store_(store), capacity_bytes_(capacity_bytes) {}

  // Opens (or finds) blob `sha256`; `hit` tells which.
  absl::StatusOr<std::shared_ptr<const OpenBlob>> Get(const std::string& sha256, bool* hit)
      ABSL_LOCKS_EXCLUDED(mu_);

  uint64_t bytes() const ABSL_LOCKS_EXCLUDED(mu_);

 private:
  using Lru = std::list<std::pair<std::string, std::shared_ptr<const OpenBlob>>>;

  const Store* store_;
  const uint64_t capacity_bytes_;
  mutable absl::Mutex mu_;
  Lru lru_ ABSL_GUARDED_BY(mu_);  // front = most recent
  std::map<std::string, Lru::iterator> index_ ABSL_GUARDED_BY(mu_);
  uint64_t bytes_ ABSL_GUARDED_BY(mu_) = 0;
};

// Parses a stored blob's safetensors header into a manifest: the header's
// tensors in header order, then one entry per tie record (tied_to set, the
// partner's byte range; checkpoint/safetensors.h).
absl::StatusOr<weightgate::v1::Manifest> ManifestFromSafetensors(
    std::shared_ptr<const common::MappedFile> file);

}  // namespace weightgate::store

#endif  // WEIGHTGATE_SERVER_STORE_BLOB_CACHE_H_
