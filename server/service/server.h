// Server assembles one weightgate process: the store, the registry, both
// gRPC services, health, reflection and the metrics exposer. Start() returns
// once the port is bound and health is SERVING; Shutdown() stops accepting,
// drains in-flight streams until the deadline, then cancels the rest.
//
// This class is thread-safe.
#ifndef WEIGHTGATE_SERVER_SERVICE_SERVER_H_
#define WEIGHTGATE_SERVER_SERVICE_SERVER_H_

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "grpcpp/server.h"
#include "server/registry/registry.h"
#include "server/service/auth.h"
#include "server/service/executor.h"
#include "server/service/limits.h"
#include "server/service/metrics.h"
#include "server/service/registry_service.h"
#include "server/service/stream_service.h"
#include "server/store/store.h"
#include "server/worker/validation_pool.h"

namespace weightgate::service {

class Server final {
 public:
  struct Options {
    // gRPC address. Default loopback only.
    std::string listen = "127.0.0.1:50051";
    // Prometheus /metrics address; empty disables the exposer.
    std::string metrics_listen = "127.0.0.1:9464";
    // Store directory (created if missing).
    std::string store = "./var/store";
    // "auto", "cpu", "cuda", "cuda:N".
    std::string device = "auto";
    // Bound of the in-memory cache of open blobs.
    uint64_t cache_bytes = uint64_t{4} << 30;
    // Largest accepted upload.
    uint64_t max_upload_bytes = uint64_t{64} << 30;
    // TLS: PEM files. Both set = TLS on. client_ca additionally requires client certs.
    std::string tls_cert;
    std::string tls_key;
    std::string tls_client_ca;
    // Bearer tokens file (see Authorizer); empty = no authentication.
    std::string tokens_file;
    // Allow a non-loopback listen address without TLS or tokens.
    bool insecure = false;
    // References (MODEL@ALIAS, ...) whose blobs are opened into the cache at
    // startup, so the first workers do not pay for it. Missing ones are logged.
    std::vector<std::string> preload;
    // Edge limits (see Limits::Options for each default).
    int max_uploads = 32;
    int max_streams = 1024;
    uint64_t max_staged_bytes = uint64_t{64} << 30;
    uint64_t min_free_bytes = uint64_t{1} << 30;
    int64_t idle_upload_timeout_ms = 60000;
    int64_t stalled_reader_timeout_ms = 60000;
    // Largest FetchWeights chunk; requests are clamped to it. Default 1 MiB.
    uint32_t max_chunk_bytes = 1 << 20;
    // Largest gRPC message either way. Default 16 MiB.
    int max_message_bytes = 16 << 20;
    // HTTP/2 keepalive pings on idle connections, and how long to wait for
    // the answer before closing. Defaults 60 s and 20 s.
    int keepalive_ms = 60000;
    int keepalive_timeout_ms = 20000;
    // One access-log line per RPC on stderr. Default on.
    bool access_log = true;
    // Validation worker processes, i.e. validations running at once
    // (0 = number of cores). See worker::ValidationPool.
    int validation_workers = 0;
    // Anonymous memory one validation may add to its worker's baseline
    // (RLIMIT_DATA); 0 = unlimited.
    uint64_t validation_memory_bytes = uint64_t{4} << 30;
    // Wall-clock (and CPU) time of one validation.
    absl::Duration validation_timeout = absl::Minutes(10);
    // Uploads waiting for a worker beyond this are refused with
    // RESOURCE_EXHAUSTED and a retry hint (at least 1).
    int max_pending_validations = 64;
    // Worker command line; default this executable in worker mode, which
    // must then be weightgate-server (main() dispatches --validation_worker).
    std::vector<std::string> validation_worker_argv = {"/proc/self/exe", "--validation_worker"};
    // Start the workers in Start() instead of on the first validation.
    bool prestart_validation_workers = false;
  };

  // Validates options, opens the store, binds ports, starts serving.
  static absl::StatusOr<std::unique_ptr<Server>> Start(const Options& options);
  ~Server();

  // The bound gRPC port (useful with ":0").
  int port() const { return port_; }
  // Calls cancelled by the watchdog (idle uploads, stalled readers).
  uint64_t timeouts() const { return limits_->timeouts(); }
  // Re-reads the tokens file (SIGHUP); on error the old tokens stay.
  absl::Status ReloadTokens() { return auth_->Reload(); }
  // Stops accepting, lets running RPCs finish until `deadline`, then cancels them.
  void Shutdown(std::chrono::system_clock::time_point deadline);

 private:
  Server() = default;

  Options options_;
  int port_ = 0;
  std::unique_ptr<store::Store> store_;
  // Outlives the registry and the executors that call it.
  std::unique_ptr<worker::ValidationPool> pool_;
  std::unique_ptr<registry::Registry> registry_;
  std::unique_ptr<Metrics> metrics_;
  std::unique_ptr<Authorizer> auth_;
  std::unique_ptr<Limits> limits_;
  std::unique_ptr<Executor> io_;
  std::unique_ptr<Executor> heavy_;
  std::unique_ptr<store::BlobCache> cache_;
  std::unique_ptr<RegistryService> registry_service_;
  std::unique_ptr<StreamService> stream_service_;
  std::unique_ptr<grpc::Server> server_;
};

// True for 127.0.0.0/8, [::1], localhost and unix: sockets.
bool IsLoopbackAddress(const std::string& address);

}  // namespace weightgate::service

#endif  // WEIGHTGATE_SERVER_SERVICE_SERVER_H_
