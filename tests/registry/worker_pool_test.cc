// ValidationPool over real worker processes (build/bin/weightgate-server
// --validation_worker) and the Registry on top of it: a worker that is
// SIGKILLed, crashes inside TorchScript loading, runs out of memory or time,
// or is abandoned by a cancelled request fails that one request clearly; the
// next request succeeds on a fresh worker, and this process never dies.
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <fstream>
#include <future>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "gtest/gtest.h"
#include "server/registry/registry.h"
#include "server/store/store.h"
#include "server/worker/frame.h"
#include "server/worker/validation_pool.h"
#include "tests/statedict/statedict_fixtures.h"

namespace weightgate::worker {
namespace {

namespace v1 = weightgate::v1;
using weightgate::testing::BinaryDir;
using weightgate::testing::RunCommand;

// Sets an environment variable for one test; workers spawned meanwhile
// inherit it.
class ScopedEnv {
 public:
  ScopedEnv(const char* name, const char* value) : name_(name) { ::setenv(name, value, 1); }
  ~ScopedEnv() { ::unsetenv(name_); }

 private:
  const char* name_;
};

class WorkerPoolTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = weightgate::testing::StatedictFixtureDir();
    ASSERT_FALSE(dir_.empty());
    scratch_ = weightgate::testing::ScratchDir();
  }
  void TearDown() override {
    std::string ignored;
    if (!HasFailure()) RunCommand("rm -rf '" + scratch_ + "'", &ignored);
  }

  ValidationPool::Options PoolOptions() const {
    ValidationPool::Options o;
    o.argv = {BinaryDir() + "/bin/weightgate-server", "--validation_worker"};
    o.workers = 1;
    o.memory_bytes = uint64_t{1} << 30;
    o.timeout = absl::Seconds(60);
    return o;
  }
  std::unique_ptr<ValidationPool> NewPool(const ValidationPool::Options& o) {
    absl::StatusOr<std::unique_ptr<ValidationPool>> pool = ValidationPool::Create(o);
    EXPECT_TRUE(pool.ok()) << pool.status();
    return pool.ok() ? std::move(*pool) : nullptr;
  }
  WorkRequest Spec(const std::string& fixture) const {
    WorkRequest r;
    r.mutable_spec()->set_reference_path(dir_ + "/" + fixture);
    return r;
  }
  // A spec request that succeeds: the answer has the reference's 9 tensors.
  void ExpectSpecWorks(ValidationPool& pool) {
    absl::StatusOr<WorkResponse> r = pool.Run(Spec("reference.pt"), {});
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_EQ(r->code(), 0) << r->message();
    EXPECT_EQ(r->spec().tensors_size(), 9);
  }
  // The pid of the pool's only worker.
  // The child processes of `pid` (a worker's request children).
  static std::vector<pid_t> Children(pid_t pid) {
    std::istringstream in(weightgate::testing::ReadWholeFile(
        "/proc/" + std::to_string(pid) + "/task/" + std::to_string(pid) + "/children"));
    std::vector<pid_t> children;
    for (pid_t c; in >> c;) children.push_back(c);
    return children;
  }
  pid_t OnlyWorker(ValidationPool& pool) {
    std::vector<pid_t> pids = pool.WorkerPids();
    EXPECT_EQ(pids.size(), 1u);
    return pids.empty() ? 0 : pids[0];
  }

  std::string dir_;
  std::string scratch_;
};

TEST_F(WorkerPoolTest, PingAndSpecRoundTrip) {
  auto pool = NewPool(PoolOptions());
  ASSERT_NE(pool, nullptr);
  WorkRequest ping;
  ping.set_ping(true);
  absl::StatusOr<WorkResponse> r = pool->Run(ping, {});
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->code(), 0);
  EXPECT_GT(r->max_rss_bytes(), 0);
  ExpectSpecWorks(*pool);
  EXPECT_EQ(pool->spawned(), 1);
}

// Set readers' scratch files follow the worker's TMPDIR: the pool points it
// at the directory it is given (the server: its staging directory).
TEST_F(WorkerPoolTest, WorkersGetTheScratchDirectoryAsTmpdir) {
  ValidationPool::Options o = PoolOptions();
  o.scratch_dir = scratch_;
  std::unique_ptr<ValidationPool> pool = NewPool(o);
  ASSERT_NE(pool, nullptr);
  ExpectSpecWorks(*pool);
  std::string env =
      weightgate::testing::ReadWholeFile("/proc/" + std::to_string(OnlyWorker(*pool)) + "/environ");
  std::string want = "TMPDIR=" + scratch_;
  size_t at = env.find(want + std::string(1, '\0'));
  EXPECT_NE(at, std::string::npos);
  EXPECT_TRUE(at == 0 || env[at - 1] == '\0');
  EXPECT_EQ(env.find("TMPDIR=", at + want.size()), std::string::npos) << "a second TMPDIR";
}

