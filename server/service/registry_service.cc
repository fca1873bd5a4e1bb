#include "server/service/registry_service.h"

#include <chrono>
#include <cstdio>
#include <iostream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "common/model_ref.h"
#include "server/registry/canonical.h"
#include "server/service/call_log.h"
#include "server/service/policy_check.h"
#include "server/service/status_util.h"
#include "server/service/upload_reactor.h"

namespace weightgate::service {
namespace {

using weightgate::v1::Model;
using weightgate::v1::RegisterModelHeader;
using weightgate::v1::RegisterModelRequest;
using weightgate::v1::UploadHeader;
using weightgate::v1::UploadRequest;
using weightgate::v1::ValidationReport;
using weightgate::v1::Verdict_Name;

double SecondsSince(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

void RecordReport(Metrics& metrics, const char* rpc, const ValidationReport& report,
                  double seconds) {
  metrics.RecordValidation(rpc, Verdict_Name(report.verdict()), seconds);
  for (const std::string& reason : report.reasons()) metrics.RecordRejection(reason);
  // One line per checkpoint for operators reading the server's log.
  std::cerr << absl::StrFormat(
      "weightgate-server: %s %s: %s%s%s, %d tensors, %.1f MiB, %.2f s on %s\n", rpc,
      report.model_id(), Verdict_Name(report.verdict()), report.reasons().empty() ? "" : " ",
      absl::StrJoin(report.reasons(), ","), report.tensor_count(),
      static_cast<double>(report.total_bytes()) / (1 << 20), seconds, report.device());
}

// A validation stops (its worker is killed) when the client cancels or the
// call's deadline passes.
worker::CallControl Control(grpc::CallbackServerContext* context) {
  worker::CallControl control;
  if (context->deadline() != std::chrono::system_clock::time_point::max()) {
    control.deadline = absl::FromChrono(context->deadline());
  }
  control.cancelled = [context] { return context->IsCancelled(); };
  return control;
}

}  // namespace

grpc::ServerUnaryReactor* RegistryService::Unary(grpc::CallbackServerContext* context,
                                                 const char* method, Role role, std::string ref,
                                                 std::function<absl::Status()> work) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  auto log = std::make_shared<CallLog>(options_.metrics, method, context);
  log->set_ref(std::move(ref));
  Caller caller;
  grpc::Status auth = options_.auth->Check(context, role, &caller);
  log->set_identity(caller.identity);
  if (!auth.ok()) {
    log->Finish(auth);
    reactor->Finish(auth);
    return reactor;
  }
  // Metadata calls touch the disk (and take the store lock): off the gRPC thread.
  options_.executor->Schedule([reactor, log, work = std::move(work)] {
    grpc::Status status = ToGrpcStatus(work());
    log->Finish(status);
    reactor->Finish(status);
  });
  return reactor;
}

UploadSetup RegistryService::Upload(const char* method, grpc::CallbackServerContext* context,
                                    Role role) {
  return UploadSetup{method,          context,
                     options_.store,  options_.metrics,
                     options_.auth,   options_.executor,
                     options_.heavy,  options_.max_upload_bytes,
                     options_.limits, role};
}

grpc::ServerReadReactor<RegisterModelRequest>* RegistryService::RegisterModel(
    grpc::CallbackServerContext* context, Model* response) {
  using Reactor = UploadReactor<RegisterModelRequest, RegisterModelHeader>;
  // Registering sets the model's spec and policy: admins only.
  return new Reactor(
      Upload("RegisterModel", context, Role::kAdmin),
      [this, response, context](const RegisterModelHeader& header, StagedUpload& staged,
                                const Caller&) {
        absl::StatusOr<Model> model =
            options_.registry->RegisterModel(header, staged.path(), Control(context));
        if (!model.ok()) return ToGrpcStatus(model.status());
        *response = *std::move(model);
        if (absl::StatusOr<std::vector<Model>> all = options_.store->ListModels(); all.ok()) {
          options_.metrics->SetModels(static_cast<double>(all->size()));
        }
        return grpc::Status::OK;
      });
}

grpc::ServerUnaryReactor* RegistryService::GetModel(grpc::CallbackServerContext* context,
                                                    const weightgate::v1::GetModelRequest* request,
                                                    Model* response) {
  return Unary(context, "GetModel", Role::kReader, request->model_id(), [this, request, response] {
    absl::StatusOr<Model> model = options_.registry->GetModel(request->model_id());
    if (!model.ok()) return model.status();
    *response = *std::move(model);
    return absl::OkStatus();
  });
}

grpc::ServerUnaryReactor* RegistryService::ListModels(
    grpc::CallbackServerContext* context, const weightgate::v1::ListModelsRequest* request,
    weightgate::v1::ListModelsResponse* response) {
  return Unary(context, "ListModels", Role::kReader, "", [this, response] {
    absl::StatusOr<std::vector<Model>> models = options_.registry->ListModels();
    if (!models.ok()) return models.status();
    options_.metrics->SetModels(static_cast<double>(models->size()));
    for (Model& m : *models) *response->add_models() = std::move(m);
    return absl::OkStatus();
  });
}

grpc::ServerUnaryReactor* RegistryService::DeleteModel(
    grpc::CallbackServerContext* context, const weightgate::v1::DeleteModelRequest* request,
    weightgate::v1::DeleteModelResponse* response) {
  return Unary(context, "DeleteModel", Role::kAdmin, request->model_id(), [this, request] {
    absl::Status s = options_.registry->DeleteModel(request->model_id());
    options_.metrics->SetStoreBytes(static_cast<double>(options_.store->BlobBytes()));
    return s;
  });
}

// A writer's per-request policy may only tighten the model's; an admin's may
// do anything.
absl::Status RegistryService::CheckOverride(const UploadHeader& header, const Caller& caller) {
  if (!header.has_policy_override() || caller.role == Role::kAdmin) return absl::OkStatus();
  absl::StatusOr<Model> model = options_.store->GetModel(header.model_id());
  if (!model.ok()) return model.status();
  return CheckOverrideOnlyTightens(model->policy(), header.policy_override());
}

grpc::ServerReadReactor<UploadRequest>* RegistryService::ValidateCheckpoint(
    grpc::CallbackServerContext* context, ValidationReport* response) {
  using Reactor = UploadReactor<UploadRequest, UploadHeader>;
  return new Reactor(Upload("ValidateCheckpoint", context, Role::kWriter),
                     [this, response, context](const UploadHeader& header, StagedUpload& staged,
                                               const Caller& caller) {
                       if (absl::Status s = CheckOverride(header, caller); !s.ok())
                         return ToGrpcStatus(s);
                       auto start = std::chrono::steady_clock::now();
                       absl::StatusOr<ValidationReport> report =
                           options_.registry->Validate(header, staged.path(), Control(context));
                       if (!report.ok()) return ToGrpcStatus(report.status());
                       RecordReport(*options_.metrics, "ValidateCheckpoint", *report,
                                    SecondsSince(start));
                       *response = *std::move(report);
                       return grpc::Status::OK;
                     });
}

// An upload that already is the canonical stored form (e.g. a fetched blob)
// is only checked, then moved to `output_path` as it is: its bytes were
// hashed as they arrived and nothing is rewritten. Anything else: the
// normaliser writes `output_path`, hashing it as it writes. Either way the
// store is handed the output's sha256 and need not read it again, and
// report.input_sha256 is the staged upload's hash.
absl::StatusOr<ValidationReport> RegistryService::CheckAndWrite(
    const UploadHeader& header, StagedUpload& staged, const std::string& output_path,
    const registry::Registry::CallControl& control, std::string* output_sha256) {
  absl::StatusOr<ValidationReport> report;
  bool as_uploaded = false;
  output_sha256->clear();
  absl::StatusOr<Model> model = options_.store->GetModel(header.model_id());
  if (model.ok() && !header.has_policy_override() && !staged.is_set() &&
      registry::IsCanonicalSafetensors(model->spec(), staged.path())) {
    report = options_.registry->Validate(header, staged.path(), control);
    as_uploaded = report.ok() && report->verdict() == weightgate::v1::VALID &&
                  report->fixes_size() == 0 &&
                  ::rename(staged.path().c_str(), output_path.c_str()) == 0;
    if (as_uploaded) *output_sha256 = staged.sha256();
  }
  if (!as_uploaded) {
    report = options_.registry->NormalizeTo(header, staged.path(), output_path, control,
                                            staged.sha256(), output_sha256);
  }
  if (report.ok()) report->set_input_sha256(staged.sha256());
  return report;
}

grpc::ServerReadReactor<UploadRequest>* RegistryService::UploadCheckpoint(
    grpc::CallbackServerContext* context, weightgate::v1::UploadResponse* response) {
  using Reactor = UploadReactor<UploadRequest, UploadHeader>;
  return new Reactor(
      Upload("UploadCheckpoint", context, Role::kWriter),
      [this, response, context](const UploadHeader& header, StagedUpload& staged,
                                const Caller& caller) {
        if (!header.alias().empty()) {
          if (absl::Status s = common::ValidateModelId(header.alias()); !s.ok()) {
            return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                                absl::StrCat("invalid alias '", header.alias(), "'"));
          }
        }
        if (absl::Status s = CheckOverride(header, caller); !s.ok()) return ToGrpcStatus(s);
        auto start = std::chrono::steady_clock::now();
        absl::StatusOr<std::unique_ptr<store::StagedFile>> output = options_.store->NewStagedFile();
        if (!output.ok()) return ToGrpcStatus(output.status());
        std::string output_sha256;
        absl::StatusOr<ValidationReport> report =
            CheckAndWrite(header, staged, (*output)->path(), Control(context), &output_sha256);
        if (!report.ok()) return ToGrpcStatus(report.status());
        RecordReport(*options_.metrics, "UploadCheckpoint", *report, SecondsSince(start));
        *response->mutable_report() = *report;
        if (report->verdict() == weightgate::v1::INVALID) {
          // The call succeeds and the whole report travels in the response
          // body, whatever its size; nothing is stored and `version` stays
          // unset. (Status details and trailers are size-limited.)
          return grpc::Status::OK;
        }
        if (absl::Status s = (*output)->AdoptContents(output_sha256); !s.ok()) {
          return ToGrpcStatus(s);
        }
        weightgate::v1::Version version;
        version.set_filename(header.filename());
        *version.mutable_report() = *report;
        // Blob and version record under one store lock: no garbage collection
        // can remove a reused blob in between.
        absl::StatusOr<weightgate::v1::Version> added = options_.store->CommitVersion(
            header.model_id(), std::move(*output), std::move(version), header.alias());
        if (!added.ok()) return ToGrpcStatus(added.status());
        *response->mutable_version() = *std::move(added);
        options_.metrics->SetStoreBytes(static_cast<double>(options_.store->BlobBytes()));
        return grpc::Status::OK;
      });
}

