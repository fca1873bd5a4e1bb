// Registry orchestrates the write side: a model's spec and policy, and the
// read -> normalise -> validate -> (commit) path of a checkpoint that arrived
// as a staged file. It owns no bytes itself: metadata and blobs live in the
// Store, tensor work happens in server/statedict.
//
// This class is thread-safe.
#ifndef WEIGHTGATE_SERVER_REGISTRY_REGISTRY_H_
#define WEIGHTGATE_SERVER_REGISTRY_REGISTRY_H_

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "server/store/store.h"
#include "weightgate/v1/registry.pb.h"

namespace weightgate::registry {

class Registry final {
 public:
  struct Options {
    // Not owned; must outlive the Registry.
    store::Store* store = nullptr;
    // "auto" (CUDA when libtorch has it, else CPU), "cpu" or "cuda[:N]".
    std::string device = "auto";
  };

  static absl::StatusOr<std::unique_ptr<Registry>> Create(const Options& options);

  // Reads the reference file at `reference_path` (any readable checkpoint
  // format, a TorchScript archive or a JSON spec), derives the ModelSpec and
  // stores the model with header.policy. ALREADY_EXISTS unless header.replace.
  absl::StatusOr<weightgate::v1::Model> RegisterModel(
      const weightgate::v1::RegisterModelHeader& header, const std::string& reference_path);

  absl::StatusOr<weightgate::v1::Model> GetModel(const std::string& model_id) const;
  absl::StatusOr<std::vector<weightgate::v1::Model>> ListModels() const;
  absl::Status DeleteModel(const std::string& model_id);

  // Dry run: the report for the checkpoint at `checkpoint_path` against the
  // model in header.model_id. Unreadable, unsafe or mismatching checkpoints
  // are an INVALID report, not an error; errors are for unknown models and
  // internal failures.
  absl::StatusOr<weightgate::v1::ValidationReport> Validate(
      const weightgate::v1::UploadHeader& header, const std::string& checkpoint_path) const;

  // Validate, and for a VALID or NORMALIZED checkpoint also write the
  // normalised tensors as safetensors to `output_path` (the stored form).
  absl::StatusOr<weightgate::v1::ValidationReport> NormalizeTo(
      const weightgate::v1::UploadHeader& header, const std::string& checkpoint_path,
      const std::string& output_path) const;

 private:
  explicit Registry(const Options& options) : options_(options) {}
  Options options_;
};

}  // namespace weightgate::registry

#endif  // WEIGHTGATE_SERVER_REGISTRY_REGISTRY_H_
