// TorchZipWriter writes a torch.save-compatible zip archive of named dense
// tensors (a state_dict) by streaming their bytes: `torch.load(path,
// weights_only=True)` returns an OrderedDict of the same tensors, ready for
// `load_state_dict(strict=True)`. Memory use does not depend on model size.
//
// Layout, as torch.save writes it: `<prefix>/data.pkl` (pickle protocol 2:
// an OrderedDict of torch._utils._rebuild_tensor_v2 calls whose persistent
// ids are ('storage', torch.<T>Storage, key, 'cpu', numel)), `<prefix>/
// byteorder` ("little"), one stored entry `<prefix>/data/<i>` per tensor
// with its data 64-byte aligned, and `<prefix>/version` ("3\n"). Entry sizes
// are known from the shapes, so local headers carry them up front; each
// entry's CRC-32 is computed while its bytes stream through and patched into
// its local header when the entry is complete. ZIP64 records are written
// when an entry, an offset or the entry count needs them.
//
// Usage:
//   auto w = TorchZipWriter::Create(path, {{"fc.weight", DType::kF32, {5, 16}}, ...});
//   for each tensor in order: (*w)->Append(bytes) (any chunking, even across tensors)
//   (*w)->Finish();
// A writer destroyed before Finish() succeeds removes the partial file.
//
// This class is not thread-safe.
#ifndef WEIGHTGATE_SERVER_CHECKPOINT_TORCH_WRITER_H_
#define WEIGHTGATE_SERVER_CHECKPOINT_TORCH_WRITER_H_

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "server/checkpoint/dtype.h"

namespace weightgate::checkpoint {

// One tensor of the state_dict; its bytes are row-major contiguous,
// little-endian, numel * ItemSize(dtype) long.
struct TorchZipEntry {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;  // empty = 0-dim scalar
  // Index of an earlier entry with the same dtype and element count whose
  // storage this one shares (tied weights): the pickle names that storage
  // again, so torch.load returns tensors that alias, and Append expects no
  // bytes for this entry. -1: its own storage.
  int tied_to = -1;
};

struct TorchZipWriterOptions {
  // The archive's top folder (torch.save names it after the file; "archive"
  // for buffers). Must be non-empty and contain no '/'.
  std::string archive_prefix = "archive";
  // Write ZIP64 records even when nothing needs them (tests).
  bool force_zip64 = false;
};

// "FloatStorage", "BFloat16Storage", ... for `dtype`.
std::string_view TorchStorageClass(DType dtype);

// The data.pkl torch.save would write for `tensors` (storage keys "0", "1",
// ... in order). Fails on a negative dimension or an overflowing size.
absl::StatusOr<std::string> StateDictPickle(const std::vector<TorchZipEntry>& tensors);

class TorchZipWriter final {
 public:
  // Creates (truncates) `path` and writes everything before the first
  // tensor's bytes.
  static absl::StatusOr<std::unique_ptr<TorchZipWriter>> Create(
      const std::string& path, std::vector<TorchZipEntry> tensors,
      const TorchZipWriterOptions& options = {});

  ~TorchZipWriter();
  TorchZipWriter(const TorchZipWriter&) = delete;
  TorchZipWriter& operator=(const TorchZipWriter&) = delete;

  // The next bytes of the tensors, in order. Fails when more bytes arrive
  // than the shapes call for.
  absl::Status Append(std::string_view bytes);

  // Bytes Append still expects.
  uint64_t remaining() const { return remaining_total_; }

  // Writes the version record and the central directory, fsyncs and closes.
  // Fails when tensor bytes are missing.
  absl::Status Finish();

 private:
  struct Written {
    std::string name;
    uint64_t header_offset = 0;
    uint64_t size = 0;
    uint32_t crc = 0;
    bool zip64 = false;
  };

  TorchZipWriter(std::string path, int fd, std::vector<TorchZipEntry> tensors,
                 TorchZipWriterOptions options);

  absl::Status Write(std::string_view bytes);
  absl::Status Flush();
  absl::Status BeginEntry(const std::string& name, uint64_t size);
  absl::Status EndEntry();
  absl::Status WholeEntry(const std::string& name, std::string_view bytes);
  absl::Status AdvanceToNextTensor();
  absl::Status WriteCentralDirectory();

  std::string path_;
  int fd_ = -1;
  bool finished_ = false;
  std::vector<TorchZipEntry> tensors_;
  std::vector<uint64_t> tensor_bytes_;
  TorchZipWriterOptions options_;
  std::vector<Written> written_;
  size_t current_ = 0;            // tensor whose bytes Append is receiving
  uint64_t remaining_entry_ = 0;  // bytes left in the open entry
  uint64_t remaining_total_ = 0;
  bool entry_open_ = false;
  uint32_t crc_ = 0;
  uint64_t offset_ = 0;  // file position after the buffer
  std::string buffer_;
};

}  // namespace weightgate::checkpoint

#endif  // WEIGHTGATE_SERVER_CHECKPOINT_TORCH_WRITER_H_
