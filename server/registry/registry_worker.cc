// Registry: where the work on untrusted bytes runs. With a ValidationPool
// every reference file and upload is read, matched, checked and normalised
// in a worker process; its limits and crashes become per-request outcomes
// here. Without one (tests, offline tools) the same calls run in-process.
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "server/registry/registry.h"
#include "server/statedict/spec.h"
#include "server/worker/worker.pb.h"

namespace weightgate::registry {
namespace {

namespace v1 = weightgate::v1;

// The reason a report gives for work stopped by a worker limit.
constexpr char kResourceLimit[] = "resource_limit";

// The work's own error, as the worker reported it.
absl::Status WorkStatus(const worker::WorkResponse& response) {
  return absl::Status(static_cast<absl::StatusCode>(response.code()), response.message());
}

}  // namespace

absl::StatusOr<v1::ModelSpec> Registry::DeriveSpec(
    const std::string& reference_path, const std::vector<v1::ExampleInput>& example_inputs,
    const CallControl& control) const {
  if (options_.pool == nullptr) return statedict::SpecFromFile(reference_path, example_inputs);
  worker::WorkRequest request;
  worker::SpecWork* work = request.mutable_spec();
  work->set_reference_path(reference_path);
  for (const v1::ExampleInput& e : example_inputs) *work->add_example_inputs() = e;
  absl::StatusOr<worker::WorkResponse> response = options_.pool->Run(request, control);
  if (!response.ok()) {
    if (absl::IsResourceExhausted(response.status())) {
      return absl::InvalidArgumentError(absl::StrCat("cannot read reference (", kResourceLimit,
                                                     "): ", response.status().message()));
    }
    return response.status();
  }
  if (response->code() != 0) return WorkStatus(*response);
  return std::move(*response->mutable_spec());
}

absl::StatusOr<v1::ValidationReport> Registry::RunNormalize(
    const std::string& checkpoint_path, const v1::ModelSpec& spec,
    const v1::NormalizationPolicy& policy, const statedict::NormalizeOptions& options,
    const CallControl& control) const {
  if (options_.pool == nullptr) {
    return statedict::Normalize(checkpoint_path, spec, policy, options);
  }
  worker::WorkRequest request;
  worker::NormalizeWork* work = request.mutable_normalize();
  work->set_checkpoint_path(checkpoint_path);
  *work->mutable_spec() = spec;
  *work->mutable_policy() = policy;
  work->set_device(options.device);
  work->set_model_id(options.model_id);
  work->set_output_path(options.output_path);
  work->set_torchscript_path(options.torchscript_path);
  work->set_compute_input_sha256(options.compute_input_sha256);
  absl::StatusOr<worker::WorkResponse> response = options_.pool->Run(request, control);
  if (!response.ok()) {
    if (!absl::IsResourceExhausted(response.status())) return response.status();
    // A checkpoint that needs more memory or time than a validation may
    // use is the checkpoint's fault: an INVALID report like any other.
    v1::ValidationReport report;
    report.set_verdict(v1::INVALID);
    report.set_model_id(options.model_id);
    report.add_reasons(kResourceLimit);
    report.set_error(std::string(response.status().message()));
    return report;
  }
  if (response->code() != 0) return WorkStatus(*response);
  if (options.output_sha256 != nullptr) *options.output_sha256 = response->output_sha256();
  return std::move(*response->mutable_report());
}

}  // namespace weightgate::registry
