// MappedFile gives read-only access to a whole file's bytes without copying
// them: the file is mmapped, and the mapping lives as long as any holder of
// the shared_ptr. Checkpoint tensor records point into it; nothing in
// server/checkpoint copies tensor bytes.
//
// This class is thread-safe (it is immutable after creation).
#ifndef WEIGHTGATE_COMMON_MAPPED_FILE_H_
#define WEIGHTGATE_COMMON_MAPPED_FILE_H_

#include <memory>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"

namespace weightgate::common {

class MappedFile final {
 public:
  // Maps `path` read-only. An empty file gives an empty view.
  static absl::StatusOr<std::shared_ptr<const MappedFile>> Open(const std::string& path);

  // Wraps bytes already in memory (tests, fuzzers, small uploads).
  static std::shared_ptr<const MappedFile> FromString(std::string bytes);

  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  std::string_view data() const { return {base_, size_}; }
  size_t size() const { return size_; }
  const std::string& path() const { return path_; }

 private:
  MappedFile() = default;

  const char* base_ = nullptr;
  size_t size_ = 0;
  bool mapped_ = false;
  std::string owned_;
  std::string path_;
};

}  // namespace weightgate::common

#endif  // WEIGHTGATE_COMMON_MAPPED_FILE_H_
