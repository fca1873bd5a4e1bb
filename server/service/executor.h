// Executor runs blocking work (disk writes, parsing, hashing, tensor checks)
// off gRPC's callback threads, which must never block. Its queue may be
// bounded, so a burst of work is refused rather than queued without limit.
//
// This class is thread-safe.
#ifndef WEIGHTGATE_SERVER_SERVICE_EXECUTOR_H_
#define WEIGHTGATE_SERVER_SERVICE_EXECUTOR_H_

#include <cstddef>
#include <deque>
#include <functional>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"

namespace weightgate::service {

class Executor final {
 public:
  // Starts `threads` workers (at least 1). TrySchedule refuses a task while
  // `max_queued` tasks wait for a thread; 0 (default) = unbounded.
  explicit Executor(int threads, size_t max_queued = 0);
  // Runs every task already scheduled, then joins.
  ~Executor();
  Executor(const Executor&) = delete;
  Executor& operator=(const Executor&) = delete;

  // Always queues the task.
  void Schedule(std::function<void()> task) ABSL_LOCKS_EXCLUDED(mu_);
  // Queues the task unless the queue is full; false = not queued.
  bool TrySchedule(std::function<void()> task) ABSL_LOCKS_EXCLUDED(mu_);

  int threads() const { return static_cast<int>(workers_.size()); }
  size_t max_queued() const { return max_queued_; }

 private:
  void Loop() ABSL_LOCKS_EXCLUDED(mu_);

  const size_t max_queued_;
  absl::Mutex mu_;
  std::deque<std::function<void()>> tasks_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<std::thread> workers_;
};

}  // namespace weightgate::service

#endif  // WEIGHTGATE_SERVER_SERVICE_EXECUTOR_H_
