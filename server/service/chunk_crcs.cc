#include "server/service/chunk_crcs.h"

#include "common/crc32c.h"

namespace weightgate::service {

constexpr uint64_t kKnown = uint64_t{1} << 32;

ChunkCrcs::ChunkCrcs(uint64_t total_bytes, uint64_t chunk_bytes)
    : chunk_bytes_(chunk_bytes),
      crcs_(chunk_bytes == 0 ? 0 : (total_bytes + chunk_bytes - 1) / chunk_bytes) {}

uint32_t ChunkCrcs::Get(uint64_t index, std::string_view data) {
  if (index >= crcs_.size()) return common::Crc32c(data);
  uint64_t v = crcs_[index].load(std::memory_order_relaxed);
  if (v & kKnown) return static_cast<uint32_t>(v);
  uint32_t crc = common::Crc32c(data);
  crcs_[index].store(kKnown | crc, std::memory_order_relaxed);
  return crc;
}

bool ChunkCrcs::Known(uint64_t index) const {
  return index < crcs_.size() && (crcs_[index].load(std::memory_order_relaxed) & kKnown) != 0;
}

std::shared_ptr<ChunkCrcs> ChunkCrcCache::For(const std::string& sha256, uint64_t total_bytes,
                                              uint64_t chunk_bytes) {
  absl::MutexLock lock(&mu_);
  Key key{sha256, chunk_bytes};
  auto it = tables_.find(key);
  if (it != tables_.end()) {
    lru_.splice(lru_.begin(), lru_, it->second.second);
    return it->second.first;
  }
  auto table = std::make_shared<ChunkCrcs>(total_bytes, chunk_bytes);
  lru_.push_front(key);
  tables_.emplace(key, std::make_pair(table, lru_.begin()));
  while (tables_.size() > kMaxBlobs) {
    tables_.erase(lru_.back());
    lru_.pop_back();
  }
  return table;
}

}  // namespace weightgate::service
