// Authorizer checks bearer tokens ("authorization: Bearer <token>") against
// a token file and names the caller. Roles nest: a reader may fetch, watch
// and list; a writer may also upload, validate and move aliases; an admin
// may also register models (and so set their policy) and delete. With no
// token file every caller is an admin (the loopback default).
//
// Tokens are compared in constant time (every entry is compared in full,
// through fixed-length digests), and the file is re-read by Reload() (the
// server calls it on SIGHUP); a file that fails to parse keeps the old set.
//
// This class is thread-safe.
#ifndef WEIGHTGATE_SERVER_SERVICE_AUTH_H_
#define WEIGHTGATE_SERVER_SERVICE_AUTH_H_

#include <array>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "grpcpp/server_context.h"

namespace weightgate::service {

enum class Role { kReader = 0, kWriter = 1, kAdmin = 2 };

// "reader", "writer", "admin".
const char* RoleName(Role role);

// Who is calling, as far as the server could tell.
struct Caller {
  Role role = Role::kAdmin;
  // The token's name from the file, "token:<sha256 prefix>", the client
  // certificate's common name, or "anonymous".
  std::string identity = "anonymous";
};

class Authorizer final {
 public:
  // `tokens_file`: one token per line, "TOKEN [reader|writer|admin] [NAME]"
  // (role default writer); '#' starts a comment. Empty path: authentication
  // off.
  static absl::StatusOr<std::unique_ptr<Authorizer>> Create(const std::string& tokens_file);

  // Re-reads the token file. On error the current tokens stay in force.
  absl::Status Reload() ABSL_LOCKS_EXCLUDED(mu_);

  bool enabled() const { return !tokens_file_.empty(); }

  // OK with the caller filled in when the caller holds at least `needed`;
  // UNAUTHENTICATED or PERMISSION_DENIED otherwise.
  grpc::Status Check(const grpc::CallbackServerContext* context, Role needed,
                     Caller* caller = nullptr) const ABSL_LOCKS_EXCLUDED(mu_);

 private:
  struct Entry {
    std::array<unsigned char, 32> digest;  // sha256 of the token
    Role role;
    std::string identity;
  };
  static absl::StatusOr<std::vector<Entry>> Parse(const std::string& tokens_file);

  std::string tokens_file_;
  mutable absl::Mutex mu_;
  std::vector<Entry> tokens_ ABSL_GUARDED_BY(mu_);
};

}  // namespace weightgate::service

#endif  // WEIGHTGATE_SERVER_SERVICE_AUTH_H_
