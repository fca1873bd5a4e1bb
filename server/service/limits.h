// Limits is the service edge's admission control and watchdog. It counts
// concurrent upload streams (RegisterModel, UploadCheckpoint,
// ValidateCheckpoint) and read streams (FetchWeights, WatchModel) against
// their caps, reserves staged bytes against a total and a free-disk reserve
// before a chunk is written, and cancels calls that stop making progress:
// uploads whose next message does not arrive in time, and fetches whose
// client does not take the chunk in flight in time.
//
// This class is thread-safe.
#ifndef WEIGHTGATE_SERVER_SERVICE_LIMITS_H_
#define WEIGHTGATE_SERVER_SERVICE_LIMITS_H_

#include <chrono>
#include <cstdint>
#include <map>
#include <string>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "grpcpp/server_context.h"
#include "grpcpp/support/status.h"

namespace weightgate::service {

class Limits final {
 public:
  struct Options {
    // Concurrent upload streams (register, upload, validate). Default 32.
    int max_uploads = 32;
    // Concurrent FetchWeights + WatchModel streams. Default 1024.
    int max_streams = 1024;
    // Bytes staged by all uploads in flight. Default 64 GiB.
    uint64_t max_staged_bytes = uint64_t{64} << 30;
    // Free bytes the store's filesystem keeps after every staged chunk, so
    // that metadata writes never fail for lack of space. Default 1 GiB.
    uint64_t min_free_bytes = uint64_t{1} << 30;
    // Directory whose filesystem is checked (the store root).
    std::string store_root;
    // An upload whose next message takes longer is cancelled. Default 60 s.
    std::chrono::milliseconds idle_upload_timeout{60000};
    // A fetch whose client leaves a chunk unread longer is cancelled. Default 60 s.
    std::chrono::milliseconds stalled_reader_timeout{60000};
    // How often the watchdog looks (tests shorten it). Default 250 ms.
    std::chrono::milliseconds watchdog_period{250};
  };

  explicit Limits(const Options& options);
  ~Limits();

  const Options& options() const { return options_; }

  // RESOURCE_EXHAUSTED (with a retry hint in the message and in the
  // "retry-after-ms" trailer of `context`) when the cap is reached.
  grpc::Status AcquireUpload(grpc::CallbackServerContext* context) ABSL_LOCKS_EXCLUDED(mu_);
  void ReleaseUpload() ABSL_LOCKS_EXCLUDED(mu_);
  grpc::Status AcquireStream(grpc::CallbackServerContext* context) ABSL_LOCKS_EXCLUDED(mu_);
  void ReleaseStream() ABSL_LOCKS_EXCLUDED(mu_);

  // Reserves `bytes` of staging; RESOURCE_EXHAUSTED when the total or the
  // free-disk reserve would be exceeded.
  grpc::Status ReserveStaged(grpc::CallbackServerContext* context, uint64_t bytes)
      ABSL_LOCKS_EXCLUDED(mu_);
  void ReleaseStaged(uint64_t bytes) ABSL_LOCKS_EXCLUDED(mu_);
  uint64_t staged_bytes() const ABSL_LOCKS_EXCLUDED(mu_);

  // Watchdog. Watch() registers a call; Arm() starts (or restarts) its
  // timeout, Disarm() stops it; a call whose timeout passes is cancelled
  // (TryCancel) and TimedOut() turns true. Unwatch() before the call's
  // context goes away (in OnDone).
  uint64_t Watch(grpc::CallbackServerContext* context, std::chrono::milliseconds timeout)
      ABSL_LOCKS_EXCLUDED(mu_);
  void Arm(uint64_t id) ABSL_LOCKS_EXCLUDED(mu_);
  void Disarm(uint64_t id) ABSL_LOCKS_EXCLUDED(mu_);
  bool TimedOut(uint64_t id) const ABSL_LOCKS_EXCLUDED(mu_);
  void Unwatch(uint64_t id) ABSL_LOCKS_EXCLUDED(mu_);

  // Calls cancelled by the watchdog so far.
  uint64_t timeouts() const ABSL_LOCKS_EXCLUDED(mu_);

 private:
  using Clock = std::chrono::steady_clock;
  struct Watched {
    grpc::CallbackServerContext* context;
    std::chrono::milliseconds timeout;
    Clock::time_point deadline = Clock::time_point::max();
    bool timed_out = false;
  };
  grpc::Status Busy(grpc::CallbackServerContext* context, const std::string& what) const;
  void Loop() ABSL_LOCKS_EXCLUDED(mu_);

  const Options options_;
  mutable absl::Mutex mu_;
  int uploads_ ABSL_GUARDED_BY(mu_) = 0;
  int streams_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t staged_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t next_id_ ABSL_GUARDED_BY(mu_) = 1;
  std::map<uint64_t, Watched> watched_ ABSL_GUARDED_BY(mu_);
  uint64_t timeouts_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t cancelling_ ABSL_GUARDED_BY(mu_) = 0;  // id being cancelled, 0 = none
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::thread watchdog_;
};

}  // namespace weightgate::service

#endif  // WEIGHTGATE_SERVER_SERVICE_LIMITS_H_
