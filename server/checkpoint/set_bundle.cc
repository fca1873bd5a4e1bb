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

absl::Status Unpack(std::string_view data, const std::string& dir, const SetBundleLimits& limits) {
  size_t off = kSetBundleMagic.size();
  if (data.size() - off < 4) return Bad("truncated file count");
  uint64_t count = GetLe(data, off, 4);
  off += 4;
  if (count == 0 || count > limits.max_files) return Bad(Cat("bad file count ", count));
  uint64_t total = 0;
  for (uint64_t i = 0; i < count; ++i) {
    if (data.size() - off < 2) return Bad("truncated path length");
    uint64_t len = GetLe(data, off, 2);
    off += 2;
    if (len > limits.max_path_bytes) return Bad("path too long");
    if (len > data.size() - off) return Bad("truncated path");
    std::string rel(data.substr(off, len));
    off += len;
    if (absl::Status s = CheckBundlePath(rel, limits); !s.ok()) return s;
    if (data.size() - off < 8) return Bad("truncated file size");
    uint64_t size = GetLe(data, off, 8);
    off += 8;
    if (size > limits.max_total_bytes - total) return Bad("files exceed the total cap");
    if (size > data.size() - off)
      return Bad(Cat(rel, ": announced ", size, " bytes, fewer follow"));
    total += size;
    // Parent directories, one checked component at a time.
    for (size_t slash = rel.find('/'); slash != std::string::npos;
         slash = rel.find('/', slash + 1)) {
      std::string parent = JoinPath(dir, rel.substr(0, slash));
      if (::mkdir(parent.c_str(), 0700) != 0 && errno != EEXIST) {
        return absl::InternalError(Cat("mkdir ", parent, ": ", std::strerror(errno)));
      }
    }
    std::string target = JoinPath(dir, rel);
    int fd = ::open(target.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (fd < 0) {
      return errno == EEXIST ? Bad(Cat("duplicate file ", rel))
                             : absl::InternalError(Cat("create ", rel, ": ", std::strerror(errno)));
    }
    std::string_view bytes = data.substr(off, size);
    while (!bytes.empty()) {
      ssize_t n = ::write(fd, bytes.data(), std::min<size_t>(bytes.size(), size_t{1} << 26));
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) {
        ::close(fd);
        return absl::InternalError(Cat("write ", rel, ": ", std::strerror(errno)));
      }
      bytes.remove_prefix(static_cast<size_t>(n));
    }
    ::close(fd);
    off += size;
  }
  if (off != data.size()) return Bad(Cat(data.size() - off, " bytes after the last file"));
  return absl::OkStatus();
}

}  // namespace

bool LooksLikeSetBundle(std::string_view data) {
  return data.size() >= kSetBundleMagic.size() &&
         data.substr(0, kSetBundleMagic.size()) == kSetBundleMagic;
}

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

absl::StatusOr<std::unique_ptr<UnpackedSet>> UnpackedSet::Open(const std::string& path,
                                                               const SetBundleLimits& limits) {
  std::unique_ptr<UnpackedSet> set(new UnpackedSet());
  set->path_ = path;
  if (IsDir(path)) return set;
  absl::StatusOr<std::shared_ptr<const common::MappedFile>> file = common::MappedFile::Open(path);
  if (!file.ok() || !LooksLikeSetBundle((*file)->data())) return set;
  std::string dir = path + ".set";
  if (::mkdir(dir.c_str(), 0700) != 0) {
    return absl::InternalError(Cat("mkdir ", dir, ": ", std::strerror(errno)));
  }
  set->dir_ = dir;  // removed by the destructor from here on
  if (absl::Status s = Unpack((*file)->data(), dir, limits); !s.ok()) return s;
  set->path_ = dir;
  return set;
}

UnpackedSet::~UnpackedSet() {
  if (!dir_.empty()) RemoveTree(dir_, static_cast<int>(SetBundleLimits().max_depth) + 1);
}

}  // namespace weightgate::checkpoint
