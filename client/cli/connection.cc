#include "client/cli/connection.h"

#include <netdb.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <iostream>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/exit_codes.h"
#include "common/file_util.h"

namespace weightgate::cli {
namespace {

// True when something accepts a TCP connection at host:port (within ~2 s).
bool TcpAnswers(const std::string& address) {
  std::string host = address;
  std::string port;
  if (absl::StartsWith(host, "unix:")) return false;
  if (size_t colon = host.rfind(':'); colon != std::string::npos) {
    port = host.substr(colon + 1);
    host = host.substr(0, colon);
  }
  if (absl::StartsWith(host, "dns:///")) host = host.substr(7);
  if (absl::StartsWith(host, "ipv4:")) host = host.substr(5);
  if (!host.empty() && host.front() == '[' && host.back() == ']') {
    host = host.substr(1, host.size() - 2);
  }
  struct addrinfo hints = {};
  hints.ai_socktype = SOCK_STREAM;
  struct addrinfo* found = nullptr;
  if (port.empty() || ::getaddrinfo(host.c_str(), port.c_str(), &hints, &found) != 0) return false;
  bool ok = false;
  for (struct addrinfo* a = found; a != nullptr && !ok; a = a->ai_next) {
    int fd = ::socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, a->ai_protocol);
    if (fd < 0) continue;
    struct timeval tv = {2, 0};
    ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    ok = ::connect(fd, a->ai_addr, a->ai_addrlen) == 0;
    ::close(fd);
  }
  ::freeaddrinfo(found);
  return ok;
}

// gRPC's own words for why the channel did not connect (one short RPC).
std::string ConnectError(const std::shared_ptr<grpc::Channel>& channel) {
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(2));
  weightgate::v1::ListModelsResponse response;
  grpc::Status s = weightgate::v1::ModelRegistry::NewStub(channel)->ListModels(
      &ctx, weightgate::v1::ListModelsRequest(), &response);
  std::string message = s.error_message();
  if (size_t last = message.find("last error: "); last != std::string::npos) {
    message = message.substr(last + 12);
  }
  return message;
}

}  // namespace

std::unique_ptr<Connection> Connection::Open(const GlobalOptions& options) {
  auto conn = std::unique_ptr<Connection>(new Connection());
  conn->options_ = options;
  std::shared_ptr<grpc::ChannelCredentials> creds = grpc::InsecureChannelCredentials();
  bool tls = !options.tls_ca.empty() || !options.tls_cert.empty() || !options.tls_key.empty();
  if (tls) {
    if (options.tls_cert.empty() != options.tls_key.empty()) {
      std::cerr << "weightgate: --tls_cert and --tls_key must be given together\n";
      return nullptr;
    }
    grpc::SslCredentialsOptions ssl;
    struct {
      const std::string& path;
      const char* flag;
      std::string* into;
    } files[] = {{options.tls_ca, "--tls_ca", &ssl.pem_root_certs},
                 {options.tls_cert, "--tls_cert", &ssl.pem_cert_chain},
                 {options.tls_key, "--tls_key", &ssl.pem_private_key}};
    for (const auto& f : files) {
      if (f.path.empty()) continue;
      absl::StatusOr<std::string> pem = common::ReadFile(f.path);
      if (!pem.ok()) {
        std::cerr << "weightgate: cannot read " << f.flag << " " << f.path << "\n";
        return nullptr;
      }
      *f.into = *std::move(pem);
    }
    creds = grpc::SslCredentials(ssl);
  }
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(64 << 20);
  args.SetMaxSendMessageSize(64 << 20);
  conn->channel_ = grpc::CreateCustomChannel(options.server, creds, args);
  auto deadline =
      std::chrono::system_clock::now() + std::chrono::seconds(options.connect_timeout_s);
  if (!conn->channel_->WaitForConnected(deadline)) {
    if (TcpAnswers(options.server)) {
      // Something listens there: the handshake is what failed.
      std::string why = ConnectError(conn->channel_);
      if (tls) {
        std::cerr << "weightgate: cannot connect to " << options.server
                  << ": TLS handshake failed (" << why
                  << "); check that --tls_ca signed the server's certificate and, if the server "
                     "requires client certificates, pass --tls_cert and --tls_key\n";
      } else {
        std::cerr << "weightgate: cannot connect to " << options.server
                  << ": the server accepted TCP but not plaintext gRPC (" << why
                  << "); it probably requires TLS: pass --tls_ca (and --tls_cert/--tls_key for "
                     "mutual TLS)\n";
      }
      return nullptr;
    }
    std::cerr << "weightgate: cannot connect to " << options.server
              << ": no server answered within " << options.connect_timeout_s
              << " s (is weightgate-server running? see --server)\n";
    return nullptr;
  }
  conn->registry_ = weightgate::v1::ModelRegistry::NewStub(conn->channel_);
  conn->stream_ = weightgate::v1::WeightStream::NewStub(conn->channel_);
  return conn;
}

std::unique_ptr<grpc::ClientContext> Connection::NewContext() const {
  auto ctx = std::make_unique<grpc::ClientContext>();
  if (!options_.token.empty()) ctx->AddMetadata("authorization", "Bearer " + options_.token);
  return ctx;
}

int ReportRpcError(const std::string& what, const grpc::Status& status) {
  std::cerr << "weightgate: " << what << ": " << status.error_message();
  if (status.error_code() == grpc::StatusCode::UNAVAILABLE) std::cerr << " (server unavailable)";
  std::cerr << "\n";
  return common::kExitUsage;
}

}  // namespace weightgate::cli
