#include "server/service/server.h"

#include <fstream>
#include <iostream>
#include <sstream>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/file_util.h"
#include "grpcpp/ext/proto_server_reflection_plugin.h"
#include "grpcpp/grpcpp.h"
#include "grpcpp/health_check_service_interface.h"
#include "server/service/call_log.h"

namespace weightgate::service {
namespace {

absl::StatusOr<std::string> ReadPem(const std::string& path) {
  absl::StatusOr<std::string> pem = common::ReadFile(path);
  if (!pem.ok()) return absl::InvalidArgumentError(absl::StrCat("cannot read ", path));
  return pem;
}

}  // namespace

bool IsLoopbackAddress(const std::string& address) {
  if (absl::StartsWith(address, "unix:")) return true;
  std::string host = address;
  if (absl::StartsWith(host, "[")) {
    host = host.substr(
        1, host.find(']') == std::string::npos ? std::string::npos : host.find(']') - 1);
  } else if (size_t colon = host.rfind(':'); colon != std::string::npos) {
    host = host.substr(0, colon);
  }
  return absl::StartsWith(host, "127.") || host == "::1" || host == "localhost";
}

absl::StatusOr<std::unique_ptr<Server>> Server::Start(const Options& options) {
  std::unique_ptr<Server> s(new Server());
  s->options_ = options;
  bool tls = !options.tls_cert.empty() || !options.tls_key.empty();
  if (tls && (options.tls_cert.empty() || options.tls_key.empty())) {
    return absl::InvalidArgumentError("--tls_cert and --tls_key must be given together");
  }
  if (!IsLoopbackAddress(options.listen) && !tls && !options.insecure) {
    // Bearer tokens over cleartext can be read off the wire and replayed.
    return absl::InvalidArgumentError(absl::StrCat(
        "refusing to listen on non-loopback address ", options.listen,
        options.tokens_file.empty()
            ? " without TLS (--tls_cert/--tls_key) or tokens (--tokens_file)"
            : " with bearer tokens but without TLS (--tls_cert/--tls_key): tokens would cross "
              "the network in cleartext",
        "; pass --insecure to override"));
  }
  if (options.max_uploads < 1 || options.max_streams < 1 || options.max_chunk_bytes < 4096 ||
      options.max_message_bytes < static_cast<int64_t>(options.max_chunk_bytes) + 4096) {
    return absl::InvalidArgumentError(
        "--max_uploads and --max_streams must be >= 1, --max_chunk_bytes >= 4096, and "
        "--max_message_bytes larger than --max_chunk_bytes");
  }
  SetAccessLogEnabled(options.access_log);
  if (options.device != "auto" && options.device != "cpu" &&
      !absl::StartsWith(options.device, "cuda")) {
    return absl::InvalidArgumentError(
        absl::StrCat("--device must be auto, cpu or cuda[:N], not '", options.device, "'"));
  }

  absl::StatusOr<std::unique_ptr<Authorizer>> auth = Authorizer::Create(options.tokens_file);
  if (!auth.ok()) return auth.status();
  s->auth_ = *std::move(auth);

  store::Store::Options store_options;
  store_options.root = options.store;
  absl::StatusOr<std::unique_ptr<store::Store>> store = store::Store::Open(store_options);
  if (!store.ok()) return store.status();
  s->store_ = *std::move(store);

  int cores = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  worker::ValidationPool::Options pool_options;
  pool_options.argv = options.validation_worker_argv;
  pool_options.workers = options.validation_workers > 0 ? options.validation_workers : cores;
  pool_options.memory_bytes = options.validation_memory_bytes;
  pool_options.timeout = options.validation_timeout;
  pool_options.prestart = options.prestart_validation_workers;
  pool_options.scratch_dir = s->store_->staging_dir();
  if (options.max_pending_validations < 1) {
    return absl::InvalidArgumentError("--max_pending_validations must be at least 1");
  }
  absl::StatusOr<std::unique_ptr<worker::ValidationPool>> pool =
      worker::ValidationPool::Create(pool_options);
  if (!pool.ok()) return pool.status();
  s->pool_ = *std::move(pool);

  registry::Registry::Options registry_options;
  registry_options.store = s->store_.get();
  registry_options.device = options.device;
  registry_options.pool = s->pool_.get();
  absl::StatusOr<std::unique_ptr<registry::Registry>> registry =
      registry::Registry::Create(registry_options);
  if (!registry.ok()) return registry.status();
  s->registry_ = *std::move(registry);

  absl::StatusOr<std::unique_ptr<Metrics>> metrics = Metrics::Create(options.metrics_listen);
  if (!metrics.ok()) return metrics.status();
  s->metrics_ = *std::move(metrics);
  s->metrics_->SetStoreBytes(static_cast<double>(s->store_->BlobBytes()));
  if (auto models = s->store_->ListModels(); models.ok()) {
    s->metrics_->SetModels(static_cast<double>(models->size()));
  }

  Limits::Options limits;
  limits.max_uploads = options.max_uploads;
  limits.max_streams = options.max_streams;
  limits.max_staged_bytes = options.max_staged_bytes;
  limits.min_free_bytes = options.min_free_bytes;
  limits.store_root = options.store;
  limits.idle_upload_timeout = std::chrono::milliseconds(options.idle_upload_timeout_ms);
  limits.stalled_reader_timeout = std::chrono::milliseconds(options.stalled_reader_timeout_ms);
  s->limits_ = std::make_unique<Limits>(limits);
  s->io_ = std::make_unique<Executor>(4);
  // One thread per worker process; uploads beyond that wait in a bounded queue.
  s->heavy_ = std::make_unique<Executor>(pool_options.workers,
                                         static_cast<size_t>(options.max_pending_validations));

  RegistryService::Options rs;
  rs.registry = s->registry_.get();
  rs.store = s->store_.get();
  rs.metrics = s->metrics_.get();
  rs.auth = s->auth_.get();
  rs.executor = s->io_.get();
  rs.heavy = s->heavy_.get();
  rs.max_upload_bytes = options.max_upload_bytes;
  rs.limits = s->limits_.get();
  s->registry_service_ = std::make_unique<RegistryService>(rs);

  s->cache_ = std::make_unique<store::BlobCache>(s->store_.get(), options.cache_bytes);
  for (const std::string& ref : options.preload) {
    absl::StatusOr<weightgate::v1::Version> version = s->store_->Resolve(ref);
    bool hit = false;
    absl::Status status = version.status();
    if (version.ok()) status = s->cache_->Get(version->blob_sha256(), &hit).status();
    if (status.ok()) {
      std::cerr << "weightgate-server: preloaded " << ref << " (version " << version->version()
                << ")\n";
    } else {
      std::cerr << "weightgate-server: cannot preload " << ref << ": " << status.message() << "\n";
    }
  }
  StreamService::Options ss;
  ss.store = s->store_.get();
  ss.cache = s->cache_.get();
  ss.metrics = s->metrics_.get();
  ss.auth = s->auth_.get();
  ss.executor = s->io_.get();
  ss.limits = s->limits_.get();
  ss.max_chunk_bytes = options.max_chunk_bytes;
  s->stream_service_ = std::make_unique<StreamService>(ss);
  s->store_->SetModelListener(
      [service = s->stream_service_.get()](const std::string& id) { service->ModelChanged(id); });

  std::shared_ptr<grpc::ServerCredentials> creds = grpc::InsecureServerCredentials();
  if (tls) {
    absl::StatusOr<std::string> cert = ReadPem(options.tls_cert);
    if (!cert.ok()) return cert.status();
    absl::StatusOr<std::string> key = ReadPem(options.tls_key);
    if (!key.ok()) return key.status();
    grpc::SslServerCredentialsOptions ssl;
    ssl.pem_key_cert_pairs.push_back({*key, *cert});
    if (!options.tls_client_ca.empty()) {
      absl::StatusOr<std::string> ca = ReadPem(options.tls_client_ca);
      if (!ca.ok()) return ca.status();
      ssl.pem_root_certs = *ca;
      ssl.client_certificate_request = GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY;
    }
    creds = grpc::SslServerCredentials(ssl);
  }

  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  builder.AddListeningPort(options.listen, creds, &s->port_);
  builder.RegisterService(s->registry_service_.get());
  builder.RegisterService(s->stream_service_.get());
  // Without this a second server on the same port would share it silently.
  builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
  builder.SetMaxReceiveMessageSize(options.max_message_bytes);
  builder.SetMaxSendMessageSize(options.max_message_bytes);
  // Dead peers (a worker host that vanished) are found by keepalive pings,
  // not by a stream that waits forever.
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIME_MS, options.keepalive_ms);
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, options.keepalive_timeout_ms);
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
  builder.AddChannelArgument(GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS, 10000);
  s->server_ = builder.BuildAndStart();
  if (s->server_ == nullptr || s->port_ == 0) {
    return absl::UnavailableError(
        absl::StrCat("cannot listen on ", options.listen, " (address in use or invalid)"));
  }
  // SERVING only now: the store is open and both services are registered.
  grpc::HealthCheckServiceInterface* health = s->server_->GetHealthCheckService();
  health->SetServingStatus(true);
  health->SetServingStatus("weightgate.v1.ModelRegistry", true);
  health->SetServingStatus("weightgate.v1.WeightStream", true);
  return s;
}

void Server::Shutdown(std::chrono::system_clock::time_point deadline) {
  if (server_ == nullptr) return;
  server_->GetHealthCheckService()->SetServingStatus(false);
  // Watch streams never end by themselves: end them so draining can finish.
  stream_service_->StopWatches();
  server_->Shutdown(deadline);
  server_->Wait();
  server_.reset();
}

Server::~Server() {
  Shutdown(std::chrono::system_clock::now());
  // Executors join after the server: no reactor can schedule work any more.
  heavy_.reset();
  io_.reset();
  limits_.reset();
}

}  // namespace weightgate::service
