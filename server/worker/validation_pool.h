// ValidationPool runs the work on untrusted uploaded bytes — parsing,
// matching, numeric checks, TorchScript loading, the smoke forward pass and
// normalisation — in worker processes separate from the gRPC server.
//
// Each worker is an exec of a worker binary (by default this one, as
// `weightgate-server --validation_worker`, see worker_main.h) talking over a
// socketpair with length-prefixed WorkRequest/WorkResponse frames (frame.h).
// A worker loads libtorch once, then forks a fresh child for every request;
// the child works under
//   - a memory limit: RLIMIT_DATA (anonymous memory; the checkpoint's file
//     mmap is not counted) of its baseline plus Options::memory_bytes;
//   - a time limit: RLIMIT_CPU plus a wall-clock watchdog here that SIGKILLs
//     a child running past Options::timeout.
// A child that crashes, is killed or exceeds a limit fails only its request;
// the worker reports how it died and serves the next request at once. A
// cancelled request or one past its deadline has its child killed, so its
// work stops at once. A worker that dies itself is respawned.
//
// Run() outcomes:
//   OK                  the worker's WorkResponse (whose own code may be an
//                       error of the work, e.g. a bad policy);
//   RESOURCE_EXHAUSTED  the request exceeded the memory or time limit
//                       (message names the limit);
//   INTERNAL            "validation worker crashed ..." (signal or exit code);
//   CANCELLED / DEADLINE_EXCEEDED  per CallControl.
//
// This class is thread-safe.
#ifndef WEIGHTGATE_SERVER_WORKER_VALIDATION_POOL_H_
#define WEIGHTGATE_SERVER_WORKER_VALIDATION_POOL_H_

#include <sys/types.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "server/worker/worker.pb.h"

namespace weightgate::worker {

// How a caller stops a request early.
struct CallControl {
  // Past this the work is abandoned (DEADLINE_EXCEEDED). Default: none.
  absl::Time deadline = absl::InfiniteFuture();
  // Polled while the request waits or runs; true abandons it (CANCELLED).
  // Default: never.
  std::function<bool()> cancelled;
};

// Exit code of a worker whose allocation failed (operator new under the
// RLIMIT_DATA limit); the pool reports it as the memory limit.
inline constexpr int kExitOutOfMemory = 86;

class ValidationPool final {
 public:
  struct Options {
    // Worker command line; argv[0] is executed. The pool appends
    // --memory_bytes=, --cpu_seconds=, --fd= and --parent_pid=. Default:
    // this executable in worker mode.
    std::vector<std::string> argv = {"/proc/self/exe", "--validation_worker"};
    // Worker processes, i.e. validations running at once. Default 1.
    int workers = 1;
    // Anonymous memory one validation may add to a worker's baseline
    // (RLIMIT_DATA); 0 = unlimited. Default 4 GiB.
    uint64_t memory_bytes = uint64_t{4} << 30;
    // Wall-clock time of one request. Default 10 minutes.
    absl::Duration timeout = absl::Minutes(10);
    // CPU time of one request, summed over the worker's threads (RLIMIT_CPU,
    // whole seconds); zero (default) = the same as `timeout`.
    absl::Duration cpu_time = absl::ZeroDuration();
    // How long a new worker may take to become ready (it loads libtorch).
    // Default 60 s.
    absl::Duration startup_timeout = absl::Seconds(60);
    // Start every worker in Create() rather than on first use. Default true.
    bool prestart = true;
    // TMPDIR of the workers: where the set readers' scratch files (tensors
    // assembled from DCP chunks, ZeRO partitions, Megatron ranks) go. The
    // server passes its staging directory, so they use the store's volume
    // and its free-disk reserve. Empty (default): the server's own TMPDIR.
    std::string scratch_dir;
  };

  // Checks options and (with prestart) spawns the workers; does not wait
  // for them to be ready.
  static absl::StatusOr<std::unique_ptr<ValidationPool>> Create(const Options& options);
  // Stops every worker. REQUIRES: no Run() in progress.
  ~ValidationPool();
  ValidationPool(const ValidationPool&) = delete;
  ValidationPool& operator=(const ValidationPool&) = delete;

  // Runs `request` in an idle worker, waiting for one if all are busy.
  absl::StatusOr<WorkResponse> Run(const WorkRequest& request, const CallControl& control)
      ABSL_LOCKS_EXCLUDED(mu_);

  // Pids of the live workers (for tests and logs).
  std::vector<pid_t> WorkerPids() const ABSL_LOCKS_EXCLUDED(mu_);
  // Workers started so far, the initial ones included.
  int64_t spawned() const ABSL_LOCKS_EXCLUDED(mu_);
  const Options& options() const { return options_; }

 private:
  struct Slot {
    pid_t pid = 0;  // 0: no process
    int fd = -1;    // our end of the socketpair
    bool ready = false;
    bool busy = false;
  };

  explicit ValidationPool(const Options& options) : options_(options) {}

  absl::StatusOr<size_t> Acquire(const CallControl& control) ABSL_LOCKS_EXCLUDED(mu_);
  void Release(size_t index) ABSL_LOCKS_EXCLUDED(mu_);
  // The busy holder of slot `index` calls these.
  absl::Status Spawn(size_t index) ABSL_LOCKS_EXCLUDED(mu_);
  // Waits for the worker's first frame. Kills it on failure.
  absl::Status AwaitReady(size_t index) ABSL_LOCKS_EXCLUDED(mu_);
  // Reads one frame, enforcing the timeout, deadline and cancellation.
  absl::StatusOr<WorkResponse> Await(size_t index, absl::Time limit, absl::Status on_limit,
                                     const CallControl& control) ABSL_LOCKS_EXCLUDED(mu_);
  // SIGKILLs (when `kill`) and reaps the worker; returns its wait status.
  int Reap(size_t index, bool kill) ABSL_LOCKS_EXCLUDED(mu_);
  // The error for a worker that ended by itself with wait status `status`.
  absl::Status Died(int status) const;
  Slot Snapshot(size_t index) const ABSL_LOCKS_EXCLUDED(mu_);
  absl::Duration CpuTime() const {
    return options_.cpu_time > absl::ZeroDuration() ? options_.cpu_time : options_.timeout;
  }

  const Options options_;
  mutable absl::Mutex mu_;
  std::vector<Slot> slots_ ABSL_GUARDED_BY(mu_);
  int64_t spawned_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace weightgate::worker

#endif  // WEIGHTGATE_SERVER_WORKER_VALIDATION_POOL_H_
