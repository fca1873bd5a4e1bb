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
// (StreamSetBundle: no temporary copy); the server unpacks it as its bytes
// arrive (SetBundleUnpacker) straight into the files of a fresh staging
// directory, which is then read as a set: the set costs its size once on
// disk, and the bundle itself is never stored. Unpacking only handles this
// framing (the files' contents are parsed elsewhere): it checks every
// announced length against the caps and, at the end, against the bytes that
// arrived, sanitises names (no absolute paths, no "." / ".." / empty
// components, no backslashes or control characters, depth and length caps,
// components of at most 255 bytes, no duplicates) and creates files
// exclusively under the staging directory.
// Memory is the one header field being assembled (at most a path), never
// proportional to an announced size.
#ifndef WEIGHTGATE_SERVER_CHECKPOINT_SET_BUNDLE_H_
#define WEIGHTGATE_SERVER_CHECKPOINT_SET_BUNDLE_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <utility>

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

// Unpacks one bundle, fed in pieces of any size, into the directory `dir`,
// which Create makes (it must not exist) and the destructor removes with
// everything below it. The first error poisons the unpacker: every later
// Append and Finish returns it. Not thread-safe; one feeder at a time.
class SetBundleUnpacker final {
 public:
  static absl::StatusOr<std::unique_ptr<SetBundleUnpacker>> Create(
      const std::string& dir, const SetBundleLimits& limits = {});
  ~SetBundleUnpacker();
  SetBundleUnpacker(const SetBundleUnpacker&) = delete;
  SetBundleUnpacker& operator=(const SetBundleUnpacker&) = delete;

  // The next bytes of the bundle.
  absl::Status Append(std::string_view bytes);
  // The bundle ended: OK when every announced file arrived whole.
  absl::Status Finish();

  const std::string& dir() const { return dir_; }
  // Bytes fed so far (framing included).
  uint64_t bytes_in() const { return bytes_in_; }
  // Bytes written into files so far.
  uint64_t bytes_unpacked() const { return written_; }

 private:
  enum class Field { kMagic, kCount, kPathLength, kPath, kSize, kData, kDone };

  SetBundleUnpacker(std::string dir, const SetBundleLimits& limits)
      : dir_(std::move(dir)), limits_(limits) {}
  // `pending_` holds the whole current header field: act on it.
  absl::Status TakeField();
  absl::Status OpenFile();
  absl::Status WriteData(std::string_view bytes);
  absl::Status CloseFile();
  absl::Status Fail(absl::Status status);

  std::string dir_;
  SetBundleLimits limits_;
  Field field_ = Field::kMagic;
  size_t need_ = 0;      // bytes of the current header field still missing
  std::string pending_;  // the current header field so far
  uint64_t count_ = 0;   // files announced
  uint64_t done_ = 0;    // files complete
  uint64_t total_ = 0;   // bytes announced by the files so far
  uint64_t written_ = 0;
  uint64_t bytes_in_ = 0;
  uint64_t announced_ = 0;  // the current file's size
  uint64_t left_ = 0;       // bytes of it still to come
  std::string rel_;         // the current file's path
  int fd_ = -1;
  absl::Status status_;
};

// The input a reader should open for `path`: a bundle file is unpacked into
// the new directory `path + ".set"` (removed again with this object) and read
// as a directory; anything else (a directory, a plain file) is `path` itself.
class UnpackedSet final {
 public:
  static absl::StatusOr<std::unique_ptr<UnpackedSet>> Open(const std::string& path,
                                                           const SetBundleLimits& limits = {});
  ~UnpackedSet();
  UnpackedSet(const UnpackedSet&) = delete;
  UnpackedSet& operator=(const UnpackedSet&) = delete;

  const std::string& path() const { return path_; }
  bool unpacked() const { return unpacked_ != nullptr; }

 private:
  UnpackedSet() = default;
  std::string path_;
  std::unique_ptr<SetBundleUnpacker> unpacked_;  // null when not a bundle
};

}  // namespace weightgate::checkpoint

#endif  // WEIGHTGATE_SERVER_CHECKPOINT_SET_BUNDLE_H_
