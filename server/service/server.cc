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
  if (!IsLoopbackAddress(options.listen) && !tls && options.tokens_file.empty() &&
      !options.insecure) {
    return absl::InvalidArgumentError(absl::StrCat("refusing to listen on non-loopback address ",
                                                   options.listen,
                                                   " without TLS (--tls_cert/--tls_key) or tokens "
                                                   "(--tokens_file); pass --insecure to override"));
  }
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

  registry::Registry::Options registry_options;
  registry_options.store = s->store_.get();
  registry_options.device = options.device;
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

  int cores = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  s->io_ = std::make_unique<Executor>(4);
  s->heavy_ =
      std::make_unique<Executor>(options.worker_threads > 0 ? options.worker_threads : cores);

  RegistryService::Options rs;
  rs.registry = s->registry_.get();
  rs.store = s->store_.get();
  rs.metrics = s->metrics_.get();
  rs.auth = s->auth_.get();
  rs.executor = s->io_.get();
  rs.heavy = s->heavy_.get();
  rs.max_upload_bytes = options.max_upload_bytes;
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
  s->stream_service_ = std::make_unique<StreamService>(ss);

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
  builder.SetMaxReceiveMessageSize(16 << 20);
  builder.SetMaxSendMessageSize(16 << 20);
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
}

}  // namespace weightgate::service
