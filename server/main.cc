// weightgate-server: the gRPC service. With no flags it serves on loopback
// with a local store under ./var/store (the embedded default).
#include <malloc.h>

#include <csignal>
#include <cstdio>
#include <iostream>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/reflection.h"
#include "absl/flags/usage.h"
#include "absl/flags/usage_config.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "server/service/server.h"
#include "server/store/fsck.h"
#include "server/worker/worker_main.h"

ABSL_FLAG(std::string, listen, "127.0.0.1:50051", "gRPC listen address (host:port)");
ABSL_FLAG(std::string, metrics_listen, "127.0.0.1:9464",
          "Prometheus /metrics listen address; empty to disable");
ABSL_FLAG(std::string, store, "./var/store", "store directory (created if missing)");
ABSL_FLAG(std::string, device, "auto",
          "where tensor checks and casts run: auto (CUDA when available, else CPU), cpu, cuda[:N]");
ABSL_FLAG(uint64_t, cache_bytes, uint64_t{4} << 30, "bound of the in-memory cache of open blobs");
ABSL_FLAG(uint64_t, max_upload_bytes, uint64_t{64} << 30, "largest accepted upload in bytes");
ABSL_FLAG(std::string, tls_cert, "", "PEM server certificate (enables TLS with --tls_key)");
ABSL_FLAG(std::string, tls_key, "", "PEM server private key");
ABSL_FLAG(std::string, tls_client_ca, "",
          "PEM CA bundle; when set, clients must present certificates");
ABSL_FLAG(std::string, tokens_file, "",
          "file of bearer tokens, one per line: TOKEN [reader|writer|admin] [NAME]; re-read on "
          "SIGHUP; empty = no authentication (every caller is admin)");
ABSL_FLAG(bool, insecure, false,
          "allow a non-loopback --listen address without TLS (with or without tokens)");
ABSL_FLAG(std::vector<std::string>, preload, {},
          "comma-separated references (MODEL@ALIAS) to open into the cache at startup");
ABSL_FLAG(int, validation_workers, 0,
          "validation worker processes, i.e. validations running at once (0 = number of cores)");
ABSL_FLAG(int, worker_threads, 0, "deprecated alias of --validation_workers");
ABSL_FLAG(uint64_t, validation_memory_bytes, uint64_t{4} << 30,
          "anonymous memory one validation may use beyond its worker's baseline; 0 = unlimited");
ABSL_FLAG(absl::Duration, validation_timeout, absl::Minutes(10),
          "wall-clock (and CPU) time one validation may take, e.g. 90s or 10m");
ABSL_FLAG(int, max_pending_validations, 64,
          "uploads that may wait for a validation worker; more are refused with "
          "RESOURCE_EXHAUSTED");
ABSL_FLAG(int, drain_seconds, 20, "on SIGTERM, how long running streams may finish");
ABSL_FLAG(int, max_uploads, 32,
          "concurrent upload/validate/register streams; more get RESOURCE_EXHAUSTED");
ABSL_FLAG(int, max_streams, 1024,
          "concurrent FetchWeights + WatchModel streams; more get RESOURCE_EXHAUSTED");
ABSL_FLAG(uint64_t, max_staged_bytes, uint64_t{64} << 30,
          "bytes all uploads in flight may stage together");
ABSL_FLAG(uint64_t, min_free_bytes, uint64_t{1} << 30,
          "free bytes the store's filesystem keeps; uploads that would go below are refused");
ABSL_FLAG(int64_t, idle_upload_timeout_ms, 60000,
          "an upload whose next message takes longer is cancelled");
ABSL_FLAG(int64_t, stalled_reader_timeout_ms, 60000,
          "a fetch whose client leaves a chunk unread longer is cancelled");
