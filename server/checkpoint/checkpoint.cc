#include "server/checkpoint/checkpoint.h"

#include <utility>

#include "absl/status/status.h"
#include "common/str_util.h"
#include "server/checkpoint/checkpoint_set.h"
#include "server/checkpoint/json_spec.h"
#include "server/checkpoint/module_pickle.h"
#include "server/checkpoint/read_budget.h"
#include "server/checkpoint/safetensors.h"
#include "server/checkpoint/torch_reader.h"
#include "server/checkpoint/zip_reader.h"

namespace weightgate::checkpoint {
namespace {

// Pickled nn.Modules read as their state_dicts (module_pickle.h).
absl::StatusOr<Checkpoint> WithModulesAsStateDicts(absl::StatusOr<Checkpoint> ckpt) {
  if (ckpt.ok()) ReadModulesAsStateDicts(&*ckpt);
  return ckpt;
}

}  // namespace

std::string_view FormatName(Format format) {
  switch (format) {
    case Format::kTorchZip: return "torch_zip";
    case Format::kTorchLegacy: return "torch_legacy";
    case Format::kSafetensors: return "safetensors";
    case Format::kTorchScript: return "torchscript";
    case Format::kJsonSpec: return "json_spec";
  }
  return "unknown";
}

const common::MappedFile* Checkpoint::FileOf(const StorageRecord& record) const {
  if (record.inflated_index >= 0 || record.file_index < 0) return nullptr;
  if (record.file_index == 0) return file.get();
  if (static_cast<size_t>(record.file_index) > more_files.size()) return nullptr;
  return more_files[static_cast<size_t>(record.file_index) - 1].get();
}

std::string_view Checkpoint::StorageBytes(int index) const {
  if (index < 0 || static_cast<size_t>(index) >= storages.size()) return {};
  const StorageRecord& r = storages[static_cast<size_t>(index)];
  if (r.inflated_index >= 0) {
    if (static_cast<size_t>(r.inflated_index) >= inflated.size()) return {};
    std::string_view bytes = inflated[static_cast<size_t>(r.inflated_index)];
    return bytes.substr(0, std::min<uint64_t>(r.nbytes, bytes.size()));
  }
  const common::MappedFile* f = FileOf(r);
  if (f == nullptr) return {};
  std::string_view data = f->data();
  if (r.file_offset > data.size() || r.nbytes > data.size() - r.file_offset) return {};
  return data.substr(static_cast<size_t>(r.file_offset), static_cast<size_t>(r.nbytes));
}

std::string_view Checkpoint::TensorStorageBytes(const TensorRecord& tensor) const {
  std::string_view bytes = StorageBytes(tensor.storage_index);
  uint64_t skip;
  if (tensor.storage_offset < 0 ||
      __builtin_mul_overflow(static_cast<uint64_t>(tensor.storage_offset), ItemSize(tensor.dtype),
                             &skip) ||
      skip > bytes.size()) {
    return {};
  }
  return bytes.substr(static_cast<size_t>(skip));
}

namespace {

absl::StatusOr<Checkpoint> ReadAnyFormat(std::shared_ptr<const common::MappedFile> file,
                                         const ReadOptions& options) {
  if (file == nullptr) return absl::InvalidArgumentError("not a checkpoint: no file");
  std::string_view data = file->data();
  if (data.empty()) return absl::InvalidArgumentError("not a checkpoint: empty file");
  if (LooksLikeZip(data)) {
    absl::StatusOr<ZipReader> zip = ZipReader::Open(data, ZipLimitsFrom(options));
    if (!zip.ok()) return zip.status();
    return WithModulesAsStateDicts(ReadTorchZip(std::move(file), *zip, options));
  }
  if (LooksLikeTorchLegacy(data)) {
    return WithModulesAsStateDicts(ReadTorchLegacy(std::move(file), options));
  }
  if (LooksLikeSafetensors(data)) return ReadSafetensors(std::move(file), options);
  if (LooksLikeJsonSpec(data)) return ReadJsonSpec(std::move(file), options);
  return absl::InvalidArgumentError(
      "not a checkpoint: neither a zip archive, a legacy torch.save file, safetensors nor a JSON "
      "spec");
}

}  // namespace

absl::StatusOr<Checkpoint> ReadCheckpoint(std::shared_ptr<const common::MappedFile> file,
                                          const ReadOptions& options) {
  const uint64_t file_bytes = file == nullptr ? 0 : file->data().size();
  absl::StatusOr<Checkpoint> ckpt = ReadAnyFormat(std::move(file), options);
  if (!ckpt.ok()) return ckpt;
  if (ckpt->budget_limit == 0) {
    // Formats without a pickle: the file itself is the input.
    ckpt->budget_limit =
        ReadBudget::LimitFor(options.budget_fixed_bytes, options.budget_per_input_byte, file_bytes);
  }
  // Whatever the tree, the names every consumer flattens it into are
  // bounded here, once.
  ReadBudget budget(ckpt->budget_limit, ckpt->budget_used);
  FlattenLimits limits;
  limits.max_key_bytes = options.max_tensor_key_bytes;
  limits.max_names = options.max_tensor_names;
  limits.max_visits = options.max_flatten_visits;
  if (absl::Status s = CheckTensorNames(ckpt->root, limits, &budget); !s.ok()) return s;
  ckpt->budget_used = budget.used();
  return ckpt;
}

absl::StatusOr<Checkpoint> ReadCheckpointFile(const std::string& path, const ReadOptions& options) {
  if (IsCheckpointSetPath(path)) return ReadCheckpointSet(path, options);
  absl::StatusOr<std::shared_ptr<const common::MappedFile>> file = common::MappedFile::Open(path);
  if (!file.ok()) return file.status();
  return ReadCheckpoint(*std::move(file), options);
}

}  // namespace weightgate::checkpoint
