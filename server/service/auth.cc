#include "server/service/auth.h"

#include <fstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"

namespace weightgate::service {

absl::StatusOr<std::unique_ptr<Authorizer>> Authorizer::Create(const std::string& tokens_file) {
  auto auth = std::make_unique<Authorizer>();
  if (tokens_file.empty()) return auth;
  std::ifstream in(tokens_file);
  if (!in) return absl::InvalidArgumentError(absl::StrCat("cannot read tokens file ", tokens_file));
  std::string line;
  int line_no = 0;
  while (std::getline(in, line)) {
    ++line_no;
    absl::string_view text = absl::StripAsciiWhitespace(line);
    if (text.empty() || text[0] == '#') continue;
    std::vector<std::string> parts = absl::StrSplit(text, ' ', absl::SkipEmpty());
    Role role = Role::kWriter;
    if (parts.size() == 2 && parts[1] == "reader") {
      role = Role::kReader;
    } else if (parts.size() != 1 && !(parts.size() == 2 && parts[1] == "writer")) {
      return absl::InvalidArgumentError(
          absl::StrCat(tokens_file, ":", line_no, ": expected 'TOKEN [reader|writer]'"));
    }
    auth->tokens_[parts[0]] = role;
  }
  if (auth->tokens_.empty()) {
    return absl::InvalidArgumentError(absl::StrCat("tokens file ", tokens_file, " has no tokens"));
  }
  return auth;
}

grpc::Status Authorizer::Check(const grpc::CallbackServerContext* context, Role needed) const {
  if (tokens_.empty()) return grpc::Status::OK;
  const auto& metadata = context->client_metadata();
  auto it = metadata.find("authorization");
  if (it == metadata.end()) {
    return grpc::Status(grpc::StatusCode::UNAUTHENTICATED,
                        "missing 'authorization: Bearer <token>'");
  }
  absl::string_view value(it->second.data(), it->second.size());
  if (!absl::ConsumePrefix(&value, "Bearer ")) {
    return grpc::Status(grpc::StatusCode::UNAUTHENTICATED,
                        "authorization must be 'Bearer <token>'");
  }
  auto token = tokens_.find(std::string(value));
  if (token == tokens_.end()) {
    return grpc::Status(grpc::StatusCode::UNAUTHENTICATED, "unknown token");
  }
  if (needed == Role::kWriter && token->second != Role::kWriter) {
    return grpc::Status(grpc::StatusCode::PERMISSION_DENIED, "token may only read weights");
  }
  return grpc::Status::OK;
}

}  // namespace weightgate::service
