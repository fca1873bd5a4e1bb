#include "server/statedict/spec.h"

#include <memory>
#include <string_view>

#include "absl/status/status.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "common/sha256.h"
#include "server/checkpoint/checkpoint_set.h"
#include "server/checkpoint/dtype.h"
#include "server/checkpoint/set_bundle.h"
#include "server/statedict/matcher.h"
#include "server/statedict/ties.h"

namespace weightgate::statedict {

namespace v1 = weightgate::v1;

absl::StatusOr<v1::ModelSpec> SpecFromCheckpoint(const checkpoint::Checkpoint& ckpt) {
  if (ckpt.unsafe()) {
    return absl::InvalidArgumentError(
        absl::StrCat("reference names unsafe globals: ", absl::StrJoin(ckpt.unsafe_globals, ", ")));
  }
  std::string container;
  std::vector<checkpoint::NamedTensor> tensors = ReferenceTensors(ckpt.root, &container);
  if (tensors.empty()) return absl::InvalidArgumentError("reference holds no tensors");
  v1::ModelSpec spec;
  spec.set_source_format(std::string(checkpoint::FormatName(ckpt.format)));
  for (const checkpoint::NamedTensor& nt : tensors) {
    v1::TensorSpec* t = spec.add_tensors();
    t->set_name(nt.name);
    t->set_dtype(std::string(checkpoint::DTypeName(nt.tensor->dtype)));
    t->mutable_shape()->Assign(nt.tensor->shape.begin(), nt.tensor->shape.end());
  }
  for (v1::TieGroup& tie : TiesFromTensors(tensors)) *spec.add_ties() = std::move(tie);
  return spec;
}

absl::StatusOr<v1::ModelSpec> SpecFromFile(const std::string& file_path,
                                           const std::vector<v1::ExampleInput>& example_inputs) {
  // A reference set uploaded as one bundle is unpacked for the read (set_bundle.h).
  absl::StatusOr<std::unique_ptr<checkpoint::UnpackedSet>> input =
      checkpoint::UnpackedSet::Open(file_path);
  if (!input.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("cannot read reference: ", input.status().message()));
  }
  const std::string& path = (*input)->path();
  absl::StatusOr<checkpoint::Checkpoint> ckpt = checkpoint::ReadCheckpointFile(path);
  absl::StatusOr<v1::ModelSpec> spec;
  bool torchscript = false;
  if (ckpt.ok() && ckpt->format != checkpoint::Format::kTorchScript) {
    spec = SpecFromCheckpoint(*ckpt);
  } else {
    // The reader may not follow every TorchScript archive; libtorch is the
    // authority on those, and is only asked when the reader says TorchScript
    // or cannot read the file at all.
    spec = SpecFromTorchScript(path);
    torchscript = spec.ok();
    if (!spec.ok() && !ckpt.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("cannot read reference: ", ckpt.status().message()));
    }
  }
  if (!spec.ok()) return spec.status();
  // A set (directory or index) is named by the sha256 of its file manifest.
  absl::StatusOr<std::string> sha = checkpoint::Sha256CheckpointSet(path);
  if (!sha.ok()) return sha.status();
  spec->set_source_sha256(*sha);
  if (!example_inputs.empty()) {
    if (!torchscript) {
      return absl::InvalidArgumentError(
          "example inputs need a TorchScript reference (torch.jit.script(model).save(...))");
    }
    spec->set_torchscript_sha256(*sha);
    for (const v1::ExampleInput& in : example_inputs) *spec->add_example_inputs() = in;
  }
  return spec;
}

absl::StatusOr<v1::ExampleInput> ParseExampleInput(const std::string& text) {
  absl::string_view shape_text = text;
  v1::ExampleInput input;
  input.set_dtype("F32");
  size_t colon = shape_text.find(':');
  if (colon != absl::string_view::npos) {
    std::string dtype(shape_text.substr(colon + 1));
    std::optional<checkpoint::DType> d = checkpoint::DTypeFromName(dtype);
    if (!d.has_value()) {
      return absl::InvalidArgumentError(absl::StrCat("example input '", text, "': unknown dtype"));
    }
    input.set_dtype(std::string(checkpoint::DTypeName(*d)));
    shape_text = shape_text.substr(0, colon);
  }
  if (shape_text.empty()) return input;  // a 0-dim tensor
  for (absl::string_view dim : absl::StrSplit(shape_text, absl::ByAnyChar("x,"))) {
    int64_t n = 0;
    if (!absl::SimpleAtoi(dim, &n) || n < 0 || n > (int64_t{1} << 32)) {
      return absl::InvalidArgumentError(
          absl::StrCat("example input '", text, "': expected a shape like 1x3x32x32[:F32]"));
    }
    input.add_shape(n);
  }
  return input;
}

}  // namespace weightgate::statedict
