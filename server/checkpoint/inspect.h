// Inspection is the offline summary of a parsed Checkpoint that `weightgate
// inspect` prints: format, archive prefix, top-level keys, where the
// state_dict sits, wrapper prefixes, its tensors (name, dtype, shape,
// bytes), shared storages, non-contiguous tensors, the opaque and unsafe
// globals the pickle named, the unknown globals it calls, whether torch 1.13's
// torch.load(weights_only=True) would load it (and if not, what stops it),
// and how much of the read budget reading it took. It reads only metadata:
// no tensor bytes.
//
// Where the state_dict sits: the top level when the root dict holds tensors
// directly (or the root is an object such as a TorchScript module), else the
// first of state_dict, model_state_dict, model, module, net, state_dict_ema,
// model_ema, ema whose value holds tensors, else the top level when anything
// below it holds tensors.
#ifndef WEIGHTGATE_SERVER_CHECKPOINT_INSPECT_H_
#define WEIGHTGATE_SERVER_CHECKPOINT_INSPECT_H_

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "server/checkpoint/checkpoint.h"

namespace weightgate::checkpoint {

struct InspectedTensor {
  std::string name;  // relative to the state_dict
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
  std::vector<int64_t> strides;
  int64_t storage_offset = 0;
  uint64_t nbytes = 0;
  int storage_index = -1;
  bool contiguous = true;
};

struct SharedStorage {
  int storage_index = -1;
  std::vector<std::string> tensors;  // two or more
};

struct Inspection {
  std::string file;  // path, when the checkpoint came from a file
  uint64_t file_size = 0;
  Format format = Format::kTorchZip;
  std::string archive_prefix;
  std::vector<std::string> top_level_keys;  // root dict keys, rendered
  bool state_dict_found = false;
  std::string state_dict_path;        // "" = top level; else the key, e.g. "state_dict"
  std::vector<std::string> wrappers;  // "module.", "_orig_mod.", "model.", ...
  std::vector<InspectedTensor> tensors;
  uint64_t total_tensor_bytes = 0;
  size_t other_tensors = 0;  // tensors elsewhere (optimizer state, callbacks, ...)
  std::vector<SharedStorage> shared_storages;
  std::vector<std::string> non_contiguous;
  std::vector<std::string> opaque_globals;
  std::vector<std::string> unsafe_globals;
  std::vector<std::string> called_globals;  // unknown globals the pickle calls
  // torch.load(weights_only=True) on torch 1.13: kNotApplicable for formats
  // torch.load does not read that way (safetensors, JSON specs, TorchScript).
  enum class WeightsOnly { kLoads, kRefused, kNotApplicable };
  WeightsOnly weights_only = WeightsOnly::kNotApplicable;
  std::vector<std::string> weights_only_blockers;  // globals / opcodes that stop it
  std::vector<std::string> metadata;
  uint64_t budget_used = 0;  // read budget (ReadOptions) used, of budget_limit
  uint64_t budget_limit = 0;

  bool unsafe() const { return !unsafe_globals.empty(); }
};

// The state_dict keys probed after the top level, in order.
inline constexpr std::string_view kStateDictKeys[] = {
    "state_dict", "model_state_dict", "model",     "module",
    "net",        "state_dict_ema",   "model_ema", "ema",
};

// The wrapper prefixes detected in state_dict key names.
inline constexpr std::string_view kWrapperPrefixes[] = {
    "module.", "_orig_mod.", "_fsdp_wrapped_module.", "_checkpoint_wrapped_module.", "model.",
};

Inspection Inspect(const Checkpoint& checkpoint);

// A short human table.
std::string RenderInspectionText(const Inspection& inspection);

// One JSON object (hand-written; every string escaped, invalid UTF-8 replaced
// by U+FFFD), newline-terminated.
std::string RenderInspectionJson(const Inspection& inspection);

}  // namespace weightgate::checkpoint

#endif  // WEIGHTGATE_SERVER_CHECKPOINT_INSPECT_H_
