#include "server/service/stream_service.h"

#include "server/service/status_util.h"

namespace weightgate::service {
namespace {

// Finishes a server-streaming RPC at once with `status`.
template <typename Response>
class FinishedWriter final : public grpc::ServerWriteReactor<Response> {
 public:
  explicit FinishedWriter(const grpc::Status& status) { this->Finish(status); }
  void OnDone() override { delete this; }
};

template <typename Response>
grpc::ServerWriteReactor<Response>* NotYet(Metrics* metrics, const char* method) {
  metrics->RecordRpc(method, "UNIMPLEMENTED");
  return new FinishedWriter<Response>(grpc::Status(
      grpc::StatusCode::UNIMPLEMENTED,
      std::string(method) + " is not available in this weightgate release yet"));
}

}  // namespace

grpc::ServerWriteReactor<weightgate::v1::FetchResponse>* StreamService::FetchWeights(
    grpc::CallbackServerContext* context, const weightgate::v1::FetchRequest* request) {
  grpc::Status auth = options_.auth->Check(context, Role::kReader);
  if (!auth.ok()) {
    options_.metrics->RecordRpc("FetchWeights", CodeName(auth.error_code()));
    return new FinishedWriter<weightgate::v1::FetchResponse>(auth);
  }
  return NotYet<weightgate::v1::FetchResponse>(options_.metrics, "FetchWeights");
}

grpc::ServerWriteReactor<weightgate::v1::WatchEvent>* StreamService::WatchModel(
    grpc::CallbackServerContext* context, const weightgate::v1::WatchRequest* request) {
  grpc::Status auth = options_.auth->Check(context, Role::kReader);
  if (!auth.ok()) {
    options_.metrics->RecordRpc("WatchModel", CodeName(auth.error_code()));
    return new FinishedWriter<weightgate::v1::WatchEvent>(auth);
  }
  return NotYet<weightgate::v1::WatchEvent>(options_.metrics, "WatchModel");
}

}  // namespace weightgate::service
