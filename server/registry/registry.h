// Registry orchestrates the write side: a model's spec and policy, and the
// read -> normalise -> validate -> (commit) path of a checkpoint that arrived
// as a staged file. It owns no bytes itself: metadata and blobs live in the
// Store, tensor work happens in server/statedict — inside a validation
// worker process when Options::pool is set (the server always sets it), so
// a crash or blow-up on hostile bytes fails one request, not the server.
//
// This class is thread-safe.
#ifndef WEIGHTGATE_SERVER_REGISTRY_REGISTRY_H_
#define WEIGHTGATE_SERVER_REGISTRY_REGISTRY_H_

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "server/statedict/normalizer.h"
#include "server/store/store.h"
#include "server/worker/validation_pool.h"
#include "weightgate/v1/registry.pb.h"

namespace weightgate::registry {

class Registry final {
 public:
  struct Options {
    // Not owned; must outlive the Registry.
    store::Store* store = nullptr;
    // "auto" (CUDA when libtorch has it, else CPU), "cpu" or "cuda[:N]".
    std::string device = "auto";
    // Not owned; must outlive the Registry. Where reference files and
    // uploads are read, matched, checked and normalised. nullptr (default)
    // runs that work in this process: for tests and offline tools only.
    worker::ValidationPool* pool = nullptr;
  };
  using CallControl = worker::CallControl;

  static absl::StatusOr<std::unique_ptr<Registry>> Create(const Options& options);

  // Reads the reference file at `reference_path` (any readable checkpoint
  // format, a TorchScript archive or a JSON spec), derives the ModelSpec and
  // stores the model with header.policy. ALREADY_EXISTS unless header.replace.
  // A reference that exceeds the worker's limits is INVALID_ARGUMENT naming
  // `resource_limit`; a crashed worker is INTERNAL.
  absl::StatusOr<weightgate::v1::Model> RegisterModel(
      const weightgate::v1::RegisterModelHeader& header, const std::string& reference_path,
      const CallControl& control = {});

  absl::StatusOr<weightgate::v1::Model> GetModel(const std::string& model_id) const;
  absl::StatusOr<std::vector<weightgate::v1::Model>> ListModels() const;
  absl::Status DeleteModel(const std::string& model_id);

  // Dry run: the report for the checkpoint at `checkpoint_path` against the
  // model in header.model_id. Unreadable, unsafe or mismatching checkpoints
  // are an INVALID report, not an error, and so is one that exceeds the
  // worker's memory or time limit (reason `resource_limit`). Errors are for
  // unknown models, internal failures (INTERNAL "validation worker crashed"),
  // and requests stopped by `control` (CANCELLED, DEADLINE_EXCEEDED).
  absl::StatusOr<weightgate::v1::ValidationReport> Validate(
      const weightgate::v1::UploadHeader& header, const std::string& checkpoint_path,
      const CallControl& control = {}) const;

  // Validate, and for a VALID or NORMALIZED checkpoint also write the
  // normalised tensors as safetensors to `output_path` (the stored form).
  // report.input_sha256 is `known_input_sha256` when given (e.g. a staged
  // upload hashed as it arrived), else the worker hashes the input.
  // `output_sha256`, when given, receives the sha256 of the file written to
  // `output_path` (hashed as it was written; "" when nothing was written).
  absl::StatusOr<weightgate::v1::ValidationReport> NormalizeTo(
      const weightgate::v1::UploadHeader& header, const std::string& checkpoint_path,
      const std::string& output_path, const CallControl& control = {},
      const std::string& known_input_sha256 = "", std::string* output_sha256 = nullptr) const;

 private:
  explicit Registry(const Options& options) : options_(options) {}

  // statedict::SpecFromFile and statedict::Normalize, in a worker when
  // options_.pool is set (registry_worker.cc).
  absl::StatusOr<weightgate::v1::ModelSpec> DeriveSpec(
      const std::string& reference_path,
      const std::vector<weightgate::v1::ExampleInput>& example_inputs,
      const CallControl& control) const;
  absl::StatusOr<weightgate::v1::ValidationReport> RunNormalize(
      const std::string& checkpoint_path, const weightgate::v1::ModelSpec& spec,
      const weightgate::v1::NormalizationPolicy& policy, const statedict::NormalizeOptions& options,
      const CallControl& control) const;

  Options options_;
};

}  // namespace weightgate::registry

#endif  // WEIGHTGATE_SERVER_REGISTRY_REGISTRY_H_