TEST_F(WorkerPoolTest, SigkillMidRequestFailsOnlyThatRequest) {
  ScopedEnv slow("WEIGHTGATE_TEST_WORKER_DELAY_MS", "1500");
  auto pool = NewPool(PoolOptions());
  ASSERT_NE(pool, nullptr);
  pid_t victim = OnlyWorker(*pool);
  auto running =
      std::async(std::launch::async, [&] { return pool->Run(Spec("reference.pt"), {}); });
  // The request is inside the worker (sleeping before the work) by now.
  std::this_thread::sleep_for(std::chrono::milliseconds(700));
  ASSERT_EQ(::kill(victim, SIGKILL), 0);
  absl::StatusOr<WorkResponse> killed = running.get();
  ASSERT_FALSE(killed.ok());
  EXPECT_TRUE(absl::IsInternal(killed.status())) << killed.status();
  EXPECT_NE(killed.status().message().find("validation worker crashed (killed by signal 9"),
            std::string::npos)
      << killed.status();
  ExpectSpecWorks(*pool);
  EXPECT_NE(OnlyWorker(*pool), victim);
  EXPECT_EQ(pool->spawned(), 2);
}

TEST_F(WorkerPoolTest, CrashInsideTorchScriptLoadingFailsOnlyThatRequest) {
  ScopedEnv crash("WEIGHTGATE_TEST_CRASH_IN_TORCHSCRIPT", "1");
  auto pool = NewPool(PoolOptions());
  ASSERT_NE(pool, nullptr);
  absl::StatusOr<WorkResponse> crashed = pool->Run(Spec("reference_ts.pt"), {});
  ASSERT_FALSE(crashed.ok());
  EXPECT_TRUE(absl::IsInternal(crashed.status())) << crashed.status();
  EXPECT_NE(crashed.status().message().find("signal 11"), std::string::npos) << crashed.status();
  // An unreadable reference is handed to libtorch too: the same crash.
  crashed = pool->Run(Spec("not_a_checkpoint.pt"), {});
  EXPECT_TRUE(absl::IsInternal(crashed.status())) << crashed.status();
  ExpectSpecWorks(*pool);
  EXPECT_EQ(pool->spawned(), 1);  // the children crashed, not the worker
}

TEST_F(WorkerPoolTest, TimeoutStopsTheRequestNotTheWorker) {
  ScopedEnv slow("WEIGHTGATE_TEST_WORKER_DELAY_MS", "5000");
  ValidationPool::Options o = PoolOptions();
  o.timeout = absl::Seconds(1);
  auto pool = NewPool(o);
  ASSERT_NE(pool, nullptr);
  WorkRequest ping;  // the worker is up before the clock starts
  ping.set_ping(true);
  ASSERT_TRUE(pool->Run(ping, {}).ok());
  pid_t first = OnlyWorker(*pool);
  auto start = std::chrono::steady_clock::now();
  absl::StatusOr<WorkResponse> r = pool->Run(Spec("reference.pt"), {});
  double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  ASSERT_FALSE(r.ok());
  EXPECT_TRUE(absl::IsResourceExhausted(r.status())) << r.status();
  EXPECT_NE(r.status().message().find("--validation_timeout"), std::string::npos);
  EXPECT_LT(seconds, 3.0);
  // Only the request's child was killed; the worker serves on.
  EXPECT_EQ(OnlyWorker(*pool), first);
  EXPECT_EQ(pool->spawned(), 1);
}

TEST_F(WorkerPoolTest, CpuLimitKillsASpinningWorker) {
  // The watchdog is generous, so RLIMIT_CPU (SIGXCPU) is what stops it.
  ScopedEnv spin("WEIGHTGATE_TEST_WORKER_SPIN_MS", "20000");
  ValidationPool::Options o = PoolOptions();
  o.timeout = absl::Seconds(30);
  o.cpu_time = absl::Seconds(1);
  auto pool = NewPool(o);
  ASSERT_NE(pool, nullptr);
  auto start = std::chrono::steady_clock::now();
  absl::StatusOr<WorkResponse> r = pool->Run(Spec("reference.pt"), {});
  double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  ASSERT_FALSE(r.ok());
  EXPECT_TRUE(absl::IsResourceExhausted(r.status())) << r.status();
  EXPECT_NE(r.status().message().find("CPU time limit"), std::string::npos) << r.status();
  EXPECT_LT(seconds, 15.0);
}