ABSL_FLAG(uint32_t, max_chunk_bytes, 1 << 20, "largest FetchWeights chunk (requests are clamped)");
ABSL_FLAG(int, max_message_bytes, 16 << 20, "largest gRPC message in either direction");
ABSL_FLAG(int, keepalive_ms, 60000, "HTTP/2 keepalive ping interval on idle connections");
ABSL_FLAG(int, keepalive_timeout_ms, 20000, "close a connection whose ping is not answered");
ABSL_FLAG(bool, access_log, true, "one access-log line per RPC on stderr");
ABSL_FLAG(bool, fsck, false,
          "check the store (--store) read-only: every blob's sha256 and every metadata "
          "reference; print damage and exit 1 if any, 0 if clean; the server does not start");

namespace {

bool OnlyOurFlags(absl::string_view file) { return absl::StrContains(file, "server/main.cc"); }

// absl exits with 1 on an unknown flag; the contract says usage errors exit 2
// with one line, so unknown flags are caught first.
bool CheckFlagNames(int argc, char** argv) {
  static const char* const kBuiltin[] = {"help",     "helpfull",  "helpshort",  "helppackage",
                                         "helpon",   "helpmatch", "version",    "only_check_args",
                                         "flagfile", "fromenv",   "tryfromenv", "undefok"};
  for (int i = 1; i < argc; ++i) {
    absl::string_view arg = argv[i];
    if (arg == "--") break;
    if (!absl::ConsumePrefix(&arg, "-")) continue;
    absl::ConsumePrefix(&arg, "-");
    arg = arg.substr(0, arg.find('='));
    bool known = absl::FindCommandLineFlag(arg) != nullptr;
    if (!known && absl::ConsumePrefix(&arg, "no")) {
      const absl::CommandLineFlag* flag = absl::FindCommandLineFlag(arg);
      known = flag != nullptr && flag->IsOfType<bool>();
    }
    for (const char* name : kBuiltin) known = known || arg == name;
    if (!known) {
      std::cerr << "weightgate-server: unknown flag '" << argv[i] << "' (see --help)\n";
      return false;
    }
  }
  return true;
}

// See main().
constexpr int kMallocTrimThresholdBytes = 32 << 20;

}  // namespace

