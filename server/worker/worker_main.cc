#include "server/worker/worker_main.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <new>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "absl/strings/strip.h"
#include "server/checkpoint/checkpoint.h"
#include "server/statedict/normalizer.h"
#include "server/statedict/spec.h"
#include "server/worker/frame.h"
#include "server/worker/validation_pool.h"
#include "server/worker/worker.pb.h"

namespace weightgate::worker {
namespace {

namespace v1 = weightgate::v1;

[[noreturn]] void OutOfMemory() { ::_exit(kExitOutOfMemory); }

// VmData of this process in bytes (private writable memory: what
// RLIMIT_DATA counts), or 0 when /proc is unreadable.
uint64_t DataBytes() {
  std::ifstream status("/proc/self/status");
  std::string line;
  while (std::getline(status, line)) {
    if (!absl::StartsWith(line, "VmData:")) continue;
    absl::string_view rest = absl::string_view(line).substr(7);
    while (!rest.empty() && (rest.front() == ' ' || rest.front() == '\t')) rest.remove_prefix(1);
    uint64_t kib = 0;
    if (absl::SimpleAtoi(rest.substr(0, rest.find(' ')), &kib)) return kib << 10;
  }
  return 0;
}

int64_t MaxRssBytes() {
  rusage usage{};
  ::getrusage(RUSAGE_SELF, &usage);
  return static_cast<int64_t>(usage.ru_maxrss) * 1024;
}

// The test hook: crash where torch::jit::load would run for this request.
bool WouldLoadTorchScript(const WorkRequest& request) {
  if (request.has_normalize()) return !request.normalize().torchscript_path().empty();
  if (!request.has_spec()) return false;
  // SpecFromFile asks libtorch when the reader says TorchScript or fails.
  absl::StatusOr<checkpoint::Checkpoint> ckpt =
      checkpoint::ReadCheckpointFile(request.spec().reference_path());
  return !ckpt.ok() || ckpt->format == checkpoint::Format::kTorchScript;
}

void Spin(uint64_t ms) {
  auto until = std::chrono::steady_clock::now() + std::chrono::milliseconds(ms);
  volatile uint64_t sink = 0;
  while (std::chrono::steady_clock::now() < until) sink = sink + 1;
}

void SetStatus(const absl::Status& status, WorkResponse* response) {
  response->set_code(static_cast<int32_t>(status.code()));
  response->set_message(std::string(status.message()));
}

WorkResponse Handle(const WorkRequest& request) {
  WorkResponse response;
  if (request.has_normalize()) {
    const NormalizeWork& work = request.normalize();
    statedict::NormalizeOptions options;
    options.device = work.device().empty() ? "auto" : work.device();
    options.model_id = work.model_id();
    options.output_path = work.output_path();
    options.output_format = statedict::NormalizeOptions::OutputFormat::kStoredSafetensors;
    options.torchscript_path = work.torchscript_path();
    options.compute_input_sha256 = work.compute_input_sha256();
    options.output_sha256 = response.mutable_output_sha256();
    absl::StatusOr<v1::ValidationReport> report =
        statedict::Normalize(work.checkpoint_path(), work.spec(), work.policy(), options);
    if (report.ok()) {
      *response.mutable_report() = *std::move(report);
    } else {
      SetStatus(report.status(), &response);
    }
  } else if (request.has_spec()) {
    const SpecWork& work = request.spec();
    std::vector<v1::ExampleInput> examples(work.example_inputs().begin(),
                                           work.example_inputs().end());
    absl::StatusOr<v1::ModelSpec> spec = statedict::SpecFromFile(work.reference_path(), examples);
    if (spec.ok()) {
      *response.mutable_spec() = *std::move(spec);
    } else {
      SetStatus(spec.status(), &response);
    }
  } else if (!request.ping()) {
    SetStatus(absl::InvalidArgumentError("empty worker request"), &response);
  }
  return response;
}

}  // namespace

namespace {
std::atomic<bool> dispatches_worker_mode{false};
}  // namespace

bool IsValidationWorker(int argc, char** argv) {
  dispatches_worker_mode = true;
  return argc >= 2 && absl::string_view(argv[1]) == "--validation_worker";
}

bool ThisBinaryHasWorkerMode() { return dispatches_worker_mode; }

namespace {

struct Limits {
  uint64_t memory_bytes = 0;
  uint64_t cpu_seconds = 0;
  uint64_t delay_ms = 0;
  uint64_t spin_ms = 0;
  bool crash_in_torchscript = false;
};

// The child that does one request: waits for it on `channel`, limits
// itself, works, writes the response to `channel`, exits. Never returns.
[[noreturn]] void RunChild(const Limits& limits, pid_t worker, int channel) {
  ::prctl(PR_SET_PDEATHSIG, SIGKILL);
  if (::getppid() != worker) ::_exit(1);
  WorkRequest request;
  if (!ReadFrame(channel, &request).ok()) ::_exit(0);  // the worker is stopping
  if (limits.memory_bytes > 0) {
    uint64_t limit = DataBytes() + limits.memory_bytes;
    rlimit data{limit, limit};
    if (::setrlimit(RLIMIT_DATA, &data) != 0) ::_exit(1);
  }
  if (limits.cpu_seconds > 0) {
    rlimit cpu{limits.cpu_seconds, limits.cpu_seconds + 1};
    ::setrlimit(RLIMIT_CPU, &cpu);
  }
  std::set_new_handler(OutOfMemory);
  if (limits.delay_ms > 0) std::this_thread::sleep_for(std::chrono::milliseconds(limits.delay_ms));
  if (limits.spin_ms > 0) Spin(limits.spin_ms);
  if (limits.crash_in_torchscript && WouldLoadTorchScript(request)) ::raise(SIGSEGV);
  WorkResponse response = Handle(request);
  response.set_max_rss_bytes(MaxRssBytes());
  if (absl::Status s = WriteFrame(channel, response); !s.ok() && !absl::IsUnavailable(s)) {
    // An answer too large to send is the request's problem: say so briefly.
    WorkResponse small;
    SetStatus(
        absl::ResourceExhaustedError(absl::StrCat("validation result too large: ", s.message())),
        &small);
    (void)WriteFrame(channel, small);
  }
  ::_exit(0);
}

// A forked child waiting for its request. Forking a process that has
// libtorch mapped takes tens of milliseconds, so the next child is forked
// right after a request is answered, while the worker is idle.
struct Child {
  pid_t pid = -1;
  int fd = -1;  // the worker's end of the child's socketpair
};

Child Fork(int server_fd, const Limits& limits) {
  int fds[2];
  if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds) != 0) return {};
  pid_t worker = ::getpid();
  pid_t pid = ::fork();
  if (pid < 0) {
    ::close(fds[0]);
    ::close(fds[1]);
    return {};
  }
  if (pid == 0) {
    ::close(server_fd);
    ::close(fds[0]);
    RunChild(limits, worker, fds[1]);
  }
  ::close(fds[1]);
  return Child{pid, fds[0]};
}

