// ChunkCrcCache remembers the CRC32C of every aligned chunk of a blob, so a
// blob fetched by many workers is checksummed once, not once per stream
// (without it, CRC32C is the largest CPU cost of serving a fetch). Blobs are
// immutable and named by sha256, so an entry never goes stale; entries are
// 4 bytes per chunk and at most kMaxBlobs blobs are remembered.
//
// This class is thread-safe.
#ifndef WEIGHTGATE_SERVER_SERVICE_CHUNK_CRCS_H_
#define WEIGHTGATE_SERVER_SERVICE_CHUNK_CRCS_H_

#include <atomic>
#include <cstdint>
#include <list>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"

namespace weightgate::service {

// The CRCs of one blob's chunks of `chunk_bytes`, filled in as they are
// first needed (racing fills compute the same value).
class ChunkCrcs final {
 public:
  ChunkCrcs(uint64_t total_bytes, uint64_t chunk_bytes);
  uint64_t chunk_bytes() const { return chunk_bytes_; }
  // CRC32C of `data`, which is chunk `index` (REQUIRES: a whole chunk or the
  // blob's last, shorter one).
  uint32_t Get(uint64_t index, std::string_view data);
  // Whether chunk `index`'s CRC is already known (Get will not read it).
  bool Known(uint64_t index) const;

 private:
  const uint64_t chunk_bytes_;
  // Bit 32 set: known; low 32 bits: the CRC.
  std::vector<std::atomic<uint64_t>> crcs_;
};

class ChunkCrcCache final {
 public:
  static constexpr size_t kMaxBlobs = 4096;
  // The table of blob `sha256` for chunks of `chunk_bytes`.
  std::shared_ptr<ChunkCrcs> For(const std::string& sha256, uint64_t total_bytes,
                                 uint64_t chunk_bytes) ABSL_LOCKS_EXCLUDED(mu_);

 private:
  using Key = std::pair<std::string, uint64_t>;
  absl::Mutex mu_;
  std::list<Key> lru_ ABSL_GUARDED_BY(mu_);  // front = most recent
  std::map<Key, std::pair<std::shared_ptr<ChunkCrcs>, std::list<Key>::iterator>> tables_
      ABSL_GUARDED_BY(mu_);
};

}  // namespace weightgate::service

#endif  // WEIGHTGATE_SERVER_SERVICE_CHUNK_CRCS_H_
