// Model specs: the expected tensors (name, dtype, shape, in state_dict
// order) of a model, taken from a reference file the user already has.
//
//   - a checkpoint in any readable format (torch.save zip or legacy,
//     safetensors): the state_dict is found like the matcher finds it
//     (top level or a known container key), names are kept as they are;
//   - a TorchScript archive: parameters and buffers of the module tree in
//     state_dict order, via libtorch; with example inputs the spec asks for a
//     smoke test (torchscript_sha256 names the archive);
//   - a JSON spec: {"tensors": {"name": {"dtype": "F32", "shape": [..]}}}.
#ifndef WEIGHTGATE_SERVER_STATEDICT_SPEC_H_
#define WEIGHTGATE_SERVER_STATEDICT_SPEC_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "server/checkpoint/checkpoint.h"
#include "weightgate/v1/types.pb.h"

namespace weightgate::statedict {

// Spec from the reference file at `path`, format detected by content.
// source_format and source_sha256 are set; `example_inputs` are kept only
// for TorchScript references (then torchscript_sha256 = source_sha256).
// InvalidArgument for unreadable or unsafe references, or ones without tensors.
absl::StatusOr<weightgate::v1::ModelSpec> SpecFromFile(
    const std::string& path, const std::vector<weightgate::v1::ExampleInput>& example_inputs = {});

// Spec from an already parsed (non-TorchScript) checkpoint; no sha256.
absl::StatusOr<weightgate::v1::ModelSpec> SpecFromCheckpoint(const checkpoint::Checkpoint& ckpt);

// Spec from a TorchScript archive via torch::jit::load; no sha256.
absl::StatusOr<weightgate::v1::ModelSpec> SpecFromTorchScript(const std::string& path);

// "1x3x32x32" or "1x3x32x32:F16" -> ExampleInput.
absl::StatusOr<weightgate::v1::ExampleInput> ParseExampleInput(const std::string& text);

}  // namespace weightgate::statedict

#endif  // WEIGHTGATE_SERVER_STATEDICT_SPEC_H_
