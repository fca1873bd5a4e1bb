// Internal to server/statedict, and the one header here that includes ATen:
// zero-copy tensor views over a parsed checkpoint and the TorchScript smoke
// test. Include it only from .cc files that already pay for libtorch.
#ifndef WEIGHTGATE_SERVER_STATEDICT_TORCH_VIEWS_H_
#define WEIGHTGATE_SERVER_STATEDICT_TORCH_VIEWS_H_

#include <ATen/ATen.h>

#include <functional>
#include <string>

#include "absl/status/statusor.h"
#include "server/checkpoint/checkpoint.h"
#include "weightgate/v1/types.pb.h"

namespace weightgate::statedict {

at::ScalarType ToScalarType(checkpoint::DType dtype);

// Bytes spanned by the record's view (0 for an empty tensor), or an error
// when the strides leave the storage bytes the reader found.
absl::StatusOr<uint64_t> ViewExtentBytes(const checkpoint::Checkpoint& ckpt,
                                         const checkpoint::TensorRecord& record);

// A CPU tensor aliasing the mapped bytes (strides and offset as recorded).
// Read-only memory: callers must never write through it.
absl::StatusOr<at::Tensor> ViewOf(const checkpoint::Checkpoint& ckpt,
                                  const checkpoint::TensorRecord& record);

// Loads the TorchScript archive, copies weight(name) into every parameter
// and buffer (strict: every module tensor must be provided with its shape,
// and every spec tensor must exist in the module), runs forward() once on
// seeded random inputs of spec.example_inputs and checks that every output
// tensor is finite. Never throws.
weightgate::v1::SmokeTestResult RunSmokeTest(
    const std::string& archive_path, const weightgate::v1::ModelSpec& spec,
    const std::function<absl::StatusOr<at::Tensor>(const std::string& name)>& weight);

}  // namespace weightgate::statedict

#endif  // WEIGHTGATE_SERVER_STATEDICT_TORCH_VIEWS_H_
