// Normalize is the whole offline engine behind `weightgate validate`,
// `weightgate normalize` and the upload path: read a checkpoint (untrusted,
// by content), match it to a model's spec under a policy, check every tensor
// numerically with libtorch over zero-copy views of the mapped file, write
// the normalised tensors (optional), run the TorchScript smoke test
// (optional), and describe all of it in one ValidationReport.
//
// Tensors are processed one at a time and the mapped pages of each are
// released after use, so memory stays bounded by the largest tensor, not the
// checkpoint.
//
// Thread-safe: calls share no state.
#ifndef WEIGHTGATE_SERVER_STATEDICT_NORMALIZER_H_
#define WEIGHTGATE_SERVER_STATEDICT_NORMALIZER_H_

#include <functional>
#include <string>

#include "absl/status/statusor.h"
#include "server/checkpoint/checkpoint.h"
#include "weightgate/v1/types.pb.h"

namespace weightgate::statedict {

struct NormalizeOptions {
  // "auto" (CUDA when libtorch has it, else CPU), "cpu", "cuda" or "cuda:N".
  std::string device = "auto";
  // Where the normalised tensors go; "" validates only. ".pt"/".pth"/".bin"
  // write a torch.save zip archive, anything else safetensors. Written only
  // for a VALID or NORMALIZED verdict; never left half-written.
  std::string output_path;
  enum class OutputFormat { kByExtension, kSafetensors, kStoredSafetensors, kTorchZip };
  // kByExtension (default) as described above; the store's staged files
  // have no meaningful extension and ask for kStoredSafetensors: safetensors
  // holding a tied tensor's bytes once (OutputWriter::Format).
  OutputFormat output_format = OutputFormat::kByExtension;
  // fsync the output before renaming it into place. Default false, like
  // torch.save; the store fsyncs the files it adopts.
  bool sync_output = false;
  // TorchScript archive for the smoke test; run when non-empty and the spec
  // has example_inputs. Default: none.
  std::string torchscript_path;
  // When set, receives the hex sha256 of the output file once it is in
  // place (safetensors output, hashed as it was written; "" otherwise).
  // Default: not wanted.
  std::string* output_sha256 = nullptr;
  // Fill report.input_sha256 (one more pass over the file). Default false.
  bool compute_input_sha256 = false;
  // Drop each tensor's mapped pages once it is done (bounded RSS). Default true.
  bool release_pages = true;
  // Polled while matching and between tensors; true stops the call with
  // Cancelled (and no output). Default: never.
  std::function<bool()> cancelled;
  // Copied into report.model_id.
  std::string model_id;
  checkpoint::ReadOptions read_options;
};

// The report for the checkpoint at `checkpoint_path`. Unreadable, unsafe and
// mismatching checkpoints are INVALID reports, not errors. Errors: a policy
// that cannot be applied (bad rename regex), an unavailable device, failure
// to write the output.
absl::StatusOr<weightgate::v1::ValidationReport> Normalize(
    const std::string& checkpoint_path, const weightgate::v1::ModelSpec& spec,
    const weightgate::v1::NormalizationPolicy& policy, const NormalizeOptions& options);

// "cpu" or "cuda:N" for `device`; FailedPrecondition when CUDA is asked for
// and libtorch has none, InvalidArgument for anything unknown.
absl::StatusOr<std::string> ResolveDevice(const std::string& device);

}  // namespace weightgate::statedict

#endif  // WEIGHTGATE_SERVER_STATEDICT_NORMALIZER_H_
