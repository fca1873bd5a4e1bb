// StreamService is the gRPC edge of weightgate.v1.WeightStream (readers):
// FetchWeights streams a stored blob (or a byte range of it) from the
// BlobCache with one write in flight per stream; WatchModel tells workers when
// an alias moves. A move made through this replica wakes the watchers at once
// (ModelChanged, wired to the store's write hook); the store is still polled
// because replicas share it, so a move made through another one is seen too.
//
// This class is thread-safe.
#ifndef WEIGHTGATE_SERVER_SERVICE_STREAM_SERVICE_H_
#define WEIGHTGATE_SERVER_SERVICE_STREAM_SERVICE_H_

#include <atomic>
#include <chrono>
#include <memory>
#include <set>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "server/service/auth.h"
#include "server/service/chunk_crcs.h"
#include "server/service/executor.h"
#include "server/service/limits.h"
#include "server/service/metrics.h"
#include "server/store/blob_cache.h"
#include "server/store/store.h"
#include "weightgate/v1/stream.grpc.pb.h"

namespace weightgate::service {

class WatchReactor;

// FetchWeights is a raw method (grpc::ByteBuffer in and out) so chunk
// payloads are slices of the blob's mapping rather than copies.
class StreamService final : public weightgate::v1::WeightStream::WithCallbackMethod_WatchModel<
                                weightgate::v1::WeightStream::WithRawCallbackMethod_FetchWeights<
                                    weightgate::v1::WeightStream::Service>> {
 public:
  struct Options {
    // None owned; all must outlive the service.
    store::Store* store = nullptr;
    store::BlobCache* cache = nullptr;
    Metrics* metrics = nullptr;
    const Authorizer* auth = nullptr;
    Executor* executor = nullptr;
    // How often watched aliases are re-read from the store.
    std::chrono::milliseconds watch_poll{250};
    // Edge limits and watchdog; not owned.
    Limits* limits = nullptr;
    // Largest chunk a fetch stream sends (requests are clamped to it).
    uint32_t max_chunk_bytes = 1 << 20;
  };
  explicit StreamService(const Options& options);
  // Ends every watch stream (they finish OK) and stops the poller.
  ~StreamService() override;

  grpc::ServerWriteReactor<grpc::ByteBuffer>* FetchWeights(
      grpc::CallbackServerContext* context, const grpc::ByteBuffer* request) override;
  grpc::ServerWriteReactor<weightgate::v1::WatchEvent>* WatchModel(
      grpc::CallbackServerContext* context, const weightgate::v1::WatchRequest* request) override;

  // Finishes every open watch stream so a draining server can stop.
  void StopWatches() ABSL_LOCKS_EXCLUDED(mu_);

  // Re-reads the watched models now instead of at the next poll: called
  // after this process wrote `model_id`'s metadata. Never blocks on disk.
  void ModelChanged(const std::string& model_id) ABSL_LOCKS_EXCLUDED(mu_);

 private:
  friend class WatchReactor;
  void PollLoop() ABSL_LOCKS_EXCLUDED(mu_);
  bool StoppingOrChanged() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return stopping_ || changed_;
  }

  Options options_;
  ChunkCrcCache crc_cache_;
  absl::Mutex mu_;
  std::set<WatchReactor*> watches_ ABSL_GUARDED_BY(mu_);  // owned
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  bool changed_ ABSL_GUARDED_BY(mu_) = false;  // a write awaits a poll round
  std::thread poller_;
};

}  // namespace weightgate::service

#endif  // WEIGHTGATE_SERVER_SERVICE_STREAM_SERVICE_H_
