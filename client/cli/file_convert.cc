#include "client/cli/file_convert.h"

#include <fcntl.h>
#include <openssl/evp.h>
#include <unistd.h>

#include <cerrno>
#include <memory>

#include "absl/strings/str_cat.h"
#include "server/checkpoint/checkpoint.h"
#include "server/checkpoint/safetensors.h"
#include "server/checkpoint/torch_writer.h"

namespace weightgate::cli {

absl::StatusOr<std::string> Sha256File(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return absl::NotFoundError(absl::StrCat("cannot open ", path));
  std::unique_ptr<EVP_MD_CTX, decltype(&EVP_MD_CTX_free)> ctx(EVP_MD_CTX_new(), EVP_MD_CTX_free);
  EVP_DigestInit_ex(ctx.get(), EVP_sha256(), nullptr);
  std::string buffer(1 << 20, '\0');
  for (;;) {
    ssize_t n = ::read(fd, buffer.data(), buffer.size());
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      ::close(fd);
      return absl::InternalError(absl::StrCat("read ", path));
    }
    if (n == 0) break;
    EVP_DigestUpdate(ctx.get(), buffer.data(), static_cast<size_t>(n));
  }
  ::close(fd);
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  EVP_DigestFinal_ex(ctx.get(), digest, &len);
  static constexpr char kHex[] = "0123456789abcdef";
  std::string hex;
  for (unsigned int i = 0; i < len; ++i) {
    hex.push_back(kHex[digest[i] >> 4]);
    hex.push_back(kHex[digest[i] & 15]);
  }
  return hex;
}

absl::Status SafetensorsToTorch(const std::string& in, const std::string& out) {
  absl::StatusOr<std::shared_ptr<const checkpoint::MappedFile>> file =
      checkpoint::MappedFile::Open(in);
  if (!file.ok()) return file.status();
  absl::StatusOr<checkpoint::Checkpoint> ckpt = checkpoint::ReadSafetensors(*file, {});
  if (!ckpt.ok()) return ckpt.status();
  std::vector<checkpoint::NamedTensor> tensors = checkpoint::FlattenTensors(ckpt->root);
  std::vector<checkpoint::TorchZipEntry> entries;
  for (const checkpoint::NamedTensor& t : tensors) {
    entries.push_back({t.name, t.tensor->dtype, t.tensor->shape});
  }
  std::string tmp = out + ".tmp";
  auto writer = checkpoint::TorchZipWriter::Create(tmp, entries);
  if (!writer.ok()) return writer.status();
  for (const checkpoint::NamedTensor& t : tensors) {
    std::string_view bytes = ckpt->TensorStorageBytes(*t.tensor).substr(0, t.tensor->nbytes());
    if (absl::Status s = (*writer)->Append(bytes); !s.ok()) return s;
  }
  if (absl::Status s = (*writer)->Finish(); !s.ok()) return s;
  if (::rename(tmp.c_str(), out.c_str()) != 0) {
    return absl::InternalError(absl::StrCat("rename ", tmp, " -> ", out));
  }
  return absl::OkStatus();
}

}  // namespace weightgate::cli
