// OutputWriter streams normalised tensors, one after the other, to a file in
// one of the two forms weightgate writes: safetensors (the canonical stored
// form) or a torch.save zip archive (`.pt`, loads with
// torch.load(weights_only=True)). Bytes go to "<path>.tmp.<pid>" and are
// renamed into place by Finish(), so a reader never sees a partial file.
//
// Ties: safetensors cannot alias. kSafetensors writes a tied tensor once per
// name (a file load_state_dict(strict=True) takes as it is);
// kStoredSafetensors, the store's form, writes it once and records the other
// names in the header's metadata (checkpoint/safetensors.h: tie records).
// The torch zip form keeps one storage for tensors tied to the same view.
//
// The safetensors forms are hashed as they are written (sha256(), so the
// store need not read the file again) and their writeback to disk is started
// every few MiB, so that a later fsync waits only for the tail.
#ifndef WEIGHTGATE_SERVER_STATEDICT_OUTPUT_WRITER_H_
#define WEIGHTGATE_SERVER_STATEDICT_OUTPUT_WRITER_H_

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "server/checkpoint/dtype.h"

namespace weightgate::statedict {

class OutputWriter {
 public:
  enum class Format { kSafetensors, kStoredSafetensors, kTorchZip };

  struct Entry {
    std::string name;
    checkpoint::DType dtype = checkpoint::DType::kF32;
    std::vector<int64_t> shape;
    // Index of an earlier entry this one is the same view of (same dtype and
    // shape, not itself tied), or -1.
    int tied_to = -1;
  };

  // ".pt", ".pth" and ".bin" mean a torch zip archive; anything else safetensors.
  static Format FormatForPath(const std::string& path);

  // Opens the temp file and writes what precedes the tensor bytes. `sync`:
  // fsync before the rename (default false, like torch.save; the store
  // syncs files it adopts itself).
  static absl::StatusOr<std::unique_ptr<OutputWriter>> Create(
      const std::string& path, Format format, std::vector<Entry> entries,
      std::vector<std::pair<std::string, std::string>> metadata = {}, bool sync = false);

  virtual ~OutputWriter() = default;

  // True when entry `k`'s bytes must be appended; false for a tie that the
  // format stores as an alias of an earlier entry.
  virtual bool NeedsBytes(size_t k) const = 0;
  // The next needed entry's bytes (contiguous, row-major), possibly in pieces.
  virtual absl::Status Append(std::string_view bytes) = 0;
  // Completes the file and renames it to its final path.
  virtual absl::Status Finish() = 0;
  // Drops the partial file; the final path is left untouched.
  virtual void Abort() = 0;
  // Hex sha256 of the whole file as written, valid after a successful
  // Finish(); "" for a format that is not hashed (the torch zip form).
  virtual std::string sha256() const { return ""; }
};

}  // namespace weightgate::statedict

#endif  // WEIGHTGATE_SERVER_STATEDICT_OUTPUT_WRITER_H_