// Runs one request in `child` and answers the server: a started frame with
// the child's pid, then the child's result or how it died. False when the
// server is gone.
bool Serve(int fd, const WorkRequest& request, Child child) {
  if (child.pid < 0) {
    WorkResponse failed;
    SetStatus(absl::InternalError("validation worker cannot fork"), &failed);
    return WriteFrame(fd, failed).ok();
  }
  WorkResponse started;
  started.set_started_pid(child.pid);
  bool server_alive = WriteFrame(fd, started).ok();
  WorkResponse result;
  absl::Status io = WriteFrame(child.fd, request);
  if (io.ok()) io = ReadFrame(child.fd, &result);
  ::close(child.fd);
  // A whole answer is final: send it before the child's exit is reaped
  // (tearing down its address space takes milliseconds).
  if (io.ok() && server_alive) server_alive = WriteFrame(fd, result).ok();
  if (!io.ok()) ::kill(child.pid, SIGKILL);  // e.g. it sent garbage
  int status = 0;
  while (::waitpid(child.pid, &status, 0) < 0 && errno == EINTR) {
  }
  if (io.ok() || !server_alive) return server_alive;
  WorkResponse died;
  died.set_child_died(true);
  died.set_child_status(status);
  return WriteFrame(fd, died).ok();
}

