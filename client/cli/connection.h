// Connection holds what every server-talking CLI command needs: the channel,
// stubs, call options (token, deadline) and the global output mode.
#ifndef WEIGHTGATE_CLIENT_CLI_CONNECTION_H_
#define WEIGHTGATE_CLIENT_CLI_CONNECTION_H_

#include <memory>
#include <string>

#include "grpcpp/grpcpp.h"
#include "weightgate/v1/registry.grpc.pb.h"
#include "weightgate/v1/stream.grpc.pb.h"

namespace weightgate::cli {

struct GlobalOptions {
  std::string server = "127.0.0.1:50051";
  bool json = false;
  std::string token;   // --token or $WEIGHTGATE_TOKEN
  std::string tls_ca;  // --tls_ca: PEM roots; enables TLS
  // --tls_cert/--tls_key: PEM client certificate and key for mutual TLS
  // (enable TLS too; without --tls_ca the system roots verify the server).
  std::string tls_cert;
  std::string tls_key;
  int connect_timeout_s = 5;
};

class Connection final {
 public:
  // Connects (waiting up to connect_timeout_s). On failure prints one line
  // "weightgate: cannot connect to ADDR: ..." and returns nullptr; a server
  // that accepts TCP but fails the TLS (or plaintext) handshake is named as
  // such, not as "no server answered".
  static std::unique_ptr<Connection> Open(const GlobalOptions& options);

  // A context carrying the token.
  std::unique_ptr<grpc::ClientContext> NewContext() const;

  weightgate::v1::ModelRegistry::Stub& registry() { return *registry_; }
  weightgate::v1::WeightStream::Stub& stream() { return *stream_; }
  const GlobalOptions& options() const { return options_; }

 private:
  GlobalOptions options_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<weightgate::v1::ModelRegistry::Stub> registry_;
  std::unique_ptr<weightgate::v1::WeightStream::Stub> stream_;
};

// Prints "weightgate: <what>: <status message>" and returns the exit code:
// common::kExitUsage for transport/usage problems (UNAVAILABLE, INVALID_ARGUMENT, ...).
int ReportRpcError(const std::string& what, const grpc::Status& status);

}  // namespace weightgate::cli

#endif  // WEIGHTGATE_CLIENT_CLI_CONNECTION_H_