grpc::ServerUnaryReactor* RegistryService::ListVersions(
    grpc::CallbackServerContext* context, const weightgate::v1::ListVersionsRequest* request,
    weightgate::v1::ListVersionsResponse* response) {
  return Unary(
      context, "ListVersions", Role::kReader, request->model_id(), [this, request, response] {
        auto versions = options_.store->ListVersions(request->model_id());
        if (!versions.ok()) return versions.status();
        for (auto& v : *versions) {
          v.clear_report();  // keep listings small; GetVersion-style detail is in the blob's record
          *response->add_versions() = std::move(v);
        }
        return absl::OkStatus();
      });
}

grpc::ServerUnaryReactor* RegistryService::SetAlias(grpc::CallbackServerContext* context,
                                                    const weightgate::v1::SetAliasRequest* request,
                                                    weightgate::v1::SetAliasResponse* response) {
  return Unary(context, "SetAlias", Role::kWriter,
               absl::StrCat(request->model_id(), "@", request->alias()), [this, request, response] {
                 if (request->alias() == "latest") {
                   return absl::InvalidArgumentError("'latest' moves by itself and cannot be set");
                 }
                 auto previous = options_.store->SetAlias(request->model_id(), request->alias(),
                                                          request->version());
                 if (!previous.ok()) return previous.status();
                 response->set_previous_version(*previous);
                 return absl::OkStatus();
               });
}

grpc::ServerUnaryReactor* RegistryService::DeleteVersion(
    grpc::CallbackServerContext* context, const weightgate::v1::DeleteVersionRequest* request,
    weightgate::v1::DeleteVersionResponse* response) {
  return Unary(context, "DeleteVersion", Role::kAdmin,
               absl::StrCat(request->model_id(), "@", request->version()), [this, request] {
                 absl::Status s =
                     options_.store->DeleteVersion(request->model_id(), request->version());
                 options_.metrics->SetStoreBytes(static_cast<double>(options_.store->BlobBytes()));
                 return s;
               });
}

}  // namespace weightgate::service
