// Executor runs blocking work (disk writes, parsing, hashing, tensor checks)
// off gRPC's callback threads, which must never block.
//
// This class is thread-safe.
#ifndef WEIGHTGATE_SERVER_SERVICE_EXECUTOR_H_
#define WEIGHTGATE_SERVER_SERVICE_EXECUTOR_H_

#include <condition_variable>
#include <deque>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace weightgate::service {

class Executor final {
 public:
  // Starts `threads` workers (at least 1).
  explicit Executor(int threads);
  // Runs every task already scheduled, then joins.
  ~Executor();
  Executor(const Executor&) = delete;
  Executor& operator=(const Executor&) = delete;

  void Schedule(std::function<void()> task);

 private:
  void Loop();

  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::function<void()>> tasks_;  // guarded by mu_
  bool stopping_ = false;                    // guarded by mu_
  std::vector<std::thread> workers_;
};

}  // namespace weightgate::service

#endif  // WEIGHTGATE_SERVER_SERVICE_EXECUTOR_H_
