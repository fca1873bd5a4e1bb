#include "server/store/blob_cache.h"

#include "absl/strings/str_cat.h"
#include "server/checkpoint/checkpoint.h"
#include "server/checkpoint/safetensors.h"

namespace weightgate::store {

absl::StatusOr<weightgate::v1::Manifest> ManifestFromSafetensors(
    std::shared_ptr<const common::MappedFile> file) {
  absl::StatusOr<checkpoint::Checkpoint> ckpt = checkpoint::ReadSafetensors(file, {});
  if (!ckpt.ok()) return ckpt.status();
  weightgate::v1::Manifest manifest;
  manifest.set_total_bytes(file->size());
  const checkpoint::Value* root = ckpt->root;
  for (size_t i = 0; root != nullptr && i + 1 < root->items.size(); i += 2) {
    const checkpoint::Value* value = root->items[i + 1];
    if (value->kind != checkpoint::Value::Kind::kTensor) continue;
    const checkpoint::TensorRecord& t = value->tensor;
    const checkpoint::StorageRecord& s = ckpt->storages.at(static_cast<size_t>(t.storage_index));
    auto* entry = manifest.add_tensors();
    entry->set_name(root->items[i]->str);
    entry->set_dtype(std::string(checkpoint::DTypeName(t.dtype)));
    for (int64_t d : t.shape) entry->add_shape(d);
    entry->set_offset(s.file_offset);
    entry->set_length(s.nbytes);
    // A tie record's name views its partner's storage: same byte range.
    if (s.key != entry->name()) entry->set_tied_to(s.key);
  }
  // The reader accepted the file, so its 8-byte little-endian header length is there.
  uint64_t header_len = 0;
  for (int b = 7; b >= 0; --b) {
    header_len = (header_len << 8) | static_cast<unsigned char>(file->data()[b]);
  }
  manifest.set_header_bytes(8 + header_len);
  return manifest;
}

absl::StatusOr<std::shared_ptr<const OpenBlob>> BlobCache::Get(const std::string& sha256,
                                                               bool* hit) {
  {
    absl::MutexLock lock(&mu_);
    auto it = index_.find(sha256);
    if (it != index_.end() && it->second->second->damaged()) {
      // Its file went away under the mapping: forget it and look again.
      bytes_ -= it->second->second->file->size();
      lru_.erase(it->second);
      index_.erase(it);
    } else if (it != index_.end()) {
      lru_.splice(lru_.begin(), lru_, it->second);
      *hit = true;
      return it->second->second;
    }
  }
  *hit = false;
  // Open outside the lock: a slow disk must not stall fetches of cached blobs.
  if (!store_->HasBlob(sha256)) {
    return absl::NotFoundError(absl::StrCat("blob ", sha256, " is missing from the store"));
  }
  absl::StatusOr<std::shared_ptr<const common::MappedFile>> file =
      common::MappedFile::Open(store_->BlobPath(sha256));
  if (!file.ok()) return file.status();
  auto blob = std::make_shared<OpenBlob>();
  blob->file = *file;
  blob->guard = MappingGuard::Register((*file)->data().data(), (*file)->size());
  absl::StatusOr<weightgate::v1::Manifest> manifest = ManifestFromSafetensors(*file);
  if (manifest.ok() && blob->damaged()) {
    manifest = absl::UnavailableError("the file went away while its header was read");
  }
  if (!manifest.ok()) {
    return absl::DataLossError(
        absl::StrCat("stored blob ", sha256, " is corrupt: ", manifest.status().message()));
  }
  blob->manifest = *std::move(manifest);
  blob->manifest.set_blob_sha256(sha256);
  absl::MutexLock lock(&mu_);
  if (auto it = index_.find(sha256); it != index_.end()) return it->second->second;  // raced
  lru_.emplace_front(sha256, blob);
  index_[sha256] = lru_.begin();
  bytes_ += blob->file->size();
  while (bytes_ > capacity_bytes_ && lru_.size() > 1) {
    bytes_ -= lru_.back().second->file->size();
    index_.erase(lru_.back().first);
    lru_.pop_back();
  }
  return std::shared_ptr<const OpenBlob>(blob);
}

uint64_t BlobCache::bytes() const {
  absl::MutexLock lock(&mu_);
  return bytes_;
}

}  // namespace weightgate::store
