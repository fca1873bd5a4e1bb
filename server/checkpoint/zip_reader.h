// ZipReader indexes a zip archive held in memory (usually a MappedFile) and
// hands out its entries' bytes, treating every byte as hostile. It reads the
// central directory (ZIP64 included: archives and entries over 4 GiB), checks
// each entry's local header against it, and rejects what torch.save never
// writes and an attacker would: encryption, methods other than stored (0) and
// deflated (8), absolute names and `..` components, duplicate names, entries
// overlapping one another or the central directory, and deflated entries
// whose declared size breaks the caps in ZipLimits (those are
// ResourceExhausted errors, "zip: resource limit <name>: ...").
//
// Parsing only ever looks at bytes inside the archive view and compares
// lengths by subtraction, never by `off + n > size`. Every error is an
// InvalidArgumentError whose message starts with "zip: ".
//
// Stored entries (what torch.save writes for tensor data) are returned as
// views into the archive: no copy, and no CRC pass over gigabytes of weights
// unless the caller asks for it with VerifyCrc32. Deflated entries are
// inflated into caller-provided scratch, bounded by their declared size, and
// CRC-checked.
//
// A ZipReader does not own the archive bytes; they must outlive it and every
// view it returned. This class is thread-safe (immutable after Open).
#ifndef WEIGHTGATE_SERVER_CHECKPOINT_ZIP_READER_H_
#define WEIGHTGATE_SERVER_CHECKPOINT_ZIP_READER_H_

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace weightgate::checkpoint {

struct ZipEntry {
  std::string name;
  uint64_t data_offset = 0;      // of the entry's data in the archive
  uint64_t compressed_size = 0;  // bytes at data_offset
  uint64_t size = 0;             // bytes after inflation (== compressed_size when stored)
  uint16_t method = 0;           // 0 stored, 8 deflated
  uint32_t crc32 = 0;
  uint64_t local_header_offset = 0;
};

// Caps on what an archive may declare. Defaults suit torch.save archives of
// hundreds of GB (which store, not deflate, their tensors).
struct ZipLimits {
  // Central directory records.
  uint32_t max_entries = 1 << 20;
  // Bytes in one entry name.
  uint32_t max_name_length = 4096;
  // size / compressed_size of every deflated entry, with kZipRatioSlackBytes
  // of slack so that tiny entries are not refused for compressing well.
  uint32_t max_compression_ratio = 1000;
  // Declared sizes of all deflated entries together; also the most one Read
  // inflates. The cap is the smaller of max_total_inflated and
  //   inflated_fixed_bytes + inflated_per_archive_byte x archive bytes,
  // so a small archive cannot inflate into much memory even when each entry
  // keeps to the ratio.
  uint64_t max_total_inflated = uint64_t{4} << 30;
  uint64_t inflated_fixed_bytes = uint64_t{1} << 20;
  uint32_t inflated_per_archive_byte = 64;
};

// A deflated entry may inflate to max_compression_ratio x its compressed size
// plus this many bytes.
inline constexpr uint64_t kZipRatioSlackBytes = 4096;

// True when `data` starts with a local file header signature ("PK\3\4") or
// ends with an end-of-central-directory record whose comment reaches exactly
// to the end (an empty archive). Cheap; proves nothing.
bool LooksLikeZip(std::string_view data);

class ZipReader final {
 public:
  // Indexes `data`. REQUIRES: `data` outlives the reader and its views.
  static absl::StatusOr<ZipReader> Open(std::string_view data, const ZipLimits& limits = {});

  // In central directory order.
  const std::vector<ZipEntry>& entries() const { return entries_; }

  // The entry named exactly `name`, or nullptr.
  const ZipEntry* Find(std::string_view name) const;

  // Stored: a view into the archive (no copy, no CRC check). Deflated:
  // inflates into *scratch, checking caps, the declared size and the CRC,
  // and returns a view of *scratch. `entry` should come from entries() /
  // Find(); its range is re-checked against the archive either way.
  absl::StatusOr<std::string_view> Read(const ZipEntry& entry, std::string* scratch) const;

  // Checks the CRC-32 of a stored entry's bytes (reads every byte). For
  // deflated entries Read already does this.
  absl::Status VerifyCrc32(const ZipEntry& entry) const;

  // The whole archive view given to Open.
  std::string_view data() const { return data_; }

 private:
  ZipReader(std::string_view data, const ZipLimits& limits);

  std::string_view data_;
  ZipLimits limits_;
  uint64_t total_inflated_cap_;  // from limits_ and the archive's size
  std::vector<ZipEntry> entries_;
  absl::flat_hash_map<std::string, size_t> by_name_;
};

}  // namespace weightgate::checkpoint

#endif  // WEIGHTGATE_SERVER_CHECKPOINT_ZIP_READER_H_
