#include "server/checkpoint/set_builder.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <utility>

#include "common/str_util.h"

namespace weightgate::checkpoint {

using common::Cat;
namespace {

// Assembled tensors start on this boundary in the scratch file, as stored
// tensors do in torch zips, so views over them are aligned for any dtype.
constexpr uint64_t kScratchAlign = 64;

std::string ScratchDir() {
  const char* dir = std::getenv("TMPDIR");
  return dir != nullptr && *dir != '\0' ? dir : "/tmp";
}

absl::Status WriteAll(int fd, std::string_view bytes) {
  while (!bytes.empty()) {
    ssize_t n = ::write(fd, bytes.data(), bytes.size());
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return absl::InternalError(Cat("scratch file: ", std::strerror(errno)));
    bytes.remove_prefix(static_cast<size_t>(n));
  }
  return absl::OkStatus();
}

}  // namespace

void CopyStridedInto(const TensorRecord& src, std::string_view src_bytes,
                     const std::vector<int64_t>& offsets, const std::vector<int64_t>& full,
                     char* dst) {
  const size_t item = ItemSize(src.dtype);
  const size_t nd = full.size();
  if (nd == 0) {
    std::memcpy(dst, src_bytes.data(), item);
    return;
  }
  std::vector<int64_t> dst_strides(nd, 1);
  for (size_t d = nd; d > 1; --d) dst_strides[d - 2] = dst_strides[d - 1] * full[d - 1];
  for (int64_t s : src.shape) {
    if (s == 0) return;
  }
  std::vector<int64_t> idx(nd, 0);
  const int64_t inner = src.shape[nd - 1];
  while (true) {
    int64_t s_off = 0;
    int64_t d_off = 0;
    for (size_t d = 0; d + 1 < nd; ++d) {
      s_off += idx[d] * src.strides[d];
      d_off += (offsets[d] + idx[d]) * dst_strides[d];
    }
    d_off += offsets[nd - 1];
    if (src.strides[nd - 1] == 1) {
      std::memcpy(dst + d_off * item, src_bytes.data() + s_off * item, inner * item);
    } else {
      for (int64_t k = 0; k < inner; ++k) {
        std::memcpy(dst + (d_off + k) * item,
                    src_bytes.data() + (s_off + k * src.strides[nd - 1]) * item, item);
      }
    }
    size_t d = nd - 1;
    while (d > 0) {
      --d;
      if (++idx[d] < src.shape[d]) break;
      idx[d] = 0;
      if (d == 0) return;
    }
    if (nd == 1) return;
  }
}

SetBuilder::SetBuilder(std::string layout) {
  root_ = out_.arena->New(Value::Kind::kDict);
  out_.root = root_;
  out_.metadata.push_back(Cat("set_layout=", layout));
}

SetBuilder::~SetBuilder() {
  if (scratch_fd_ >= 0) ::close(scratch_fd_);
  if (!scratch_path_.empty()) ::unlink(scratch_path_.c_str());
}

int SetBuilder::FileIndex(const std::shared_ptr<const common::MappedFile>& file) {
  auto it = file_index_.find(file.get());
  if (it != file_index_.end()) return it->second;
  int index;
  if (out_.file == nullptr) {
    out_.file = file;
    index = 0;
  } else {
    out_.more_files.push_back(file);
    index = static_cast<int>(out_.more_files.size());
  }
  file_index_.emplace(file.get(), index);
  return index;
}

absl::Status SetBuilder::AddName(const std::string& name, std::string_view origin) {
  auto [it, inserted] = origin_.emplace(name, std::string(origin));
  if (!inserted) {
    return absl::InvalidArgumentError(
        Cat("duplicate tensor ", name, " (in ", it->second, " and ", origin, ")"));
  }
  return absl::OkStatus();
}

void SetBuilder::Append(const std::string& name, const Value* tensor) {
  Value* key = out_.arena->New(Value::Kind::kString);
  key->str = name;
  root_->items.push_back(key);
  root_->items.push_back(tensor);
  values_[name] = tensor;
}

absl::Status SetBuilder::AddAlias(const std::string& name, const std::string& target,
                                  std::string_view origin) {
  auto it = values_.find(target);
  if (it == values_.end()) {
    return absl::InvalidArgumentError(
        Cat(origin, ": ", name, " shares ", target, ", which is absent"));
  }
  const Value* tensor = it->second;
  if (absl::Status s = AddName(name, origin); !s.ok()) return s;
  Append(name, tensor);
  return absl::OkStatus();
}

void SetBuilder::MergeGlobals(const Checkpoint& part) {
  auto merge = [](const std::vector<std::string>& from, std::vector<std::string>* to) {
    for (const std::string& g : from) {
      bool seen = false;
      for (const std::string& have : *to) seen = seen || have == g;
      if (!seen) to->push_back(g);
    }
  };
  merge(part.opaque_globals, &out_.opaque_globals);
  merge(part.unsafe_globals, &out_.unsafe_globals);
}

void SetBuilder::AddGlobals(const Checkpoint& part) { MergeGlobals(part); }

absl::Status SetBuilder::AddPart(Checkpoint part, const std::vector<NamedTensor>& tensors,
                                 std::string_view origin) {
  if (!have_format_) {
    out_.format = part.format;
    out_.archive_prefix = part.archive_prefix;
    have_format_ = true;
  }
  MergeGlobals(part);
  std::vector<int> remap(part.storages.size(), -1);
  std::vector<int> inflated_remap(part.inflated.size(), -1);
  for (const NamedTensor& t : tensors) {
    if (absl::Status s = AddName(t.name, origin); !s.ok()) return s;
    TensorRecord rec = *t.tensor;
    if (rec.storage_index >= 0) {
      if (static_cast<size_t>(rec.storage_index) >= part.storages.size()) {
        return absl::InvalidArgumentError(Cat(origin, ": tensor ", t.name, " has no storage"));
      }
      int& mapped = remap[static_cast<size_t>(rec.storage_index)];
      if (mapped < 0) {
        StorageRecord s = part.storages[static_cast<size_t>(rec.storage_index)];
        if (s.inflated_index >= 0) {
          if (static_cast<size_t>(s.inflated_index) >= part.inflated.size()) {
            return absl::InvalidArgumentError(Cat(origin, ": bad inflated storage"));
          }
          int& inf = inflated_remap[static_cast<size_t>(s.inflated_index)];
          if (inf < 0) {
            out_.inflated.push_back(
                std::move(part.inflated[static_cast<size_t>(s.inflated_index)]));
            inf = static_cast<int>(out_.inflated.size()) - 1;
          }
          s.inflated_index = inf;
        } else {
          std::shared_ptr<const common::MappedFile> f;
          if (s.file_index == 0) {
            f = part.file;
          } else if (s.file_index > 0 &&
                     static_cast<size_t>(s.file_index) <= part.more_files.size()) {
            f = part.more_files[static_cast<size_t>(s.file_index) - 1];
          }
          if (f == nullptr)
            return absl::InvalidArgumentError(Cat(origin, ": storage without file"));
          s.file_index = FileIndex(f);
        }
        out_.storages.push_back(std::move(s));
        mapped = static_cast<int>(out_.storages.size()) - 1;
      }
      rec.storage_index = mapped;
    }
    Value* v = out_.arena->New(Value::Kind::kTensor);
    v->tensor = std::move(rec);
    Append(t.name, v);
  }
  return absl::OkStatus();
}

absl::Status SetBuilder::AddAssembled(const std::string& name, DType dtype,
                                      const std::vector<int64_t>& shape, std::string_view bytes,
                                      std::string_view origin) {
  if (absl::Status s = AddName(name, origin); !s.ok()) return s;
  if (scratch_fd_ < 0) {
    std::string path = ScratchDir() + "/weightgate-set-XXXXXX";
    int fd = ::mkstemp(path.data());
    if (fd < 0) return absl::InternalError(Cat("scratch file: ", std::strerror(errno)));
    scratch_fd_ = fd;
    scratch_path_ = std::move(path);
  }
  uint64_t pad = (kScratchAlign - scratch_size_ % kScratchAlign) % kScratchAlign;
  if (pad > 0) {
    if (absl::Status s = WriteAll(scratch_fd_, std::string(pad, '\0')); !s.ok()) return s;
    scratch_size_ += pad;
  }
  if (absl::Status s = WriteAll(scratch_fd_, bytes); !s.ok()) return s;
  StorageRecord storage;
  storage.dtype = dtype;
  storage.key = name;
  storage.file_offset = scratch_size_;
  storage.nbytes = bytes.size();
  scratch_size_ += bytes.size();
  out_.storages.push_back(std::move(storage));
  scratch_storages_.push_back(out_.storages.size() - 1);

  TensorRecord rec;
  rec.dtype = dtype;
  rec.shape = shape;
  rec.strides.assign(shape.size(), 1);
  for (size_t d = shape.size(); d > 1; --d) rec.strides[d - 2] = rec.strides[d - 1] * shape[d - 1];
  rec.storage_index = static_cast<int>(out_.storages.size()) - 1;
  Value* v = out_.arena->New(Value::Kind::kTensor);
  v->tensor = std::move(rec);
  Append(name, v);
  return absl::OkStatus();
}

absl::StatusOr<Checkpoint> SetBuilder::Finish() {
  if (scratch_fd_ >= 0) {
    ::close(scratch_fd_);
    scratch_fd_ = -1;
    absl::StatusOr<std::shared_ptr<const common::MappedFile>> mapped =
        common::MappedFile::Open(scratch_path_);
    ::unlink(scratch_path_.c_str());
    scratch_path_.clear();
    if (!mapped.ok()) return mapped.status();
    int index = FileIndex(*mapped);
    for (size_t s : scratch_storages_) out_.storages[s].file_index = index;
  }
  if (origin_.empty()) return absl::InvalidArgumentError("checkpoint set holds no tensors");
  return std::move(out_);
}

}  // namespace weightgate::checkpoint
