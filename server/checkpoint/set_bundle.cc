#include "server/checkpoint/set_bundle.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <utility>
#include <vector>

#include "common/mapped_file.h"
#include "common/str_util.h"
#include "server/checkpoint/checkpoint_set.h"

namespace weightgate::checkpoint {

using common::Cat;

namespace {

absl::Status Bad(std::string_view what) {
  return absl::InvalidArgumentError(Cat("set bundle: ", what));
}

bool IsDir(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

// The directory a set path stands for.
std::string SetDirectory(const std::string& path) {
  if (IsDir(path)) return path;
  size_t slash = path.rfind('/');
  return slash == std::string::npos ? "." : path.substr(0, slash);
}

void PutLe(std::string* out, uint64_t v, int bytes) {
  for (int i = 0; i < bytes; ++i) out->push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}

uint64_t GetLe(std::string_view in, size_t off, int bytes) {
  uint64_t v = 0;
  for (int i = 0; i < bytes; ++i) v |= uint64_t{static_cast<unsigned char>(in[off + i])} << (8 * i);
  return v;
}

struct SetFile {
  std::string rel;
  uint64_t size = 0;
};

absl::StatusOr<std::vector<SetFile>> SetFiles(const std::string& dir) {
  std::vector<std::string> names;
  if (absl::Status s = ListFilesBelow(dir, "", 2, &names); !s.ok()) return s;
  std::sort(names.begin(), names.end());
  SetBundleLimits limits;
  if (names.size() > limits.max_files)
    return Bad(Cat(dir, ": more than ", limits.max_files, " files"));
  std::vector<SetFile> files;
  for (std::string& n : names) {
    if (absl::Status s = CheckBundlePath(n); !s.ok()) return s;
    struct stat st;
    if (::stat(JoinPath(dir, n).c_str(), &st) != 0) return Bad(Cat("cannot stat ", n));
    files.push_back({std::move(n), static_cast<uint64_t>(st.st_size)});
  }
  if (files.empty()) return Bad(Cat(dir, ": no files"));
  return files;
}

void RemoveTree(const std::string& path, int depth) {
  if (depth < 0) return;
  if (DIR* d = ::opendir(path.c_str())) {
    while (struct dirent* e = ::readdir(d)) {
      std::string name = e->d_name;
      if (name == "." || name == "..") continue;
      std::string child = JoinPath(path, name);
      struct stat st;
      if (::lstat(child.c_str(), &st) == 0 && S_ISDIR(st.st_mode)) {
        RemoveTree(child, depth - 1);
      } else {
        ::unlink(child.c_str());
      }
    }
    ::closedir(d);
  }
  ::rmdir(path.c_str());
}

}  // namespace

bool LooksLikeSetBundle(std::string_view data) {
  return data.size() >= kSetBundleMagic.size() &&
         data.substr(0, kSetBundleMagic.size()) == kSetBundleMagic;
}

// NAME_MAX of the filesystems a store lives on: a longer component would
// fail at open() with an I/O error instead of a reason.
constexpr size_t kMaxComponentBytes = 255;

absl::Status CheckBundlePath(std::string_view path, const SetBundleLimits& limits) {
  if (path.empty() || path.size() > limits.max_path_bytes) return Bad("bad path length");
  if (path.front() == '/') return Bad(Cat("absolute path ", path));
  uint32_t depth = 0;
  size_t start = 0;
  while (start <= path.size()) {
    size_t end = path.find('/', start);
    if (end == std::string_view::npos) end = path.size();
    std::string_view part = path.substr(start, end - start);
    if (part.empty() || part == "." || part == "..")
      return Bad(Cat("bad path component in ", path));
    if (part.size() > kMaxComponentBytes) {
      return Bad(Cat("path component longer than ", kMaxComponentBytes, " bytes in ", path));
    }
    for (char c : part) {
      if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f || c == '\\') {
        return Bad("control character or backslash in a path");
      }
    }
    if (++depth > limits.max_depth) return Bad(Cat("path too deep: ", path));
    start = end + 1;
  }
  return absl::OkStatus();
}

absl::StatusOr<uint64_t> SetBundleSize(const std::string& path) {
  absl::StatusOr<std::vector<SetFile>> files = SetFiles(SetDirectory(path));
  if (!files.ok()) return files.status();
  uint64_t n = kSetBundleMagic.size() + 4;
  for (const SetFile& f : *files) n += 2 + f.rel.size() + 8 + f.size;
  return n;
}

absl::Status StreamSetBundle(const std::string& path, size_t piece_bytes,
                             const std::function<bool(std::string_view)>& emit) {
  const std::string dir = SetDirectory(path);
  absl::StatusOr<std::vector<SetFile>> files = SetFiles(dir);
  if (!files.ok()) return files.status();
  if (piece_bytes < 64) piece_bytes = 64;
  std::string buf(kSetBundleMagic);
  PutLe(&buf, files->size(), 4);
  auto flush = [&](bool all) {
    while (buf.size() >= piece_bytes || (all && !buf.empty())) {
      size_t n = std::min(buf.size(), piece_bytes);
      if (!emit(std::string_view(buf).substr(0, n))) return false;
      buf.erase(0, n);
    }
    return true;
  };
  for (const SetFile& f : *files) {
    PutLe(&buf, f.rel.size(), 2);
    buf += f.rel;
    PutLe(&buf, f.size, 8);
    int fd = ::open(JoinPath(dir, f.rel).c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) return Bad(Cat("cannot open ", f.rel));
    uint64_t left = f.size;
    while (left > 0) {
      size_t room = std::max<size_t>(piece_bytes - std::min(buf.size(), piece_bytes), 1);
      size_t old = buf.size();
      size_t want = static_cast<size_t>(std::min<uint64_t>(left, room));
      buf.resize(old + want);
      ssize_t n = ::read(fd, buf.data() + old, want);
      if (n < 0 && errno == EINTR) {
        buf.resize(old);
        continue;
      }
      if (n <= 0) {
        ::close(fd);
        return Bad(Cat(f.rel, " changed while it was sent"));
      }
      buf.resize(old + static_cast<size_t>(n));
      left -= static_cast<uint64_t>(n);
      if (!flush(false)) {
        ::close(fd);
        return absl::OkStatus();  // the receiver stopped; its status says why
      }
    }
    ::close(fd);
  }
  flush(true);
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<SetBundleUnpacker>> SetBundleUnpacker::Create(
    const std::string& dir, const SetBundleLimits& limits) {
  if (::mkdir(dir.c_str(), 0700) != 0) {
    return absl::InternalError(Cat("mkdir ", dir, ": ", std::strerror(errno)));
  }
  std::unique_ptr<SetBundleUnpacker> u(new SetBundleUnpacker(dir, limits));
  u->need_ = kSetBundleMagic.size();
  return u;
}

SetBundleUnpacker::~SetBundleUnpacker() {
  if (fd_ >= 0) ::close(fd_);
  RemoveTree(dir_, static_cast<int>(limits_.max_depth) + 1);
}

absl::Status SetBundleUnpacker::Fail(absl::Status status) {
  if (fd_ >= 0) ::close(fd_);
  fd_ = -1;
  status_ = status;
  return status;
}

absl::Status SetBundleUnpacker::Append(std::string_view bytes) {
  if (!status_.ok()) return status_;
  bytes_in_ += bytes.size();
  while (!bytes.empty()) {
    if (field_ == Field::kDone) {
      return Fail(Bad(Cat(bytes.size(), " bytes after the last file")));
    }
    if (field_ == Field::kData) {
      size_t n = static_cast<size_t>(std::min<uint64_t>(left_, bytes.size()));
      if (absl::Status s = WriteData(bytes.substr(0, n)); !s.ok()) return Fail(s);
      bytes.remove_prefix(n);
      left_ -= n;
      if (left_ == 0) {
        if (absl::Status s = CloseFile(); !s.ok()) return Fail(s);
      }
      continue;
    }
    // A header field: at most kMagic's 8 bytes or one capped path.
    size_t n = std::min(need_, bytes.size());
    pending_.append(bytes.data(), n);
    bytes.remove_prefix(n);
    need_ -= n;
    if (need_ == 0) {
      if (absl::Status s = TakeField(); !s.ok()) return Fail(s);
    }
  }
  return absl::OkStatus();
}

absl::Status SetBundleUnpacker::TakeField() {
  std::string field = std::move(pending_);
  pending_.clear();
  switch (field_) {
    case Field::kMagic:
      if (!LooksLikeSetBundle(field)) return Bad("bad magic");
      field_ = Field::kCount;
      need_ = 4;
      return absl::OkStatus();
    case Field::kCount:
      count_ = GetLe(field, 0, 4);
      if (count_ == 0 || count_ > limits_.max_files) return Bad(Cat("bad file count ", count_));
      field_ = Field::kPathLength;
      need_ = 2;
      return absl::OkStatus();
    case Field::kPathLength: {
      uint64_t len = GetLe(field, 0, 2);
      if (len == 0) return Bad("bad path length");
      if (len > limits_.max_path_bytes) return Bad("path too long");
      field_ = Field::kPath;
      need_ = static_cast<size_t>(len);
      return absl::OkStatus();
    }
    case Field::kPath:
      if (absl::Status s = CheckBundlePath(field, limits_); !s.ok()) return s;
      rel_ = std::move(field);
      field_ = Field::kSize;
      need_ = 8;
      return absl::OkStatus();
    case Field::kSize: {
      uint64_t size = GetLe(field, 0, 8);
      if (size > limits_.max_total_bytes - total_) return Bad("files exceed the total cap");
      total_ += size;
      announced_ = size;
      left_ = size;
      if (absl::Status s = OpenFile(); !s.ok()) return s;
      field_ = Field::kData;
      return size == 0 ? CloseFile() : absl::OkStatus();
    }
    case Field::kData:
    case Field::kDone: break;
  }
  return absl::InternalError("set bundle: no header field expected");
}

absl::Status SetBundleUnpacker::OpenFile() {
  // Parent directories, one checked component at a time.
  for (size_t slash = rel_.find('/'); slash != std::string::npos;
       slash = rel_.find('/', slash + 1)) {
    std::string parent = JoinPath(dir_, rel_.substr(0, slash));
    if (::mkdir(parent.c_str(), 0700) != 0 && errno != EEXIST) {
      return errno == ENOTDIR
                 ? Bad(Cat("path ", rel_, " runs through a file"))
                 : absl::InternalError(Cat("mkdir ", parent, ": ", std::strerror(errno)));
    }
  }
  std::string target = JoinPath(dir_, rel_);
  fd_ = ::open(target.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
  if (fd_ < 0) {
    if (errno == EEXIST) return Bad(Cat("duplicate file ", rel_));
    if (errno == ENOTDIR) return Bad(Cat("path ", rel_, " runs through a file"));
    return absl::InternalError(Cat("create ", rel_, ": ", std::strerror(errno)));
  }
  return absl::OkStatus();
}

absl::Status SetBundleUnpacker::WriteData(std::string_view bytes) {
  while (!bytes.empty()) {
    ssize_t n = ::write(fd_, bytes.data(), std::min<size_t>(bytes.size(), size_t{1} << 26));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return absl::InternalError(Cat("write ", rel_, ": ", std::strerror(errno)));
    bytes.remove_prefix(static_cast<size_t>(n));
    written_ += static_cast<uint64_t>(n);
  }
  return absl::OkStatus();
}

absl::Status SetBundleUnpacker::CloseFile() {
  int rc = ::close(fd_);
  fd_ = -1;
  if (rc != 0) return absl::InternalError(Cat("close ", rel_, ": ", std::strerror(errno)));
  ++done_;
  field_ = done_ == count_ ? Field::kDone : Field::kPathLength;
  need_ = field_ == Field::kDone ? 0 : 2;
  return absl::OkStatus();
}

absl::Status SetBundleUnpacker::Finish() {
  if (!status_.ok()) return status_;
  switch (field_) {
    case Field::kDone: return absl::OkStatus();
    case Field::kData:
      return Fail(Bad(Cat(rel_, ": announced ", announced_, " bytes, fewer follow")));
    default: break;
  }
  static constexpr const char* kWhat[] = {"magic", "file count", "path length", "path",
                                          "file size"};
  return Fail(Bad(Cat("truncated ", kWhat[static_cast<int>(field_)])));
}

absl::StatusOr<std::unique_ptr<UnpackedSet>> UnpackedSet::Open(const std::string& path,
                                                               const SetBundleLimits& limits) {
  std::unique_ptr<UnpackedSet> set(new UnpackedSet());
  set->path_ = path;
  if (IsDir(path)) return set;
  absl::StatusOr<std::shared_ptr<const common::MappedFile>> file = common::MappedFile::Open(path);
  if (!file.ok() || !LooksLikeSetBundle((*file)->data())) return set;
  absl::StatusOr<std::unique_ptr<SetBundleUnpacker>> unpacker =
      SetBundleUnpacker::Create(path + ".set", limits);
  if (!unpacker.ok()) return unpacker.status();
  if (absl::Status s = (*unpacker)->Append((*file)->data()); !s.ok()) return s;
  if (absl::Status s = (*unpacker)->Finish(); !s.ok()) return s;
  set->unpacked_ = *std::move(unpacker);
  set->path_ = set->unpacked_->dir();
  return set;
}

UnpackedSet::~UnpackedSet() = default;

}  // namespace weightgate::checkpoint
