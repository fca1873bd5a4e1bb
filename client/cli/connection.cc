#include "client/cli/connection.h"

#include <chrono>
#include <iostream>

#include "common/file_util.h"

namespace weightgate::cli {

std::unique_ptr<Connection> Connection::Open(const GlobalOptions& options) {
  auto conn = std::unique_ptr<Connection>(new Connection());
  conn->options_ = options;
  std::shared_ptr<grpc::ChannelCredentials> creds = grpc::InsecureChannelCredentials();
  if (!options.tls_ca.empty()) {
    absl::StatusOr<std::string> pem = common::ReadFile(options.tls_ca);
    if (!pem.ok()) {
      std::cerr << "weightgate: cannot read --tls_ca " << options.tls_ca << "\n";
      return nullptr;
    }
    grpc::SslCredentialsOptions ssl;
    ssl.pem_root_certs = *pem;
    creds = grpc::SslCredentials(ssl);
  }
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(64 << 20);
  args.SetMaxSendMessageSize(64 << 20);
  conn->channel_ = grpc::CreateCustomChannel(options.server, creds, args);
  auto deadline =
      std::chrono::system_clock::now() + std::chrono::seconds(options.connect_timeout_s);
  if (!conn->channel_->WaitForConnected(deadline)) {
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
  return kExitUsage;
}

}  // namespace weightgate::cli
