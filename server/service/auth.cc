#include "server/service/auth.h"

#include <openssl/crypto.h>
#include <openssl/sha.h>

#include <fstream>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"

namespace weightgate::service {
namespace {

std::array<unsigned char, 32> Digest(absl::string_view token) {
  std::array<unsigned char, 32> out;
  SHA256(reinterpret_cast<const unsigned char*>(token.data()), token.size(), out.data());
  return out;
}

// The common name of a verified client certificate, if any.
std::string CertificateName(const grpc::CallbackServerContext* context) {
  std::shared_ptr<const grpc::AuthContext> auth = context->auth_context();
  if (auth == nullptr || !auth->IsPeerAuthenticated()) return "";
  for (const grpc::string_ref& name : auth->FindPropertyValues("x509_common_name")) {
    return absl::StrCat("cn:", std::string(name.data(), name.size()));
  }
  return "";
}

}  // namespace

const char* RoleName(Role role) {
  switch (role) {
    case Role::kReader: return "reader";
    case Role::kWriter: return "writer";
    case Role::kAdmin: return "admin";
  }
  return "?";
}

absl::StatusOr<std::vector<Authorizer::Entry>> Authorizer::Parse(const std::string& tokens_file) {
  std::ifstream in(tokens_file);
  if (!in) return absl::InvalidArgumentError(absl::StrCat("cannot read tokens file ", tokens_file));
  std::vector<Entry> entries;
  std::string line;
  int line_no = 0;
  while (std::getline(in, line)) {
    ++line_no;
    absl::string_view text = absl::StripAsciiWhitespace(line);
    if (text.empty() || text[0] == '#') continue;
    std::vector<std::string> parts = absl::StrSplit(text, ' ', absl::SkipEmpty());
    Entry entry{Digest(parts[0]), Role::kWriter, ""};
    bool ok = parts.size() <= 3;
    if (ok && parts.size() >= 2) {
      if (parts[1] == "reader") {
        entry.role = Role::kReader;
      } else if (parts[1] == "admin") {
        entry.role = Role::kAdmin;
      } else {
        ok = parts[1] == "writer";
      }
    }
    if (!ok) {
      return absl::InvalidArgumentError(absl::StrCat(
          tokens_file, ":", line_no, ": expected 'TOKEN [reader|writer|admin] [NAME]'"));
    }
    entry.identity =
        parts.size() == 3
            ? parts[2]
            : absl::StrCat("token:", absl::BytesToHexString(absl::string_view(
                                         reinterpret_cast<const char*>(entry.digest.data()), 4)));
    entries.push_back(std::move(entry));
  }
  if (entries.empty()) {
    return absl::InvalidArgumentError(absl::StrCat("tokens file ", tokens_file, " has no tokens"));
  }
  return entries;
}

absl::StatusOr<std::unique_ptr<Authorizer>> Authorizer::Create(const std::string& tokens_file) {
  auto auth = std::make_unique<Authorizer>();
  auth->tokens_file_ = tokens_file;
  if (tokens_file.empty()) return auth;
  if (absl::Status s = auth->Reload(); !s.ok()) return s;
  return auth;
}

absl::Status Authorizer::Reload() {
  if (tokens_file_.empty()) return absl::OkStatus();
  absl::StatusOr<std::vector<Entry>> entries = Parse(tokens_file_);
  if (!entries.ok()) return entries.status();
  absl::MutexLock lock(&mu_);
  tokens_ = *std::move(entries);
  return absl::OkStatus();
}

grpc::Status Authorizer::Check(const grpc::CallbackServerContext* context, Role needed,
                               Caller* caller) const {
  Caller found;
  std::string cert = CertificateName(context);
  if (!cert.empty()) found.identity = cert;
  if (tokens_file_.empty()) {
    if (caller != nullptr) *caller = found;
    return grpc::Status::OK;
  }
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
  // Every entry is compared, in full, whatever matches: the time taken does
  // not depend on how much of a token an attacker guessed.
  std::array<unsigned char, 32> digest = Digest(value);
  const Entry* match = nullptr;
  absl::MutexLock lock(&mu_);
  for (const Entry& entry : tokens_) {
    if (CRYPTO_memcmp(entry.digest.data(), digest.data(), digest.size()) == 0) match = &entry;
  }
  if (match == nullptr) return grpc::Status(grpc::StatusCode::UNAUTHENTICATED, "unknown token");
  if (static_cast<int>(match->role) < static_cast<int>(needed)) {
    return grpc::Status(grpc::StatusCode::PERMISSION_DENIED,
                        absl::StrCat("token has role ", RoleName(match->role), "; this call needs ",
                                     RoleName(needed),
                                     match->role == Role::kReader ? " (token may only read)" : ""));
  }
  found.role = match->role;
  if (cert.empty()) found.identity = match->identity;
  if (caller != nullptr) *caller = found;
  return grpc::Status::OK;
}

}  // namespace weightgate::service
