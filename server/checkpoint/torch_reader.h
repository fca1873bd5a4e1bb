// Readers for the PyTorch checkpoint formats that hold a pickle:
//  - torch.save zip archives (torch >= 1.6): `<prefix>/data.pkl` whose
//    persistent ids ('storage', StorageClass, key, location, numel) name the
//    stored entries `<prefix>/data/<key>`; any archive prefix; the
//    `<prefix>/byteorder` record must say "little".
//  - TorchScript archives (torch.jit.save): the same layout plus
//    `<prefix>/code/` and `<prefix>/constants.pkl`. Their `data.pkl` holds
//    the module objects (`__torch__.*` globals, opaque here) whose BUILD
//    state carries the parameters, so FlattenTensors names them like a
//    state_dict.
//  - the legacy format (torch < 1.6, or `_use_new_zipfile_serialization=
//    False`): pickles of the magic number, the protocol version and sys_info,
//    then the object pickle whose persistent ids are ('storage',
//    StorageClass, key, location, numel, view_metadata), then the pickled
//    list of storage keys, then per key an 8-byte little-endian element
//    count followed by the raw bytes.
//
// Tensor bytes are never read: StorageRecords point into the mapped file and
// every tensor's extent (offset, shape, strides) is checked against its
// storage. Several tensors viewing one storage share its storage_index.
#ifndef WEIGHTGATE_SERVER_CHECKPOINT_TORCH_READER_H_
#define WEIGHTGATE_SERVER_CHECKPOINT_TORCH_READER_H_

#include <memory>
#include <string_view>

#include "absl/status/statusor.h"
#include "common/mapped_file.h"
#include "server/checkpoint/checkpoint.h"
#include "server/checkpoint/pickle_reader.h"
#include "server/checkpoint/zip_reader.h"

namespace weightgate::checkpoint {

// The pickle caps of `options`.
PickleLimits PickleLimitsFrom(const ReadOptions& options);

// The zip caps of `options`.
ZipLimits ZipLimitsFrom(const ReadOptions& options);

// True when `zip` holds `<prefix>/data.pkl` for the prefix of its first entry;
// sets *prefix.
bool IsTorchZip(const ZipReader& zip, std::string* prefix);

// True when the archive at `prefix` is a TorchScript archive (`code/` entries
// and `constants.pkl`).
bool IsTorchScript(const ZipReader& zip, std::string_view prefix);

// Reads a torch.save or TorchScript zip archive; `zip` indexes file->data().
// Sets format kTorchZip or kTorchScript.
absl::StatusOr<Checkpoint> ReadTorchZip(std::shared_ptr<const common::MappedFile> file,
                                        const ZipReader& zip, const ReadOptions& options);

// True when `data` starts with the legacy magic number pickle.
bool LooksLikeTorchLegacy(std::string_view data);

absl::StatusOr<Checkpoint> ReadTorchLegacy(std::shared_ptr<const common::MappedFile> file,
                                           const ReadOptions& options);

}  // namespace weightgate::checkpoint

#endif  // WEIGHTGATE_SERVER_CHECKPOINT_TORCH_READER_H_
