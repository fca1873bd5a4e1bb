// Registry: the checkpoint paths. RegisterModel turns a reference file into
// a ModelSpec (keeping a TorchScript reference as a blob for the smoke
// test); Validate and NormalizeTo run the statedict engine against a
// registered model. Model metadata operations live in registry.cc.
#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "common/model_ref.h"
#include "common/time_util.h"
#include "server/registry/registry.h"
#include "server/statedict/normalizer.h"
#include "server/statedict/renamer.h"
#include "server/statedict/spec.h"

namespace weightgate::registry {
namespace {

namespace v1 = weightgate::v1;

constexpr size_t kCopyChunkBytes = size_t{1} << 20;

// Copies the file at `path` into a new blob; returns its sha256.
absl::StatusOr<std::string> StoreFileAsBlob(store::Store& store, const std::string& path) {
  absl::StatusOr<std::unique_ptr<store::StagedFile>> staged = store.NewStagedFile();
  if (!staged.ok()) return staged.status();
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    return absl::NotFoundError(absl::StrCat("cannot open ", path, ": ", std::strerror(errno)));
  }
  std::vector<char> buf(kCopyChunkBytes);
  absl::Status status;
  for (;;) {
    ssize_t got = ::read(fd, buf.data(), buf.size());
    if (got < 0 && errno == EINTR) continue;
    if (got < 0) {
      status = absl::InternalError(absl::StrCat("read ", path, ": ", std::strerror(errno)));
      break;
    }
    if (got == 0) break;
    status = (*staged)->Append(std::string_view(buf.data(), static_cast<size_t>(got)));
    if (!status.ok()) break;
  }
  ::close(fd);
  if (!status.ok()) return status;
  if (absl::Status s = (*staged)->Finish(); !s.ok()) return s;
  return store.CommitBlob(std::move(*staged));
}

}  // namespace

absl::StatusOr<v1::Model> Registry::RegisterModel(const v1::RegisterModelHeader& header,
                                                  const std::string& reference_path,
                                                  const CallControl& control) {
  if (absl::Status s = common::ValidateModelId(header.model_id()); !s.ok()) return s;
  absl::StatusOr<v1::Model> existing = options_.store->GetModel(header.model_id());
  if (existing.ok() && !header.replace()) {
    return absl::AlreadyExistsError(absl::StrCat(
        "model '", header.model_id(), "' is already registered (set replace to change its spec)"));
  }
  if (!existing.ok() && !absl::IsNotFound(existing.status())) return existing.status();

  // A policy that cannot be applied is refused now, not at every upload.
  if (absl::Status s = statedict::ValidateRenameRules(header.policy()); !s.ok()) return s;
  std::vector<v1::ExampleInput> examples(header.example_inputs().begin(),
                                         header.example_inputs().end());
  absl::StatusOr<v1::ModelSpec> spec = DeriveSpec(reference_path, examples, control);
  if (!spec.ok()) return spec.status();
  if (!spec->torchscript_sha256().empty()) {
    // The smoke test of every later validation needs the archive itself.
    absl::StatusOr<std::string> sha = StoreFileAsBlob(*options_.store, reference_path);
    if (!sha.ok()) return sha.status();
    if (*sha != spec->torchscript_sha256()) {
      return absl::AbortedError("reference changed while it was being registered");
    }
  }

  if (existing.ok()) {
    // Versions, aliases and the creation time stay; spec and policy change.
    absl::Status s = options_.store->UpdateModel(header.model_id(), [&](v1::Model& model) {
      *model.mutable_spec() = *spec;
      *model.mutable_policy() = header.policy();
      model.set_description(header.description());
      return absl::OkStatus();
    });
    if (!s.ok()) return s;
    return options_.store->GetModel(header.model_id());
  }
  v1::Model model;
  model.set_model_id(header.model_id());
  *model.mutable_spec() = *std::move(spec);
  *model.mutable_policy() = header.policy();
  model.set_description(header.description());
  model.set_created_unix_ms(common::NowMs());
  model.set_updated_unix_ms(model.created_unix_ms());
  if (absl::Status s = options_.store->PutModel(model); !s.ok()) return s;
  return model;
}

absl::StatusOr<v1::ValidationReport> Registry::Validate(const v1::UploadHeader& header,
                                                        const std::string& checkpoint_path,
                                                        const CallControl& control) const {
  return NormalizeTo(header, checkpoint_path, "", control);
}

absl::StatusOr<v1::ValidationReport> Registry::NormalizeTo(const v1::UploadHeader& header,
                                                           const std::string& checkpoint_path,
                                                           const std::string& output_path,
                                                           const CallControl& control,
                                                           const std::string& known_input_sha256,
                                                           std::string* output_sha256) const {
  absl::StatusOr<v1::Model> model = options_.store->GetModel(header.model_id());
  if (!model.ok()) return model.status();
  const v1::NormalizationPolicy& policy =
      header.has_policy_override() ? header.policy_override() : model->policy();
  statedict::NormalizeOptions options;
  options.device = options_.device;
  options.model_id = header.model_id();
  options.output_path = output_path;
  options.output_format = statedict::NormalizeOptions::OutputFormat::kStoredSafetensors;
  // A stored version records which upload it came from; a dry run skips the
  // extra pass over the file, and so does a caller that knows the hash.
  options.compute_input_sha256 = !output_path.empty() && known_input_sha256.empty();
  options.output_sha256 = output_sha256;
  const std::string& ts = model->spec().torchscript_sha256();
  if (!ts.empty()) {
    if (!options_.store->HasBlob(ts)) {
      return absl::FailedPreconditionError(absl::StrCat(
          "model '", header.model_id(), "': TorchScript reference blob ", ts, " is missing"));
    }
    options.torchscript_path = options_.store->BlobPath(ts);
  }
  absl::StatusOr<v1::ValidationReport> report =
      RunNormalize(checkpoint_path, model->spec(), policy, options, control);
  if (report.ok() && !known_input_sha256.empty()) report->set_input_sha256(known_input_sha256);
  return report;
}

}  // namespace weightgate::registry
