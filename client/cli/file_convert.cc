#include "client/cli/file_convert.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <memory>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "server/checkpoint/checkpoint.h"
#include "server/checkpoint/safetensors.h"
#include "server/checkpoint/torch_writer.h"

namespace weightgate::cli {
namespace {

// The file's tensors, tie records included (each a view of its partner's
// storage), in the reader's order: header tensors, then tied names.
struct Opened {
  checkpoint::Checkpoint ckpt;
  std::vector<checkpoint::NamedTensor> tensors;
};

absl::StatusOr<Opened> Open(const std::string& in) {
  absl::StatusOr<std::shared_ptr<const common::MappedFile>> file = common::MappedFile::Open(in);
  if (!file.ok()) return file.status();
  absl::StatusOr<checkpoint::Checkpoint> ckpt = checkpoint::ReadSafetensors(*file, {});
  if (!ckpt.ok()) return ckpt.status();
  Opened o{*std::move(ckpt), {}};
  o.tensors = checkpoint::FlattenTensors(o.ckpt.root);
  return o;
}

bool IsTieRecord(const std::string& metadata_entry) {
  constexpr std::string_view kPrefix = checkpoint::kSafetensorsTiePrefix;
  return std::string_view(metadata_entry).substr(0, kPrefix.size()) == kPrefix;
}

absl::Status RenameInto(const std::string& from, const std::string& to) {
  if (::rename(from.c_str(), to.c_str()) != 0) {
    absl::Status s = absl::ErrnoToStatus(errno, absl::StrCat("rename ", from, " -> ", to));
    std::remove(from.c_str());
    return s;
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status SafetensorsToTorch(const std::string& in, const std::string& out, const TieMap& ties) {
  absl::StatusOr<Opened> opened = Open(in);
  if (!opened.ok()) return opened.status();
  const std::vector<checkpoint::NamedTensor>& tensors = opened->tensors;
  std::vector<checkpoint::TorchZipEntry> entries;
  std::map<int, int> first_of_storage;  // storage index -> entry holding it
  std::map<std::string, int> index_of;
  for (const checkpoint::NamedTensor& t : tensors) {
    const int k = static_cast<int>(entries.size());
    checkpoint::TorchZipEntry e{t.name, t.tensor->dtype, t.tensor->shape};
    auto [first, inserted] = first_of_storage.emplace(t.tensor->storage_index, k);
    if (!inserted) {
      e.tied_to = first->second;  // a tie record: its partner's storage
    } else if (auto tie = ties.find(t.name); tie != ties.end()) {
      auto partner = index_of.find(tie->second);
      if (partner != index_of.end() && entries[partner->second].tied_to < 0 &&
          entries[partner->second].dtype == e.dtype && entries[partner->second].shape == e.shape) {
        e.tied_to = partner->second;  // an older blob's second copy
      }
    }
    index_of.emplace(t.name, k);
    entries.push_back(std::move(e));
  }
  std::string tmp = out + ".tmp";
  auto writer = checkpoint::TorchZipWriter::Create(tmp, entries);
  if (!writer.ok()) return writer.status();
  for (size_t k = 0; k < tensors.size(); ++k) {
    if (entries[k].tied_to >= 0) continue;  // its partner's storage holds the bytes
    const checkpoint::TensorRecord& t = *tensors[k].tensor;
    std::string_view bytes = opened->ckpt.TensorStorageBytes(t).substr(0, t.nbytes());
    if (absl::Status s = (*writer)->Append(bytes); !s.ok()) return s;
  }
  if (absl::Status s = (*writer)->Finish(); !s.ok()) return s;
  return RenameInto(tmp, out);
}

absl::StatusOr<bool> HasTieRecords(const std::string& in) {
  absl::StatusOr<Opened> opened = Open(in);
  if (!opened.ok()) return opened.status();
  for (const std::string& m : opened->ckpt.metadata) {
    if (IsTieRecord(m)) return true;
  }
  return false;
}

absl::Status ExpandTies(const std::string& in, const std::string& out) {
  absl::StatusOr<Opened> opened = Open(in);
  if (!opened.ok()) return opened.status();
  std::vector<checkpoint::SafetensorsEntry> entries;
  for (const checkpoint::NamedTensor& t : opened->tensors) {
    entries.push_back({t.name, t.tensor->dtype, t.tensor->shape});
  }
  std::vector<std::pair<std::string, std::string>> metadata;
  for (const std::string& m : opened->ckpt.metadata) {
    if (IsTieRecord(m)) continue;
    size_t eq = m.find('=');  // the reader's "key=value"; the store's keys hold no '='
    metadata.emplace_back(m.substr(0, eq), eq == std::string::npos ? "" : m.substr(eq + 1));
  }
  const std::string tmp = out + ".expand.tmp";
  absl::StatusOr<std::unique_ptr<checkpoint::SafetensorsWriter>> writer =
      checkpoint::SafetensorsWriter::Create(tmp, std::move(entries), std::move(metadata));
  if (!writer.ok()) {
    std::remove(tmp.c_str());
    return writer.status();
  }
  for (const checkpoint::NamedTensor& t : opened->tensors) {
    std::string_view bytes =
        opened->ckpt.TensorStorageBytes(*t.tensor).substr(0, t.tensor->nbytes());
    if (absl::Status s = (*writer)->Append(bytes); !s.ok()) {
      std::remove(tmp.c_str());
      return s;
    }
  }
  if (absl::Status s = (*writer)->Finish(); !s.ok()) {
    std::remove(tmp.c_str());
    return s;
  }
  return RenameInto(tmp, out);
}

}  // namespace weightgate::cli
