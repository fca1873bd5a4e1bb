// A set bundle carries every file of a checkpoint set (a directory, or the
// directory of an index file) through one upload stream, each file announced
// with its relative path and size before its bytes:
//
//   "WGSET\0\1\n"                       8-byte magic
//   u32 file count                      little-endian, as every integer here
//   per file: u16 path length, path (UTF-8, '/'-separated, relative),
//             u64 size, size bytes
//
// Nothing follows the last file. The client writes it on the fly
// (StreamSetBundle: no temporary copy); the server unpacks it into a fresh
// staging directory (UnpackedSet) and reads that as a set. Unpacking checks
// every announced length against the caps and the bytes left (`n > size -
// off`), sanitises names (no absolute paths, no "." / ".." / empty
// components, no backslashes or control characters, depth and length caps,
// no duplicates) and creates files exclusively under the staging directory.
#ifndef WEIGHTGATE_SERVER_CHECKPOINT_SET_BUNDLE_H_
#define WEIGHTGATE_SERVER_CHECKPOINT_SET_BUNDLE_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace weightgate::checkpoint {

inline constexpr std::string_view kSetBundleMagic{"WGSET\0\1\n", 8};

struct SetBundleLimits {
  uint32_t max_files = 10000;                    // files in one bundle
  uint64_t max_total_bytes = uint64_t{1} << 42;  // all files together (4 TiB)
  uint32_t max_path_bytes = 512;
  uint32_t max_depth = 4;  // path components
};

bool LooksLikeSetBundle(std::string_view data);

// OK when `path` is a relative path a bundle may carry (see above).
absl::Status CheckBundlePath(std::string_view path, const SetBundleLimits& limits = {});

// The bundle of the set at `path` (a directory, or an index file /
// `.metadata` standing for its directory): its size, and its bytes passed to
// `emit` in pieces of at most `piece_bytes` (emit returns false to stop).
// Files are taken up to three levels deep, sorted by path.
absl::StatusOr<uint64_t> SetBundleSize(const std::string& path);
absl::Status StreamSetBundle(const std::string& path, size_t piece_bytes,
                             const std::function<bool(std::string_view)>& emit);

// The input a reader should open for `path`: a bundle is unpacked into the
// new directory `path + ".set"` (removed again with this object) and read as
// a directory; anything else is `path` itself.
class UnpackedSet final {
 public:
  static absl::StatusOr<std::unique_ptr<UnpackedSet>> Open(const std::string& path,
                                                           const SetBundleLimits& limits = {});
  ~UnpackedSet();
  UnpackedSet(const UnpackedSet&) = delete;
  UnpackedSet& operator=(const UnpackedSet&) = delete;

  const std::string& path() const { return path_; }
  bool unpacked() const { return !dir_.empty(); }

 private:
  UnpackedSet() = default;
  std::string path_;
  std::string dir_;  // staging directory to remove; empty when not unpacked
};

}  // namespace weightgate::checkpoint

#endif  // WEIGHTGATE_SERVER_CHECKPOINT_SET_BUNDLE_H_
