// Checkpoint is the parsed, still untrusted, description of one checkpoint
// file: its format, the object tree it holds, where every storage's bytes
// are, and which globals the pickle named. ReadCheckpoint builds it from
// bytes by content (never by file name), without executing anything and
// without copying tensor bytes.
#ifndef WEIGHTGATE_SERVER_CHECKPOINT_CHECKPOINT_H_
#define WEIGHTGATE_SERVER_CHECKPOINT_CHECKPOINT_H_

#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "common/mapped_file.h"
#include "server/checkpoint/value.h"

namespace weightgate::checkpoint {

enum class Format {
  kTorchZip,     // torch.save >= 1.6: zip with <prefix>/data.pkl
  kTorchLegacy,  // torch.save < 1.6: magic number + pickles + raw storages
  kSafetensors,
  kTorchScript,  // zip with <prefix>/code/ and constants.pkl
  kJsonSpec,     // {"tensors": {name: {"dtype": "F32", "shape": [...]}}}
};

// "torch_zip", "torch_legacy", "safetensors", "torchscript", "json_spec".
std::string_view FormatName(Format format);

struct Checkpoint {
  Format format = Format::kTorchZip;
  std::string archive_prefix;  // zip formats: the top folder ("archive", "model", ...)
  std::shared_ptr<const common::MappedFile> file;
  std::vector<std::shared_ptr<const common::MappedFile>>
      more_files;  // file sets (checkpoint_set.h)
  std::unique_ptr<ValueArena> arena = std::make_unique<ValueArena>();
  const Value* root = nullptr;
  std::vector<StorageRecord> storages;
  std::vector<std::string> inflated;        // bytes of deflated storages (rare)
  std::vector<std::string> opaque_globals;  // unknown globals, deduplicated, in first-seen order
  std::vector<std::string> unsafe_globals;  // known-dangerous globals
  // Unknown globals the pickle calls (what plain torch.load would execute);
  // see PickleContext::called_globals.
  std::vector<std::string> called_globals;
  // Why torch 1.13's torch.load(weights_only=True) would refuse the file:
  // globals outside its allow-list and opcodes it lacks. Empty: it loads.
  std::vector<std::string> weights_only_blockers;
  std::vector<std::string> metadata;  // safetensors __metadata__ as key=value, zip "version", ...
  uint64_t budget_limit = 0;          // the read budget (ReadOptions) of this file
  uint64_t budget_used = 0;           // what reading it charged, tensor names included

  bool unsafe() const { return !unsafe_globals.empty(); }

  // The file storage `record` lies in (nullptr for inflated or bad indices).
  const common::MappedFile* FileOf(const StorageRecord& record) const;

  // The bytes of storage `index` (file or inflated); empty view when out of range.
  std::string_view StorageBytes(int index) const;

  // The bytes of `tensor`'s storage from its first element's offset onward.
  // Callers use strides/shape to address elements; the reader has checked
  // that every addressed element lies inside the storage.
  std::string_view TensorStorageBytes(const TensorRecord& tensor) const;
};

// Which weights a DeepSpeed ZeRO set yields (zero_reader.h).
enum class ZeroWeights {
  kFp32,    // the fp32 master weights rebuilt from the optimizer partitions
  kModule,  // the (often half-precision) module weights saved beside them; stages 1-2
};

// Caps applied while reading; defaults suit checkpoints up to hundreds of GB.
// Every resource limit reached is a ResourceExhausted error naming it
// ("resource limit read_budget: ...", see read_budget.h), which validation
// reports as INVALID reason `resource_limit`.
struct ReadOptions {
  uint64_t max_pickle_bytes = uint64_t{256} << 20;  // one data.pkl / legacy pickle
  uint32_t max_zip_entries = 1 << 20;
  // Deflated zip entries: each may inflate at most this ratio (plus 4 KiB,
  // kZipRatioSlackBytes), whatever its size ...
  uint32_t max_compression_ratio = 1000;
  // ... and all of them together at most
  //   min(max_inflated_bytes,
  //       inflated_fixed_bytes + inflated_per_archive_byte x archive bytes).
  // torch.save stores (never deflates) its entries, so honest archives use
  // none of this.
  uint64_t max_inflated_bytes = uint64_t{4} << 30;
  uint64_t inflated_fixed_bytes = uint64_t{1} << 20;
  uint32_t inflated_per_archive_byte = 64;

  // The read budget (read_budget.h): every byte the reader allocates for the
  // object tree (nodes, container items, items copied by REDUCE of set /
  // frozenset / OrderedDict / torch.Size / unknown constructors, strings,
  // memo, stack, tensor shapes), for inflated entries and for the tensor
  // names checked at the end counts against
  //   budget_fixed_bytes + budget_per_input_byte x input bytes,
  // where the input bytes are those the pickle occupies in the file (the
  // data.pkl entry as stored, deflated or not; for the legacy format, the
  // pickle bytes read so far) or the whole file (safetensors, JSON specs).
  // Honest torch pickles take 20 to 50 bytes per pickle byte (the torch
  // fixtures, names included); a hostile one is stopped at the limit, so a
  // 1 KB file never takes more than about 64 MiB.
  uint64_t budget_fixed_bytes = uint64_t{64} << 20;
  uint32_t budget_per_input_byte = 256;

  // Tensor names as FlattenTensors builds them (dotted dict paths): one name
  // at most max_tensor_key_bytes long, at most max_tensor_names of them (a
  // shared sub-dict counts once per path that reaches it), their bytes
  // charged to the read budget, and the walk that finds them at most
  // max_flatten_visits node visits.
  uint32_t max_tensor_key_bytes = 4096;
  uint64_t max_tensor_names = uint64_t{1} << 22;
  uint64_t max_flatten_visits = uint64_t{1} << 22;
  uint32_t max_stack_depth = 1 << 20;  // pickle stack + metastack entries
  uint32_t max_nesting = 256;          // container nesting
  uint64_t max_memo_entries = 1 << 24;
  uint64_t max_values = uint64_t{1} << 24;  // arena nodes (~176 bytes each)
  uint64_t max_safetensors_header = 100 << 20;
  ZeroWeights zero_weights = ZeroWeights::kFp32;

  // Tensor-parallel sets (megatron_reader.h): the shape the registered spec
  // gives a tensor name, when known (MakeSpecShapeLookup builds one); and
  // per-name merge dims that override everything ("name" -> dim, -1 =
  // replicated).
  std::function<std::optional<std::vector<int64_t>>(std::string_view name)> expected_shape;
  std::vector<std::pair<std::string, int>> tp_merge_dims;
};

// Reads any supported format. Errors are InvalidArgument with a short reason
// ("zip: entry name contains ..", "pickle: truncated at offset 123", ...).
// Unsafe globals are NOT an error here: the Checkpoint lists them and callers
// decide (inspect reports them, validation rejects with reason unsafe_pickle).
absl::StatusOr<Checkpoint> ReadCheckpoint(std::shared_ptr<const common::MappedFile> file,
                                          const ReadOptions& options = {});

// Convenience: Open + ReadCheckpoint. A directory or an index file is read
// as a set of files (ReadCheckpointSet, checkpoint_set.h).
absl::StatusOr<Checkpoint> ReadCheckpointFile(const std::string& path,
                                              const ReadOptions& options = {});

}  // namespace weightgate::checkpoint

#endif  // WEIGHTGATE_SERVER_CHECKPOINT_CHECKPOINT_H_