int main(int argc, char** argv) {
  // The server re-executes itself as its validation workers.
  if (weightgate::worker::IsValidationWorker(argc, argv)) {
    return weightgate::worker::ValidationWorkerMain(argc, argv);
  }
  // Upload chunks and gRPC's read buffers are MiB-sized blocks allocated on
  // one thread and freed on another. With glibc's default trim threshold a
  // freed block at the top of an arena went back to the kernel and the next
  // one faulted in fresh pages, about 15% more server CPU per upload (it
  // only stayed away by accident, while the server hashed stored files in
  // 4 MiB pieces, which raised glibc's dynamic thresholds). Up to this much
  // free memory per arena now stays mapped.
  ::mallopt(M_TRIM_THRESHOLD, kMallocTrimThresholdBytes);
  absl::FlagsUsageConfig config;
  config.contains_helpshort_flags = OnlyOurFlags;
  config.contains_help_flags = OnlyOurFlags;
  config.version_string = [] { return std::string("weightgate-server 0.1.0\n"); };
  absl::SetFlagsUsageConfig(config);
  absl::SetProgramUsageMessage(
      "weightgate-server: validates, repairs, stores and streams PyTorch weights.\n"
      "Usage: weightgate-server [--listen ADDR] [--metrics_listen ADDR] [--store DIR] [flags]");

  // Block the shutdown signals in every thread; main waits for them below.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGHUP);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  if (!CheckFlagNames(argc, argv)) return 2;
  std::vector<char*> positional = absl::ParseCommandLine(argc, argv);
  if (positional.size() > 1) {
    std::cerr << "weightgate-server: unexpected argument '" << positional[1] << "' (see --help)\n";
    return 2;
  }

  if (absl::GetFlag(FLAGS_fsck)) {
    weightgate::store::FsckResult fsck = weightgate::store::Fsck(absl::GetFlag(FLAGS_store));
    for (const std::string& line : fsck.problems) std::cout << line << "\n";
    std::cout << "fsck " << absl::GetFlag(FLAGS_store) << ": " << fsck.blobs << " blobs ("
              << fsck.blob_bytes << " bytes), " << fsck.models << " models, " << fsck.versions
              << " versions, " << fsck.problems.size() << " problems\n";
    return fsck.problems.empty() ? 0 : 1;
  }

  weightgate::service::Server::Options options;
  options.listen = absl::GetFlag(FLAGS_listen);
  options.metrics_listen = absl::GetFlag(FLAGS_metrics_listen);
  options.store = absl::GetFlag(FLAGS_store);
  options.device = absl::GetFlag(FLAGS_device);
  options.cache_bytes = absl::GetFlag(FLAGS_cache_bytes);
  options.max_upload_bytes = absl::GetFlag(FLAGS_max_upload_bytes);
  options.tls_cert = absl::GetFlag(FLAGS_tls_cert);
  options.tls_key = absl::GetFlag(FLAGS_tls_key);
  options.tls_client_ca = absl::GetFlag(FLAGS_tls_client_ca);
  options.tokens_file = absl::GetFlag(FLAGS_tokens_file);
  options.insecure = absl::GetFlag(FLAGS_insecure);
  options.validation_workers = absl::GetFlag(FLAGS_validation_workers) > 0
                                   ? absl::GetFlag(FLAGS_validation_workers)
                                   : absl::GetFlag(FLAGS_worker_threads);
  options.validation_memory_bytes = absl::GetFlag(FLAGS_validation_memory_bytes);
  options.validation_timeout = absl::GetFlag(FLAGS_validation_timeout);
  options.max_pending_validations = absl::GetFlag(FLAGS_max_pending_validations);
  options.prestart_validation_workers = true;
  options.preload = absl::GetFlag(FLAGS_preload);
  options.max_uploads = absl::GetFlag(FLAGS_max_uploads);
  options.max_streams = absl::GetFlag(FLAGS_max_streams);
  options.max_staged_bytes = absl::GetFlag(FLAGS_max_staged_bytes);
  options.min_free_bytes = absl::GetFlag(FLAGS_min_free_bytes);
  options.idle_upload_timeout_ms = absl::GetFlag(FLAGS_idle_upload_timeout_ms);
  options.stalled_reader_timeout_ms = absl::GetFlag(FLAGS_stalled_reader_timeout_ms);
  options.max_chunk_bytes = absl::GetFlag(FLAGS_max_chunk_bytes);
  options.max_message_bytes = absl::GetFlag(FLAGS_max_message_bytes);
  options.keepalive_ms = absl::GetFlag(FLAGS_keepalive_ms);
  options.keepalive_timeout_ms = absl::GetFlag(FLAGS_keepalive_timeout_ms);
  options.access_log = absl::GetFlag(FLAGS_access_log);

  auto server = weightgate::service::Server::Start(options);
  if (!server.ok()) {
    std::cerr << "weightgate-server: " << server.status().message() << "\n";
    return 2;
  }
  std::cerr << "weightgate-server: serving on " << options.listen << " (port " << (*server)->port()
            << "), metrics on "
            << (options.metrics_listen.empty() ? "(disabled)" : options.metrics_listen)
            << ", store " << options.store << "\n";

  int sig = 0;
  for (;;) {
    sigwait(&signals, &sig);
    if (sig != SIGHUP) break;
    absl::Status reloaded = (*server)->ReloadTokens();
    std::cerr << "weightgate-server: SIGHUP, "
              << (reloaded.ok()
                      ? "tokens reloaded"
                      : absl::StrCat("tokens NOT reloaded (old tokens stay): ", reloaded.message()))
              << "\n";
  }
  std::cerr << "weightgate-server: " << (sig == SIGTERM ? "SIGTERM" : "SIGINT")
            << ", draining for up to " << absl::GetFlag(FLAGS_drain_seconds) << " s\n";
  (*server)->Shutdown(std::chrono::system_clock::now() +
                      std::chrono::seconds(absl::GetFlag(FLAGS_drain_seconds)));
  server->reset();
  std::cerr << "weightgate-server: stopped\n";
  return 0;
}
