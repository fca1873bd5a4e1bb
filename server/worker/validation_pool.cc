#include "server/worker/validation_pool.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <iostream>
#include <string>
#include <string_view>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "server/worker/frame.h"
#include "server/worker/worker_main.h"

extern char** environ;

namespace weightgate::worker {
namespace {

// The worker's end of the socketpair, as the worker sees it.
constexpr int kWorkerFd = 3;
// How often a waiting request looks at its deadline and cancellation.
constexpr absl::Duration kPollInterval = absl::Milliseconds(20);
// After a request's child is killed, the worker must report it within this.
constexpr absl::Duration kDrainTimeout = absl::Seconds(5);
// A stuck write to a worker counts as a dead worker after this.
constexpr int kSendTimeoutSeconds = 30;

std::string Describe(int status) {
  if (WIFSIGNALED(status)) {
    int sig = WTERMSIG(status);
    return absl::StrCat("killed by signal ", sig, " (", strsignal(sig), ")");
  }
  if (WIFEXITED(status)) return absl::StrCat("exited with status ", WEXITSTATUS(status));
  return absl::StrCat("ended with wait status ", status);
}

}  // namespace

absl::StatusOr<std::unique_ptr<ValidationPool>> ValidationPool::Create(const Options& options) {
  if (options.argv.empty()) return absl::InvalidArgumentError("validation worker argv is empty");
  if (options.workers < 1) {
    return absl::InvalidArgumentError("the validation pool needs at least one worker");
  }
  if (options.timeout <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError("--validation_timeout must be positive");
  }
  std::unique_ptr<ValidationPool> pool(new ValidationPool(options));
  {
    absl::MutexLock lock(&pool->mu_);
    pool->slots_.resize(static_cast<size_t>(options.workers));
  }
  if (options.prestart) {
    for (size_t i = 0; i < static_cast<size_t>(options.workers); ++i) {
      if (absl::Status s = pool->Spawn(i); !s.ok()) return s;
    }
  }
  return pool;
}

ValidationPool::~ValidationPool() {
  absl::MutexLock lock(&mu_);
  for (Slot& slot : slots_) {
    if (slot.fd >= 0) ::close(slot.fd);
    if (slot.pid > 0) {
      ::kill(slot.pid, SIGKILL);
      int status = 0;
      while (::waitpid(slot.pid, &status, 0) < 0 && errno == EINTR) {
      }
    }
  }
}

std::vector<pid_t> ValidationPool::WorkerPids() const {
  absl::MutexLock lock(&mu_);
  std::vector<pid_t> pids;
  for (const Slot& slot : slots_) {
    if (slot.pid > 0) pids.push_back(slot.pid);
  }
  return pids;
}

int64_t ValidationPool::spawned() const {
  absl::MutexLock lock(&mu_);
  return spawned_;
}

ValidationPool::Slot ValidationPool::Snapshot(size_t index) const {
  absl::MutexLock lock(&mu_);
  return slots_[index];
}

absl::Status ValidationPool::Spawn(size_t index) {
  if (options_.argv[0] == "/proc/self/exe" && !ThisBinaryHasWorkerMode()) {
    return absl::FailedPreconditionError(
        "this program has no validation worker mode: set the worker command line "
        "(validation_worker_argv) to weightgate-server");
  }
  int sv[2];
  if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) {
    return absl::InternalError(absl::StrCat("socketpair: ", std::strerror(errno)));
  }
  if (sv[1] == kWorkerFd) {  // dup2 onto itself would keep FD_CLOEXEC
    int moved = ::fcntl(sv[1], F_DUPFD_CLOEXEC, kWorkerFd + 1);
    ::close(sv[1]);
    sv[1] = moved;
    if (moved < 0) {
      ::close(sv[0]);
      return absl::InternalError(absl::StrCat("fcntl: ", std::strerror(errno)));
    }
  }
  timeval send_timeout{kSendTimeoutSeconds, 0};
  ::setsockopt(sv[0], SOL_SOCKET, SO_SNDTIMEO, &send_timeout, sizeof(send_timeout));

