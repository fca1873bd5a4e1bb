// Authorizer checks bearer tokens ("authorization: Bearer <token>") against
// a token file. Readers may call WeightStream; writers may call everything.
// With no token file every caller is a writer (loopback default).
//
// This class is thread-safe (immutable after Create).
#ifndef WEIGHTGATE_SERVER_SERVICE_AUTH_H_
#define WEIGHTGATE_SERVER_SERVICE_AUTH_H_

#include <map>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "grpcpp/server_context.h"

namespace weightgate::service {

enum class Role { kReader, kWriter };

class Authorizer final {
 public:
  // `tokens_file`: one token per line, optionally followed by a space and
  // "reader" or "writer" (default writer); '#' starts a comment. Empty path:
  // authentication off.
  static absl::StatusOr<std::unique_ptr<Authorizer>> Create(const std::string& tokens_file);

  bool enabled() const { return !tokens_.empty(); }
  grpc::Status Check(const grpc::CallbackServerContext* context, Role needed) const;

 private:
  std::map<std::string, Role> tokens_;
};

}  // namespace weightgate::service

#endif  // WEIGHTGATE_SERVER_SERVICE_AUTH_H_