TEST_F(WorkerPoolTest, CancelledRequestStopsItsWork) {
  ScopedEnv slow("WEIGHTGATE_TEST_WORKER_DELAY_MS", "3000");
  auto pool = NewPool(PoolOptions());
  ASSERT_NE(pool, nullptr);
  WorkRequest ping;  // a starting worker is never killed: let it start
  ping.set_ping(true);
  ASSERT_TRUE(pool->Run(ping, {}).ok());
  pid_t first = OnlyWorker(*pool);
  std::atomic<bool> cancelled{false};
  CallControl control;
  control.cancelled = [&] { return cancelled.load(); };
  auto start = std::chrono::steady_clock::now();
  auto running =
      std::async(std::launch::async, [&] { return pool->Run(Spec("reference.pt"), control); });
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  // While a request runs its child is the worker's only one.
  std::vector<pid_t> child = Children(first);
  ASSERT_EQ(child.size(), 1u);
  cancelled = true;
  absl::StatusOr<WorkResponse> r = running.get();
  double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  EXPECT_TRUE(absl::IsCancelled(r.status())) << r.status();
  EXPECT_LT(seconds, 2.0);
  // The child doing the work is gone (reaped); the worker stays.
  std::vector<pid_t> now = Children(first);
  EXPECT_EQ(std::find(now.begin(), now.end(), child[0]), now.end());
  EXPECT_NE(::kill(child[0], 0), 0);
  EXPECT_EQ(OnlyWorker(*pool), first);
  ExpectSpecWorks(*pool);
  EXPECT_EQ(pool->spawned(), 1);
}

TEST_F(WorkerPoolTest, RequestCancelledBeforeItStartsKeepsTheWorker) {
  auto pool = NewPool(PoolOptions());
  ASSERT_NE(pool, nullptr);
  WorkRequest ping;
  ping.set_ping(true);
  ASSERT_TRUE(pool->Run(ping, {}).ok());
  pid_t first = OnlyWorker(*pool);
  CallControl control;
  control.cancelled = [] { return true; };
  EXPECT_TRUE(absl::IsCancelled(pool->Run(Spec("reference.pt"), control).status()));
  EXPECT_EQ(OnlyWorker(*pool), first);
  EXPECT_EQ(pool->spawned(), 1);
}

TEST_F(WorkerPoolTest, DeadlineStopsTheWork) {
  ScopedEnv slow("WEIGHTGATE_TEST_WORKER_DELAY_MS", "10000");
  auto pool = NewPool(PoolOptions());
  ASSERT_NE(pool, nullptr);
  CallControl control;
  control.deadline = absl::Now() + absl::Seconds(1);
  absl::StatusOr<WorkResponse> r = pool->Run(Spec("reference.pt"), control);
  EXPECT_TRUE(absl::IsDeadlineExceeded(r.status())) << r.status();
}

// A pickle that copies one memoised 10^4-item list 4000 times through
// set(...): 4*10^7 items from a ~30 KB file, unless the reader's budget
// stops it first. Either way the worker, not this process, pays.
std::string WriteCopyBomb(const std::string& dir) {
  const std::string path = dir + "/copy_bomb.pt";
  const std::string script =
      "import sys, zipfile\n"
      "p = b'\\x80\\x02(' + b'N' * 10000 + b'l\\x94'\n"
      "p += b'(' + b'cbuiltins\\nset\\nh\\x00\\x85R' * 4000 + b'l'\n"
      "with zipfile.ZipFile(sys.argv[1], 'w') as z:\n"
      "    z.writestr('x/data.pkl', p + b'.')\n"
      "    z.writestr('x/version', '3\\n')\n";
  std::ofstream(dir + "/copy_bomb.py") << script;
  std::string log;
  EXPECT_EQ(RunCommand("/usr/bin/python3 '" + dir + "/copy_bomb.py' '" + path + "'", &log), 0)
      << log;
  return path;
}

