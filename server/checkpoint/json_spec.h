// JSON model specs: the expected tensors of a model written by hand or by a
// tool, with no weights:
//   {"tensors": {"fc.weight": {"dtype": "F32", "shape": [10, 20]}, ...},
//    "metadata": {"source": "..."}}
// dtype is a safetensors name in any case ("F32", "bf16") or a torch name
// ("float32", "torch.float16", "half"). Other top-level members and other
// fields of a tensor entry are ignored, so specs may carry notes.
//
// The result is a Checkpoint with format kJsonSpec whose root is a kDict of
// name (kString) -> kTensor (contiguous strides, storage_index -1: schema
// only), in the order the spec lists them; "metadata" string members become
// "key=value" entries. Errors are InvalidArgumentError("json_spec: <reason>").
#ifndef WEIGHTGATE_SERVER_CHECKPOINT_JSON_SPEC_H_
#define WEIGHTGATE_SERVER_CHECKPOINT_JSON_SPEC_H_

#include <memory>
#include <string_view>

#include "absl/status/statusor.h"
#include "common/mapped_file.h"
#include "server/checkpoint/checkpoint.h"

namespace weightgate::checkpoint {

// True when `data` is text opening a JSON object that mentions "tensors".
// Cheap; proves nothing.
bool LooksLikeJsonSpec(std::string_view data);

// Parses a JSON spec. The document may be at most
// options.max_safetensors_header bytes (the same cap as a safetensors JSON
// header); options.max_values bounds the tensors.
absl::StatusOr<Checkpoint> ReadJsonSpec(std::shared_ptr<const common::MappedFile> file,
                                        const ReadOptions& options = {});

}  // namespace weightgate::checkpoint

#endif  // WEIGHTGATE_SERVER_CHECKPOINT_JSON_SPEC_H_
