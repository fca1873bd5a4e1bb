// BlobCache keeps recently fetched blobs open (memory-mapped, with their
// parsed safetensors manifest) so thousands of workers fetching the same
// model share one mapping and one header parse. Bounded by total blob
// bytes, least recently used first out; an evicted blob stays alive for the
// streams still holding it (shared_ptr), like TF Serving's servable handles.
//
// This class is thread-safe.
#ifndef WEIGHTGATE_SERVER_STORE_BLOB_CACHE_H_
#define WEIGHTGATE_SERVER_STORE_BLOB_CACHE_H_

#include <cstdint>
#include <list>
#include <map>
#include <memory>
#include <mutex>
#include <string>

#include "absl/status/statusor.h"
#include "common/mapped_file.h"
#include "server/store/store.h"
#include "weightgate/v1/stream.pb.h"

namespace weightgate::store {

struct OpenBlob {
  std::shared_ptr<const common::MappedFile> file;
  // Tensors (name, dtype, shape, byte range in the blob), header size, total.
  weightgate::v1::Manifest manifest;
};

class BlobCache final {
 public:
  // `store` is not owned. `capacity_bytes` bounds the mapped bytes kept open.
  BlobCache(const Store* store, uint64_t capacity_bytes)
      : store_(store), capacity_bytes_(capacity_bytes) {}

  // Opens (or finds) blob `sha256`; `hit` tells which.
  absl::StatusOr<std::shared_ptr<const OpenBlob>> Get(const std::string& sha256, bool* hit);

  uint64_t bytes() const;

 private:
  using Lru = std::list<std::pair<std::string, std::shared_ptr<const OpenBlob>>>;

  const Store* store_;
  const uint64_t capacity_bytes_;
  mutable std::mutex mu_;
  Lru lru_;                                     // guarded by mu_; front = most recent
  std::map<std::string, Lru::iterator> index_;  // guarded by mu_
  uint64_t bytes_ = 0;                          // guarded by mu_
};

// Parses a stored blob's safetensors header into a manifest.
absl::StatusOr<weightgate::v1::Manifest> ManifestFromSafetensors(
    std::shared_ptr<const common::MappedFile> file);

}  // namespace weightgate::store

#endif  // WEIGHTGATE_SERVER_STORE_BLOB_CACHE_H_
