// The worker side of the ValidationPool: `weightgate-server
// --validation_worker --memory_bytes=N --cpu_seconds=S --fd=3 --parent_pid=P`
// reads WorkRequest frames from the socket on fd 3 and answers each with a
// WorkResponse, one at a time, until the socket closes.
//
// A worker loads libtorch, limits itself (no core files, dies with its
// parent, no_new_privs) and sends a `ready` frame. It stays single-threaded
// and never reads a checkpoint itself: each request runs in a forked child
// that sets RLIMIT_DATA to its baseline plus N bytes (operator new failing
// exits with kExitOutOfMemory) and RLIMIT_CPU to S seconds, then works and
// hands its WorkResponse back through a pipe. The worker sends a frame with
// the child's pid first (so the server can kill just the child), then the
// child's result, or `child_died` with its wait status.
//
// Test hooks (environment, inherited from the server; for tests only):
//   WEIGHTGATE_TEST_WORKER_DELAY_MS=N       sleep N ms before each request;
//   WEIGHTGATE_TEST_WORKER_SPIN_MS=N        burn N ms of CPU before each request;
//   WEIGHTGATE_TEST_CRASH_IN_TORCHSCRIPT=1  crash (SIGSEGV) where a
//       TorchScript archive would be loaded with torch::jit::load.
#ifndef WEIGHTGATE_SERVER_WORKER_WORKER_MAIN_H_
#define WEIGHTGATE_SERVER_WORKER_WORKER_MAIN_H_

namespace weightgate::worker {

// True when argv asks for worker mode (argv[1] == "--validation_worker").
// main() of a binary that runs its own workers calls it first thing.
bool IsValidationWorker(int argc, char** argv);

// Whether this process's main() called IsValidationWorker, i.e. whether
// /proc/self/exe may be exec'd as a worker (a test binary may not).
bool ThisBinaryHasWorkerMode();

// Runs the worker loop; returns the process exit code.
int ValidationWorkerMain(int argc, char** argv);

}  // namespace weightgate::worker

#endif  // WEIGHTGATE_SERVER_WORKER_WORKER_MAIN_H_