uint64_t EnvNumber(const char* name) {
  uint64_t v = 0;
  const char* text = std::getenv(name);
  if (text == nullptr || !absl::SimpleAtoi(text, &v)) return 0;
  return v;
}

}  // namespace

int ValidationWorkerMain(int argc, char** argv) {
  Limits limits;
  int fd = -1;
  pid_t parent = 0;
  for (int i = 2; i < argc; ++i) {
    absl::string_view arg = argv[i];
    bool ok = false;
    if (absl::ConsumePrefix(&arg, "--memory_bytes=")) {
      ok = absl::SimpleAtoi(arg, &limits.memory_bytes);
    } else if (absl::ConsumePrefix(&arg, "--cpu_seconds=")) {
      ok = absl::SimpleAtoi(arg, &limits.cpu_seconds);
    } else if (absl::ConsumePrefix(&arg, "--fd=")) {
      ok = absl::SimpleAtoi(arg, &fd);
    } else if (absl::ConsumePrefix(&arg, "--parent_pid=")) {
      ok = absl::SimpleAtoi(arg, &parent);
    }
    if (!ok) {
      std::cerr << "weightgate validation worker: bad argument '" << argv[i] << "'\n";
      return 2;
    }
  }
  if (fd < 0) {
    std::cerr << "weightgate validation worker: --fd is required\n";
    return 2;
  }
  // Die with the server; if it is already gone, do not start. No setuid
  // program it could run would gain privileges either.
  ::prctl(PR_SET_PDEATHSIG, SIGKILL);
  if (parent > 0 && ::getppid() != parent) return 0;
  ::prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
  ::signal(SIGPIPE, SIG_IGN);
  rlimit no_core{0, 0};
  ::setrlimit(RLIMIT_CORE, &no_core);
  limits.delay_ms = EnvNumber("WEIGHTGATE_TEST_WORKER_DELAY_MS");
  limits.spin_ms = EnvNumber("WEIGHTGATE_TEST_WORKER_SPIN_MS");
  limits.crash_in_torchscript = std::getenv("WEIGHTGATE_TEST_CRASH_IN_TORCHSCRIPT") != nullptr;

  WorkResponse hello;
  hello.set_ready(true);
  hello.set_max_rss_bytes(MaxRssBytes());
  if (!WriteFrame(fd, hello).ok()) return 0;
  // This process stays single-threaded and never touches a checkpoint, so
  // forking it is safe; each request gets a fresh child.
  Child next = Fork(fd, limits);
  for (;;) {
    WorkRequest request;
    absl::Status read = ReadFrame(fd, &request);
    if (absl::IsUnavailable(read)) return 0;  // the server closed the socket
    if (!read.ok()) {
      std::cerr << "weightgate validation worker: " << read.message() << "\n";
      return 2;
    }
    if (request.ping()) {
      WorkResponse pong;
      pong.set_max_rss_bytes(MaxRssBytes());
      if (!WriteFrame(fd, pong).ok()) return 0;
      continue;
    }
    if (next.pid < 0) next = Fork(fd, limits);
    bool server_alive = Serve(fd, request, next);
    next = server_alive ? Fork(fd, limits) : Child{};
    if (!server_alive) return 0;
  }
}

}  // namespace weightgate::worker
