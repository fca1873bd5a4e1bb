// SHA-256 as lower-case hex, the name of every stored blob and the identity
// of every uploaded checkpoint. One implementation (OpenSSL's) for the store,
// the normaliser and the CLI.
#ifndef WEIGHTGATE_COMMON_SHA256_H_
#define WEIGHTGATE_COMMON_SHA256_H_

#include <memory>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"

namespace weightgate::common {

// Incremental hashing of a byte stream.
class Sha256 final {
 public:
  Sha256();
  ~Sha256();
  Sha256(const Sha256&) = delete;
  Sha256& operator=(const Sha256&) = delete;

  void Update(std::string_view bytes);
  // The digest of everything updated so far; the object is spent afterwards.
  std::string HexDigest();

 private:
  struct Ctx;
  std::unique_ptr<Ctx> ctx_;
};

// Hex sha256 of a file's bytes, read in 4 MiB pieces.
absl::StatusOr<std::string> Sha256File(const std::string& path);

// Hex sha256 of `bytes`.
std::string Sha256Hex(std::string_view bytes);

// True when `s` is 64 lower-case hex digits (what HexDigest returns): the
// only names a blob may have.
bool IsSha256Hex(std::string_view s);

}  // namespace weightgate::common

#endif  // WEIGHTGATE_COMMON_SHA256_H_
