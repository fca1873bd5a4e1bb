#include "server/service/staged_upload.h"

#include <utility>

namespace weightgate::service {

StagedUpload::StagedUpload(std::unique_ptr<store::StagedFile> file,
                           const checkpoint::SetBundleLimits& limits)
    : file_(std::move(file)), limits_(limits) {}

// The unpacked directory goes first (the unpacker removes it), then the file.
StagedUpload::~StagedUpload() { set_.reset(); }

absl::Status StagedUpload::Append(std::string_view bytes) {
  size_ += bytes.size();
  if (decided_) return Route(bytes);
  const size_t magic = checkpoint::kSetBundleMagic.size();
  size_t take = std::min(bytes.size(), magic - head_.size());
  head_.append(bytes.data(), take);
  bytes.remove_prefix(take);
  if (head_.size() < magic) return absl::OkStatus();
  decided_ = true;
  if (checkpoint::LooksLikeSetBundle(head_)) {
    absl::StatusOr<std::unique_ptr<checkpoint::SetBundleUnpacker>> set =
        checkpoint::SetBundleUnpacker::Create(file_->path() + ".set", limits_);
    if (!set.ok()) return set.status();
    set_ = *std::move(set);
  }
  std::string head = std::move(head_);
  head_.clear();
  if (absl::Status s = Route(head); !s.ok()) return s;
  return Route(bytes);
}

absl::Status StagedUpload::Route(std::string_view bytes) {
  if (set_ == nullptr) return file_->Append(bytes);
  sha_.Update(bytes);
  return set_->Append(bytes);
}

absl::Status StagedUpload::Finish(bool sync) {
  if (!decided_) {  // fewer bytes than a bundle's magic: a (short) file
    decided_ = true;
    if (absl::Status s = file_->Append(head_); !s.ok()) return s;
  }
  absl::Status finished = file_->Finish(sync);
  if (set_ == nullptr || !finished.ok()) return finished;
  set_sha256_ = sha_.HexDigest();
  return set_->Finish();
}

const std::string& StagedUpload::path() const {
  return set_ != nullptr ? set_->dir() : file_->path();
}

const std::string& StagedUpload::sha256() const {
  return set_ != nullptr ? set_sha256_ : file_->sha256();
}

}  // namespace weightgate::service