  std::vector<std::string> args = options_.argv;
  args.push_back(absl::StrCat("--memory_bytes=", options_.memory_bytes));
  args.push_back(
      absl::StrCat("--cpu_seconds=", std::max<int64_t>(1, absl::ToInt64Seconds(CpuTime()))));
  args.push_back(absl::StrCat("--fd=", kWorkerFd));
  // The worker dies with us; it checks it still has the parent it was
  // started by (in a container the server may be pid 1).
  args.push_back(absl::StrCat("--parent_pid=", ::getpid()));
  const std::string path = args[0];
  if (args[0] == "/proc/self/exe") {  // show the real binary in ps
    char exe[4096];
    ssize_t n = ::readlink("/proc/self/exe", exe, sizeof(exe) - 1);
    if (n > 0) args[0].assign(exe, static_cast<size_t>(n));
  }
  std::vector<char*> argv;
  for (std::string& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);

  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_adddup2(&actions, sv[1], kWorkerFd);
  posix_spawn_file_actions_addclosefrom_np(&actions, kWorkerFd + 1);
  posix_spawnattr_t attr;
  posix_spawnattr_init(&attr);
  // The server blocks SIGTERM/SIGINT in every thread to sigwait on them; a
  // worker starts with no signal blocked.
  sigset_t none;
  sigemptyset(&none);
  posix_spawnattr_setsigmask(&attr, &none);
  posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK);
  pid_t pid = 0;
  std::vector<std::string> env_strings;
  for (char** e = environ; *e != nullptr; ++e) {
    if (options_.scratch_dir.empty() || std::string_view(*e).rfind("TMPDIR=", 0) != 0) {
      env_strings.emplace_back(*e);
    }
  }
  if (!options_.scratch_dir.empty()) env_strings.push_back("TMPDIR=" + options_.scratch_dir);
  std::vector<char*> env;
  for (std::string& e : env_strings) env.push_back(e.data());
  env.push_back(nullptr);
  int err = ::posix_spawn(&pid, path.c_str(), &actions, &attr, argv.data(), env.data());
  posix_spawn_file_actions_destroy(&actions);
  posix_spawnattr_destroy(&attr);
  ::close(sv[1]);
  if (err != 0) {
    ::close(sv[0]);
    return absl::InternalError(
        absl::StrCat("cannot start validation worker ", path, ": ", std::strerror(err)));
  }
  absl::MutexLock lock(&mu_);
  Slot& slot = slots_[index];
  slot.pid = pid;
  slot.fd = sv[0];
  slot.ready = false;
  ++spawned_;
  return absl::OkStatus();
}

int ValidationPool::Reap(size_t index, bool kill) {
  pid_t pid;
  int fd;
  {
    absl::MutexLock lock(&mu_);
    pid = slots_[index].pid;
    fd = slots_[index].fd;
  }
  int status = 0;
  if (pid > 0) {
    if (!kill) {
      // It closed its socket: it is exiting. Give it a moment, then make sure.
      for (int i = 0; i < 100; ++i) {
        pid_t r = ::waitpid(pid, &status, WNOHANG);
        if (r == pid) {
          pid = 0;
          break;
        }
        ::usleep(10000);
      }
    }
    if (pid > 0) {
      ::kill(pid, SIGKILL);
      while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
      }
    }
  }
  if (fd >= 0) ::close(fd);
  absl::MutexLock lock(&mu_);
  slots_[index] = Slot{.busy = true};
  return status;
}

absl::Status ValidationPool::Died(int status) const {
  if (WIFEXITED(status) && WEXITSTATUS(status) == kExitOutOfMemory) {
    return absl::ResourceExhaustedError(absl::StrCat("validation exceeded its memory limit of ",
                                                     options_.memory_bytes,
                                                     " bytes (--validation_memory_bytes)"));
  }
  if (WIFSIGNALED(status) && WTERMSIG(status) == SIGXCPU) {
    return absl::ResourceExhaustedError(absl::StrCat("validation exceeded its CPU time limit of ",
                                                     absl::FormatDuration(CpuTime()),
                                                     " (--validation_timeout)"));
  }
  return absl::InternalError(absl::StrCat("validation worker crashed (", Describe(status), ")"));
}

absl::StatusOr<size_t> ValidationPool::Acquire(const CallControl& control) {
  absl::MutexLock lock(&mu_);
  for (;;) {
    for (size_t i = 0; i < slots_.size(); ++i) {
      if (!slots_[i].busy) {
        slots_[i].busy = true;
        return i;
      }
    }
    if (control.cancelled && control.cancelled()) {
      return absl::CancelledError("request cancelled while waiting for a validation worker");
    }
    if (absl::Now() >= control.deadline) {
      return absl::DeadlineExceededError("deadline passed while waiting for a validation worker");
    }
    auto idle = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
      return std::any_of(slots_.begin(), slots_.end(), [](const Slot& s) { return !s.busy; });
    };
    mu_.AwaitWithTimeout(absl::Condition(&idle), kPollInterval);
  }
}

void ValidationPool::Release(size_t index) {
  absl::MutexLock lock(&mu_);
  slots_[index].busy = false;
}

