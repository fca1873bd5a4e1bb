// StagedUpload is where an upload stream's bytes land: a staged file of the
// Store, or, when the stream is a checkpoint set bundle (set_bundle.h), the
// files of a staging directory beside it, unpacked as the bytes arrive. The
// bundle itself is never stored, so a set costs its size once on disk, and
// the bytes reserved against --max_staged_bytes are the bytes on disk.
//
// The choice is made from the stream's first 8 bytes (held until they are
// all there). Only the bundle framing is handled here; the files' contents
// are parsed by the validation worker, which is given path(): the staged
// file, or the unpacked directory. Destroying the object removes whatever
// was staged and not committed. Not thread-safe; one writer at a time.
#ifndef WEIGHTGATE_SERVER_SERVICE_STAGED_UPLOAD_H_
#define WEIGHTGATE_SERVER_SERVICE_STAGED_UPLOAD_H_

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "common/sha256.h"
#include "server/checkpoint/set_bundle.h"
#include "server/store/store.h"

namespace weightgate::service {

class StagedUpload final {
 public:
  explicit StagedUpload(std::unique_ptr<store::StagedFile> file,
                        const checkpoint::SetBundleLimits& limits = {});
  ~StagedUpload();
  StagedUpload(const StagedUpload&) = delete;
  StagedUpload& operator=(const StagedUpload&) = delete;

  // The stream's next bytes.
  absl::Status Append(std::string_view bytes);
  // The stream ended: closes the file (no fsync, see StagedFile::Finish), or
  // checks that the bundle was complete.
  absl::Status Finish(bool sync = false);

  // What the validation worker reads: the staged file, or the set directory.
  const std::string& path() const;
  bool is_set() const { return set_ != nullptr; }
  // Bytes received.
  uint64_t size() const { return size_; }
  // Hex sha256 of the bytes received (the bundle's, for a set); valid after
  // Finish().
  const std::string& sha256() const;
  // The staged file (empty for a set), e.g. to move into the store.
  store::StagedFile& file() { return *file_; }

 private:
  absl::Status Route(std::string_view bytes);

  std::unique_ptr<store::StagedFile> file_;
  checkpoint::SetBundleLimits limits_;
  std::unique_ptr<checkpoint::SetBundleUnpacker> set_;
  bool decided_ = false;
  std::string head_;  // the first bytes, until there are enough to decide
  uint64_t size_ = 0;
  common::Sha256 sha_;  // the set's bytes (a staged file hashes its own)
  std::string set_sha256_;
};

}  // namespace weightgate::service

#endif  // WEIGHTGATE_SERVER_SERVICE_STAGED_UPLOAD_H_
