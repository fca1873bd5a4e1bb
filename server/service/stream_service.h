// StreamService is the gRPC edge of weightgate.v1.WeightStream (readers).
//
// This class is thread-safe.
#ifndef WEIGHTGATE_SERVER_SERVICE_STREAM_SERVICE_H_
#define WEIGHTGATE_SERVER_SERVICE_STREAM_SERVICE_H_

#include "server/service/auth.h"
#include "server/service/executor.h"
#include "server/service/metrics.h"
#include "server/store/store.h"
#include "weightgate/v1/stream.grpc.pb.h"

namespace weightgate::service {

class StreamService final : public weightgate::v1::WeightStream::CallbackService {
 public:
  struct Options {
    // None owned; all must outlive the service.
    store::Store* store = nullptr;
    Metrics* metrics = nullptr;
    const Authorizer* auth = nullptr;
    Executor* executor = nullptr;
  };
  explicit StreamService(const Options& options) : options_(options) {}

  grpc::ServerWriteReactor<weightgate::v1::FetchResponse>* FetchWeights(
      grpc::CallbackServerContext* context, const weightgate::v1::FetchRequest* request) override;
  grpc::ServerWriteReactor<weightgate::v1::WatchEvent>* WatchModel(
      grpc::CallbackServerContext* context, const weightgate::v1::WatchRequest* request) override;

 private:
  Options options_;
};

}  // namespace weightgate::service

#endif  // WEIGHTGATE_SERVER_SERVICE_STREAM_SERVICE_H_