absl::StatusOr<WorkResponse> ValidationPool::Await(size_t index, absl::Time limit,
                                                   absl::Status on_limit,
                                                   const CallControl& control) {
  Slot slot = Snapshot(index);
  FrameReader reader;
  pid_t child = 0;         // the worker's child running this request
  absl::Status stopped;    // why the request is being stopped, once it is
  absl::Time drain_until;  // how long the worker may take to report it
  for (;;) {
    absl::Time now = absl::Now();
    if (stopped.ok()) {
      absl::Status why;
      if (now >= limit) {
        why = on_limit;
      } else if (control.cancelled && control.cancelled()) {
        why = absl::CancelledError("request cancelled; its validation was stopped");
      } else if (now >= control.deadline) {
        why = absl::DeadlineExceededError("deadline passed; its validation was stopped");
      }
      if (!why.ok()) {
        if (child <= 0) {  // not started in a child: stop the worker itself
          Reap(index, /*kill=*/true);
          return why;
        }
        // Kill the child; the worker reports its death and stays.
        ::kill(child, SIGKILL);
        stopped = why;
        drain_until = now + kDrainTimeout;
      }
    } else if (now >= drain_until) {
      Reap(index, /*kill=*/true);
      return stopped;
    }
    absl::Time until = stopped.ok() ? std::min(limit, control.deadline) : drain_until;
    pollfd p{slot.fd, POLLIN, 0};
    int wait_ms = static_cast<int>(absl::ToInt64Milliseconds(std::min(kPollInterval, until - now)));
    int r = ::poll(&p, 1, std::max(1, wait_ms));
    if (r < 0 && errno != EINTR) {
      Reap(index, /*kill=*/true);
      return absl::InternalError(absl::StrCat("poll: ", std::strerror(errno)));
    }
    if (r <= 0) continue;
    absl::Status fed = reader.Feed(slot.fd);
    if (absl::IsUnavailable(fed)) {
      int status = Reap(index, /*kill=*/false);
      return stopped.ok() ? Died(status) : stopped;
    }
    if (!fed.ok()) {
      Reap(index, /*kill=*/true);
      return absl::InternalError(absl::StrCat("validation worker: ", fed.message()));
    }
    if (!reader.Done()) continue;
    WorkResponse response;
    if (absl::Status s = reader.Parse(&response); !s.ok()) {
      Reap(index, /*kill=*/true);
      return absl::InternalError(absl::StrCat("validation worker: ", s.message()));
    }
    reader = FrameReader();
    if (response.started_pid() > 0) {
      child = response.started_pid();
      continue;
    }
    if (!stopped.ok()) return stopped;  // the stopped child's report: in sync again
    if (response.child_died()) return Died(response.child_status());
    return response;
  }
}

absl::Status ValidationPool::AwaitReady(size_t index) {
  absl::StatusOr<WorkResponse> hello =
      Await(index, absl::Now() + options_.startup_timeout,
            absl::InternalError(absl::StrCat("validation worker did not start within ",
                                             absl::FormatDuration(options_.startup_timeout))),
            CallControl{});
  if (!hello.ok()) {
    if (absl::IsInternal(hello.status()) || absl::IsResourceExhausted(hello.status())) {
      return absl::InternalError(
          absl::StrCat("validation worker failed to start: ", hello.status().message()));
    }
    return hello.status();
  }
  if (!hello->ready()) {
    Reap(index, /*kill=*/true);
    return absl::InternalError("validation worker sent no ready frame");
  }
  absl::MutexLock lock(&mu_);
  slots_[index].ready = true;
  return absl::OkStatus();
}

absl::StatusOr<WorkResponse> ValidationPool::Run(const WorkRequest& request,
                                                 const CallControl& control) {
  absl::StatusOr<size_t> acquired = Acquire(control);
  if (!acquired.ok()) return acquired.status();
  size_t index = *acquired;
  absl::StatusOr<WorkResponse> result = [&]() -> absl::StatusOr<WorkResponse> {
    if (Snapshot(index).pid == 0) {
      if (absl::Status s = Spawn(index); !s.ok()) return s;
    }
    if (!Snapshot(index).ready) {
      // A starting worker is not killed for a cancelled request: the next
      // request needs it.
      if (absl::Status s = AwaitReady(index); !s.ok()) return s;
    }
    // Stopped before it started: the worker stays.
    if (control.cancelled && control.cancelled()) {
      return absl::CancelledError("request cancelled before validation started");
    }
    if (absl::Now() >= control.deadline) {
      return absl::DeadlineExceededError("deadline passed before validation started");
    }
    if (absl::Status s = WriteFrame(Snapshot(index).fd, request); !s.ok()) {
      return Died(Reap(index, /*kill=*/true));
    }
    return Await(index, absl::Now() + options_.timeout,
                 absl::ResourceExhaustedError(absl::StrCat("validation exceeded its time limit of ",
                                                           absl::FormatDuration(options_.timeout),
                                                           " (--validation_timeout)")),
                 control);
  }();
  if (!result.ok() && Snapshot(index).pid == 0) {
    std::cerr << "weightgate-server: validation worker stopped: " << result.status().message()
              << "; starting another\n";
    // A fresh worker warms up (loads libtorch) while no request waits on it.
    if (absl::Status s = Spawn(index); !s.ok()) {
      std::cerr << "weightgate-server: " << s.message() << "\n";
    }
  }
  Release(index);
  return result;
}

}  // namespace weightgate::worker
