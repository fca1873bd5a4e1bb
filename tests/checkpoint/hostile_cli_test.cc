// Every attack class of tests/fixtures/make_hostile_fixtures.py against the
// real `weightgate inspect` binary, one test per class: each file (a few KB)
// is refused, or read for the valid contrasts, with the reason its manifest
// names, within 256 MiB of address space (RLIMIT_AS), 256 MiB of RSS and
// 2 s, never by a signal, and no payload ever runs.
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <fstream>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "tests/checkpoint/checkpoint_test_util.h"

namespace weightgate::checkpoint {
namespace {

using testing::FileExists;
using testing::HostileFixtureDir;

constexpr rlim_t kAddressSpace = rlim_t{256} << 20;
constexpr long kMaxRssKb = 256 << 10;
constexpr double kMaxSeconds = 2.0;
constexpr size_t kMaxFixtureBytes = 8 << 10;

struct ManifestEntry {
  std::string file, cls, reason, inspect, expect;
};

std::vector<ManifestEntry> ReadManifest() {
  std::vector<ManifestEntry> out;
  std::ifstream in(HostileFixtureDir() + "/manifest.tsv");
  std::string line;
  while (std::getline(in, line)) {
    std::vector<std::string> f;
    std::stringstream ss(line);
    std::string field;
    while (std::getline(ss, field, '\t')) f.push_back(field == "-" ? "" : field);
    if (f.size() == 5) out.push_back({f[0], f[1], f[2], f[3], f[4]});
  }
  return out;
}

struct Run {
  int exit_code = -1;
  int signal = 0;
  std::string output;  // stdout and stderr
  double seconds = 0;
  long max_rss_kb = 0;
};

// Runs `weightgate inspect FILE` under RLIMIT_AS and a CPU limit.
Run RunInspect(const std::string& file) {
  std::string bin = ::weightgate::testing::BinaryDir() + std::string("/bin/weightgate");
  Run run;
  int fds[2];
  if (::pipe(fds) != 0) return run;
  auto start = std::chrono::steady_clock::now();
  pid_t pid = ::fork();
  if (pid == 0) {
    ::dup2(fds[1], 1);
    ::dup2(fds[1], 2);
    ::close(fds[0]);
    ::close(fds[1]);
    struct rlimit as {
      kAddressSpace, kAddressSpace
    };
    ::setrlimit(RLIMIT_AS, &as);
    struct rlimit cpu {
      10, 10
    };
    ::setrlimit(RLIMIT_CPU, &cpu);
    ::execl(bin.c_str(), "weightgate", "inspect", file.c_str(), static_cast<char*>(nullptr));
    ::_exit(127);
  }
  ::close(fds[1]);
  char buf[4096];
  ssize_t n;
  while ((n = ::read(fds[0], buf, sizeof(buf))) > 0) {
    if (run.output.size() < (1 << 20)) run.output.append(buf, static_cast<size_t>(n));
  }
  ::close(fds[0]);
  int status = 0;
  struct rusage usage {};
  ::wait4(pid, &status, 0, &usage);
  run.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  run.max_rss_kb = usage.ru_maxrss;
  if (WIFEXITED(status)) run.exit_code = WEXITSTATUS(status);
  if (WIFSIGNALED(status)) run.signal = WTERMSIG(status);
  return run;
}

std::string Marker() { return HostileFixtureDir() + "/../hostile-PWNED"; }

// What `inspect` prints for each INVALID reason the manifest expects.
std::string InspectSign(const std::string& reason) {
  if (reason == "resource_limit") return "resource limit";
  if (reason == "unsafe_pickle") return "unsafe pickle";
  if (reason == "not_a_checkpoint") return "not a checkpoint";
  return "";
}

void CheckClass(const std::string& cls) {
  std::vector<ManifestEntry> entries = ReadManifest();
  int seen = 0;
  for (const ManifestEntry& e : entries) {
    if (e.cls != cls) continue;
    ++seen;
    SCOPED_TRACE(e.file);
    std::string path = HostileFixtureDir() + "/" + e.file;
    std::ifstream f(path, std::ios::binary | std::ios::ate);
    EXPECT_LE(static_cast<size_t>(f.tellg()), kMaxFixtureBytes);
    Run run = RunInspect(path);
    EXPECT_EQ(run.signal, 0) << "killed by a signal\n" << run.output;
    EXPECT_NE(run.exit_code, 127) << "could not run weightgate";
    if (e.inspect == "refused") {
      EXPECT_EQ(run.exit_code, 1) << run.output;
    } else {
      EXPECT_EQ(run.exit_code, 0) << run.output;
    }
    if (e.inspect == "refused" && !InspectSign(e.reason).empty()) {
      EXPECT_NE(run.output.find(InspectSign(e.reason)), std::string::npos) << run.output;
    }
    if (!e.expect.empty()) {
      EXPECT_NE(run.output.find(e.expect), std::string::npos) << run.output;
    }
    EXPECT_LT(run.seconds, kMaxSeconds);
    EXPECT_LT(run.max_rss_kb, kMaxRssKb);
    std::printf("%-34s %-9s %6.3f s %7ld KiB max RSS\n", e.file.c_str(),
                run.exit_code == 0 ? "read" : "refused", run.seconds, run.max_rss_kb);
  }
  EXPECT_GT(seen, 0) << "no fixture of class " << cls;
  EXPECT_FALSE(FileExists(Marker())) << "a payload ran";
}

TEST(HostileCli, Amplification) { CheckClass("amplification"); }
TEST(HostileCli, DagFlatten) { CheckClass("dag_flatten"); }
TEST(HostileCli, MatcherWrappers) { CheckClass("matcher_wrappers"); }
TEST(HostileCli, LongKey) { CheckClass("long_key"); }
TEST(HostileCli, CodeGlobal) { CheckClass("code_global"); }
TEST(HostileCli, CallsUnknown) { CheckClass("calls_unknown"); }
TEST(HostileCli, ZipBomb) { CheckClass("zip_bomb"); }
TEST(HostileCli, Truncated) { CheckClass("truncated"); }
TEST(HostileCli, Garbage) { CheckClass("garbage"); }
TEST(HostileCli, Valid) { CheckClass("valid"); }

TEST(HostileCli, EveryClassHasATest) {
  const std::set<std::string> tested = {
      "amplification", "dag_flatten", "matcher_wrappers", "long_key", "code_global",
      "calls_unknown", "zip_bomb",    "truncated",        "garbage",  "valid"};
  std::vector<ManifestEntry> entries = ReadManifest();
  ASSERT_GT(entries.size(), 50u);
  for (const ManifestEntry& e : entries) EXPECT_EQ(tested.count(e.cls), 1u) << e.cls;
}

}  // namespace
}  // namespace weightgate::checkpoint