TEST_F(WorkerPoolTest, MemoryBlowUpIsAResourceLimit) {
  ValidationPool::Options o = PoolOptions();
  o.memory_bytes = uint64_t{32} << 20;  // below the reader's own budget for this file (~88 MB)
  auto pool = NewPool(o);
  ASSERT_NE(pool, nullptr);
  WorkRequest r;
  r.mutable_spec()->set_reference_path(WriteCopyBomb(scratch_));
  absl::StatusOr<WorkResponse> bomb = pool->Run(r, {});
  if (bomb.ok()) {
    // The reader's own budget refused it: a clean error naming the limit.
    EXPECT_NE(bomb->code(), 0);
    EXPECT_NE(bomb->message().find("resource limit"), std::string::npos) << bomb->message();
  } else {
    EXPECT_TRUE(absl::IsResourceExhausted(bomb.status())) << bomb.status();
    EXPECT_NE(bomb.status().message().find("--validation_memory_bytes"), std::string::npos);
  }
  ExpectSpecWorks(*pool);
  EXPECT_EQ(pool->spawned(), 1);
}

TEST_F(WorkerPoolTest, WorkersRunInParallelAndAreBounded) {
  ScopedEnv slow("WEIGHTGATE_TEST_WORKER_DELAY_MS", "1000");
  ValidationPool::Options o = PoolOptions();
  o.workers = 2;
  auto pool = NewPool(o);
  ASSERT_NE(pool, nullptr);
  // Warm both workers up so start-up time is not measured.
  {
    auto a = std::async(std::launch::async, [&] { return pool->Run(Spec("reference.pt"), {}); });
    auto b = std::async(std::launch::async, [&] { return pool->Run(Spec("reference.pt"), {}); });
    ASSERT_TRUE(a.get().ok());
    ASSERT_TRUE(b.get().ok());
  }
  auto start = std::chrono::steady_clock::now();
  std::vector<std::future<absl::StatusOr<WorkResponse>>> runs;
  for (int i = 0; i < 4; ++i) {
    runs.push_back(
        std::async(std::launch::async, [&] { return pool->Run(Spec("reference.pt"), {}); }));
  }
  for (auto& f : runs) EXPECT_TRUE(f.get().ok());
  double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  // Four 1 s requests on two workers: two rounds, not one and not four.
  EXPECT_GE(seconds, 2.0);
  EXPECT_LT(seconds, 3.9);
  EXPECT_EQ(pool->spawned(), 2);
}

// Frames between the server and its workers.
class FrameTest : public ::testing::Test {
 protected:
  void SetUp() override { ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM, 0, fds_), 0); }
  void TearDown() override {
    ::close(fds_[0]);
    if (fds_[1] >= 0) ::close(fds_[1]);
  }
  void Send(const std::string& bytes) {
    ASSERT_EQ(::write(fds_[1], bytes.data(), bytes.size()), static_cast<ssize_t>(bytes.size()));
  }
  int fds_[2] = {-1, -1};
};

TEST_F(FrameTest, RoundTrip) {
  WorkResponse out;
  out.set_message(std::string(100000, 'x'));
  out.set_started_pid(42);
  std::thread writer([&] { EXPECT_TRUE(WriteFrame(fds_[1], out).ok()); });
  WorkResponse in;
  ASSERT_TRUE(ReadFrame(fds_[0], &in).ok());
  writer.join();
  EXPECT_EQ(in.message(), out.message());
  EXPECT_EQ(in.started_pid(), 42);
}

TEST_F(FrameTest, OversizedLengthIsRefusedBeforeAllocating) {
  Send(std::string("\xff\xff\xff\x7f", 4));
  WorkResponse in;
  absl::Status s = ReadFrame(fds_[0], &in);
  EXPECT_TRUE(absl::IsDataLoss(s)) << s;
  Send(std::string("\x01\x00\x00\x05", 4));  // 80 MiB: over the 64 MiB cap too
  FrameReader reader;
  s = reader.Feed(fds_[0]);
  EXPECT_TRUE(absl::IsDataLoss(s)) << s;
}

TEST_F(FrameTest, TruncatedFrameIsUnavailable) {
  Send(std::string("\x10\x00\x00\x00", 4) + "xyz");
  ::close(fds_[1]);
  fds_[1] = -1;
  WorkResponse in;
  EXPECT_TRUE(absl::IsUnavailable(ReadFrame(fds_[0], &in)));
}

TEST_F(FrameTest, GarbageBodyIsDataLoss) {
  Send(std::string("\x03\x00\x00\x00\xff\xff\xff", 7));
  FrameReader reader;
  ASSERT_TRUE(reader.Feed(fds_[0]).ok());
  ASSERT_TRUE(reader.Done());
  WorkResponse in;
  EXPECT_TRUE(absl::IsDataLoss(reader.Parse(&in)));
}

