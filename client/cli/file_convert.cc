#include "client/cli/file_convert.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <memory>

#include "absl/strings/str_cat.h"
#include "server/checkpoint/checkpoint.h"
#include "server/checkpoint/safetensors.h"
#include "server/checkpoint/torch_writer.h"

namespace weightgate::cli {

absl::Status SafetensorsToTorch(const std::string& in, const std::string& out) {
  absl::StatusOr<std::shared_ptr<const common::MappedFile>> file = common::MappedFile::Open(in);
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
