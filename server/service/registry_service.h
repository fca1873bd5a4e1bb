// RegistryService is the gRPC edge of weightgate.v1.ModelRegistry: it
// authenticates, receives upload streams into staged files, hands the heavy
// work to the Executor and the Registry, and maps results to gRPC statuses.
// Handlers translate and delegate; nothing here parses checkpoints.
//
// This class is thread-safe.
#ifndef WEIGHTGATE_SERVER_SERVICE_REGISTRY_SERVICE_H_
#define WEIGHTGATE_SERVER_SERVICE_REGISTRY_SERVICE_H_

#include <cstdint>

#include "server/registry/registry.h"
#include "server/service/auth.h"
#include "server/service/executor.h"
#include "server/service/limits.h"
#include "server/service/metrics.h"
#include "server/service/staged_upload.h"
#include "server/service/upload_reactor.h"
#include "server/store/store.h"
#include "weightgate/v1/registry.grpc.pb.h"

namespace weightgate::service {

class RegistryService final : public weightgate::v1::ModelRegistry::CallbackService {
 public:
  struct Options {
    // None owned; all must outlive the service.
    registry::Registry* registry = nullptr;
    store::Store* store = nullptr;
    Metrics* metrics = nullptr;
    const Authorizer* auth = nullptr;
    Executor* executor = nullptr;  // short blocking work: disk, metadata
    Executor* heavy = nullptr;     // checkpoint parsing, validation, normalisation
    // Uploads larger than this are refused with RESOURCE_EXHAUSTED.
    uint64_t max_upload_bytes = uint64_t{64} << 30;
    // Edge limits and watchdog; not owned.
    Limits* limits = nullptr;
  };
  explicit RegistryService(const Options& options) : options_(options) {}

  grpc::ServerReadReactor<weightgate::v1::RegisterModelRequest>* RegisterModel(
      grpc::CallbackServerContext* context, weightgate::v1::Model* response) override;
  grpc::ServerUnaryReactor* GetModel(grpc::CallbackServerContext* context,
                                     const weightgate::v1::GetModelRequest* request,
                                     weightgate::v1::Model* response) override;
  grpc::ServerUnaryReactor* ListModels(grpc::CallbackServerContext* context,
                                       const weightgate::v1::ListModelsRequest* request,
                                       weightgate::v1::ListModelsResponse* response) override;
  grpc::ServerUnaryReactor* DeleteModel(grpc::CallbackServerContext* context,
                                        const weightgate::v1::DeleteModelRequest* request,
                                        weightgate::v1::DeleteModelResponse* response) override;
  grpc::ServerReadReactor<weightgate::v1::UploadRequest>* UploadCheckpoint(
      grpc::CallbackServerContext* context, weightgate::v1::UploadResponse* response) override;
  grpc::ServerReadReactor<weightgate::v1::UploadRequest>* ValidateCheckpoint(
      grpc::CallbackServerContext* context, weightgate::v1::ValidationReport* response) override;
  grpc::ServerUnaryReactor* ListVersions(grpc::CallbackServerContext* context,
                                         const weightgate::v1::ListVersionsRequest* request,
                                         weightgate::v1::ListVersionsResponse* response) override;
  grpc::ServerUnaryReactor* SetAlias(grpc::CallbackServerContext* context,
                                     const weightgate::v1::SetAliasRequest* request,
                                     weightgate::v1::SetAliasResponse* response) override;
  grpc::ServerUnaryReactor* DeleteVersion(grpc::CallbackServerContext* context,
                                          const weightgate::v1::DeleteVersionRequest* request,
                                          weightgate::v1::DeleteVersionResponse* response) override;

  const Options& options() const { return options_; }

 private:
  // Runs `work` on the executor and finishes the unary RPC with its status.
  // `ref` is what the access log names (model, model@alias, ...).
  grpc::ServerUnaryReactor* Unary(grpc::CallbackServerContext* context, const char* method,
                                  Role role, std::string ref, std::function<absl::Status()> work);

  // The parts of an upload stream that come from this service.
  UploadSetup Upload(const char* method, grpc::CallbackServerContext* context, Role role);

  // PERMISSION_DENIED when a non-admin's policy override loosens the model's.
  absl::Status CheckOverride(const weightgate::v1::UploadHeader& header, const Caller& caller);

  // Validates an upload and writes its stored form to `output_path`, whose
  // sha256 goes to `*output_sha256` (see registry_service.cc).
  absl::StatusOr<weightgate::v1::ValidationReport> CheckAndWrite(
      const weightgate::v1::UploadHeader& header, StagedUpload& staged,
      const std::string& output_path, const registry::Registry::CallControl& control,
      std::string* output_sha256);

  Options options_;
};

}  // namespace weightgate::service

#endif  // WEIGHTGATE_SERVER_SERVICE_REGISTRY_SERVICE_H_