// The Registry turns worker outcomes into reports and errors.
class RegistryWorkerTest : public WorkerPoolTest {
 protected:
  void SetUp() override {
    WorkerPoolTest::SetUp();
    store::Store::Options so;
    so.root = scratch_ + "/store";
    absl::StatusOr<std::unique_ptr<store::Store>> s = store::Store::Open(so);
    ASSERT_TRUE(s.ok()) << s.status();
    store_ = std::move(*s);
  }
  std::unique_ptr<registry::Registry> NewRegistry(ValidationPool* pool) {
    registry::Registry::Options ro;
    ro.store = store_.get();
    ro.device = "cpu";
    ro.pool = pool;
    return std::move(*registry::Registry::Create(ro));
  }
  std::unique_ptr<store::Store> store_;
};

TEST_F(RegistryWorkerTest, ValidateThroughWorkersMatchesInProcess) {
  auto pool = NewPool(PoolOptions());
  ASSERT_NE(pool, nullptr);
  auto isolated = NewRegistry(pool.get());
  auto in_process = NewRegistry(nullptr);
  v1::RegisterModelHeader reg;
  reg.set_model_id("net");
  ASSERT_TRUE(isolated->RegisterModel(reg, dir_ + "/reference.pt").ok());
  v1::UploadHeader header;
  header.set_model_id("net");
  for (const char* fixture : {"ddp_script.pt", "shape_mismatch.pt", "unsafe.pt", "truncated.pt"}) {
    absl::StatusOr<v1::ValidationReport> a = isolated->Validate(header, dir_ + "/" + fixture);
    absl::StatusOr<v1::ValidationReport> b = in_process->Validate(header, dir_ + "/" + fixture);
    ASSERT_TRUE(a.ok()) << fixture << ": " << a.status();
    ASSERT_TRUE(b.ok()) << fixture << ": " << b.status();
    v1::ValidationReport x = *a, y = *b;
    x.clear_timings();
    y.clear_timings();
    EXPECT_EQ(x.DebugString(), y.DebugString()) << fixture;
  }
}

TEST_F(RegistryWorkerTest, LimitsAreInvalidReportsAndCrashesInternal) {
  auto pool = NewPool(PoolOptions());
  ASSERT_NE(pool, nullptr);
  auto registry = NewRegistry(pool.get());
  v1::RegisterModelHeader reg;
  reg.set_model_id("net");
  ASSERT_TRUE(registry->RegisterModel(reg, dir_ + "/reference.pt").ok());
  v1::UploadHeader header;
  header.set_model_id("net");

  ValidationPool::Options o = PoolOptions();
  o.memory_bytes = uint64_t{128} << 20;
  auto small = NewPool(o);
  ASSERT_NE(small, nullptr);
  auto limited = NewRegistry(small.get());
  absl::StatusOr<v1::ValidationReport> report = limited->Validate(header, WriteCopyBomb(scratch_));
  ASSERT_TRUE(report.ok()) << report.status();
  EXPECT_EQ(report->verdict(), v1::INVALID);
  EXPECT_FALSE(report->reasons().empty());
  EXPECT_EQ(report->model_id(), "net");

  {
    ScopedEnv crash("WEIGHTGATE_TEST_CRASH_IN_TORCHSCRIPT", "1");
    // Respawned workers inherit the hook; kill the current one first.
    ::kill(OnlyWorker(*pool), SIGKILL);
    v1::RegisterModelHeader ts;
    ts.set_model_id("scripted");
    absl::StatusOr<v1::Model> model = registry->RegisterModel(ts, dir_ + "/reference_ts.pt");
    // Either the killed worker's death or the hook's crash: INTERNAL.
    EXPECT_TRUE(absl::IsInternal(model.status())) << model.status();
    model = registry->RegisterModel(ts, dir_ + "/reference_ts.pt");
    EXPECT_TRUE(absl::IsInternal(model.status())) << model.status();
    EXPECT_NE(model.status().message().find("validation worker crashed"), std::string::npos);
    EXPECT_FALSE(store_->GetModel("scripted").ok());
  }
  // A worker started with the hook still validates checkpoints without TorchScript.
  absl::StatusOr<v1::ValidationReport> ok = registry->Validate(header, dir_ + "/ddp_script.pt");
  ASSERT_TRUE(ok.ok()) << ok.status();
  EXPECT_EQ(ok->verdict(), v1::NORMALIZED);
}

}  // namespace
}  // namespace weightgate::worker
