// Safetensors, the canonical stored form of a fixed model: an 8-byte
// little-endian header length N, N bytes of JSON
//   {"__metadata__": {"k": "v"}, "name": {"dtype": "F32", "shape": [2, 3],
//    "data_offsets": [begin, end]}, ...}
// (padded with spaces), then the tensors' bytes, offsets relative to the
// byte after the header.
//
// ReadSafetensors checks a hostile file the way the reference
// implementation does, and more: the header length is capped before it is
// compared with the file size; the JSON is parsed by the bounded parser of
// json.h; dtype names must be exact; every shape's element count times item
// size is overflow-checked and must equal its byte range; ranges must tile
// the data region exactly (no overlap, no gap, nothing after). Tensor bytes
// are never read.
//
// SafetensorsHeader / SafetensorsWriter write the same format, streaming the
// tensor bytes to a file so a model of any size needs no large buffer.
//
// Tied tensors (weightgate's extension; the stored form of a model): the
// format cannot give two names one byte range, so a blob holds a tied
// tensor once, under the name of its first member, and records each other
// member in __metadata__ as
//   "weightgate.tied_to:<name>": "<partner>"
// where <partner> is a tensor of the file. <name> has <partner>'s dtype,
// shape and bytes; it is not a key of the header, so other readers see the
// file as it is (like a Hugging Face save_pretrained file without its tied
// duplicates). ReadSafetensors gives such a name as a second view of the
// partner's storage, as torch.load gives tied weights.
#ifndef WEIGHTGATE_SERVER_CHECKPOINT_SAFETENSORS_H_
#define WEIGHTGATE_SERVER_CHECKPOINT_SAFETENSORS_H_

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/mapped_file.h"
#include "server/checkpoint/checkpoint.h"
#include "server/checkpoint/dtype.h"

namespace weightgate::checkpoint {

// Header key holding the string-to-string metadata map.
inline constexpr std::string_view kSafetensorsMetadataKey = "__metadata__";

// __metadata__ key prefix of a tie record (see above).
inline constexpr std::string_view kSafetensorsTiePrefix = "weightgate.tied_to:";

// The __metadata__ key recording that `name` is tied to another tensor.
std::string SafetensorsTieKey(std::string_view name);

// True when `data` starts with a plausible header: a length that fits the
// file, followed by '{'. Cheap; proves nothing.
bool LooksLikeSafetensors(std::string_view data);

// Parses `file` as safetensors. The result has format kSafetensors, one
// StorageRecord per tensor (key = tensor name, file_offset absolute), and a
// root kDict of name (kString) -> kTensor (contiguous, storage_offset 0) in
// header order, then one entry per tie record (in metadata order) viewing its
// partner's storage; metadata as "key=value". A tie record must name a new,
// valid name and a tensor of the file. Errors are
// InvalidArgumentError("safetensors: <reason>").
absl::StatusOr<Checkpoint> ReadSafetensors(std::shared_ptr<const common::MappedFile> file,
                                           const ReadOptions& options = {});

struct SafetensorsEntry {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
};

// Checks what SafetensorsHeader requires: unique, non-empty, valid UTF-8
// names other than "__metadata__"; non-negative dims whose byte size does not
// overflow; valid UTF-8 metadata with unique keys.
absl::Status ValidateSafetensorsLayout(
    const std::vector<SafetensorsEntry>& tensors,
    const std::vector<std::pair<std::string, std::string>>& metadata);

// The full header bytes (8-byte little-endian length + JSON padded with
// spaces to a multiple of 8) for tensors laid out back to back in the given
// order. REQUIRES: ValidateSafetensorsLayout(tensors, metadata).ok().
std::string SafetensorsHeader(const std::vector<SafetensorsEntry>& tensors,
                              const std::vector<std::pair<std::string, std::string>>& metadata);

// Bytes of the data region for `tensors`. REQUIRES: a valid layout.
uint64_t SafetensorsDataSize(const std::vector<SafetensorsEntry>& tensors);

// Writes a safetensors file: the header at Create, then the tensors' bytes
// in order through any number of Append calls, then Finish, which checks
// that exactly the declared bytes arrived, fsyncs and closes. The file is
// written in place; callers wanting atomicity write a temporary path and
// rename it after Finish. An unfinished writer closes its file on
// destruction and leaves it incomplete.
//
// This class is not thread-safe.
class SafetensorsWriter final {
 public:
  static absl::StatusOr<std::unique_ptr<SafetensorsWriter>> Create(
      const std::string& path, std::vector<SafetensorsEntry> tensors,
      std::vector<std::pair<std::string, std::string>> metadata = {});

  ~SafetensorsWriter();
  SafetensorsWriter(const SafetensorsWriter&) = delete;
  SafetensorsWriter& operator=(const SafetensorsWriter&) = delete;

  // Appends tensor bytes; may be called many times per tensor and may span
  // tensors. Fails once more bytes arrive than the tensors declare.
  absl::Status Append(std::string_view bytes);

  // Flushes, checks every declared byte was written, fsyncs and closes.
  absl::Status Finish();

  // Bytes Append has accepted / the data region needs.
  uint64_t data_written() const { return written_; }
  uint64_t data_size() const { return data_size_; }

 private:
  SafetensorsWriter(int fd, std::string path, uint64_t data_size)
      : fd_(fd), path_(std::move(path)), data_size_(data_size) {}

  absl::Status WriteAll(std::string_view bytes);
  absl::Status Flush();

  int fd_ = -1;
  std::string path_;
  uint64_t data_size_ = 0;
  uint64_t written_ = 0;
  std::string buffer_;
  absl::Status failed_;  // first error; sticky
};

}  // namespace weightgate::checkpoint

#endif  // WEIGHTGATE_SERVER_CHECKPOINT_SAFETENSORS_H_
