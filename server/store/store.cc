#include "server/store/store.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <csignal>
#include <cstring>
#include <random>
#include <set>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/file_util.h"
#include "common/model_ref.h"
#include "common/time_util.h"
#include "google/protobuf/util/json_util.h"

namespace weightgate::store {

using common::ListDir;

using common::NowMs;
using common::ParsedRef;
using common::ParseRef;
using common::ValidateModelId;

namespace {

using weightgate::v1::Model;
using weightgate::v1::Version;

absl::Status ErrnoStatus(const std::string& what) {
  return absl::InternalError(absl::StrCat(what, ": ", std::strerror(errno)));
}

absl::Status MakeDirs(const std::string& path) {
  std::string partial;
  for (absl::string_view part : absl::StrSplit(path, '/')) {
    if (partial.empty() && path[0] == '/') partial = "/";
    absl::StrAppend(&partial, part);
    if (!part.empty() && ::mkdir(partial.c_str(), 0755) != 0 && errno != EEXIST) {
      return ErrnoStatus(absl::StrCat("mkdir ", partial));
    }
    partial.push_back('/');
  }
  return absl::OkStatus();
}

absl::Status FsyncDir(const std::string& dir) {
  int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return ErrnoStatus(absl::StrCat("open ", dir));
  int rc = ::fsync(fd);
  ::close(fd);
  return rc == 0 ? absl::OkStatus() : ErrnoStatus(absl::StrCat("fsync ", dir));
}

std::string DirName(const std::string& path) {
  size_t slash = path.rfind('/');
  return slash == std::string::npos ? "." : path.substr(0, slash);
}

std::string RandomSuffix() {
  static thread_local std::mt19937_64 rng(std::random_device{}() ^ ::getpid());
  return absl::StrCat(::getpid(), ".", rng() % 1000000000);
}

// temp file + fsync + rename + fsync(dir): readers see the old or the new
// content, never a torn file, across a crash at any point.
absl::Status AtomicWrite(const std::string& tmp_dir, const std::string& path,
                         std::string_view content) {
  std::string tmp = absl::StrCat(tmp_dir, "/meta.", RandomSuffix(), ".tmp");
  // The staging directory is scratch: it is not fsynced when it loses the
  // temporary file, only the directory that gains `path` is.
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return ErrnoStatus(absl::StrCat("create ", tmp));
  size_t done = 0;
  while (done < content.size()) {
    ssize_t n = ::write(fd, content.data() + done, content.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      absl::Status s = ErrnoStatus(absl::StrCat("write ", tmp));
      ::close(fd);
      ::unlink(tmp.c_str());
      return s;
    }
    done += static_cast<size_t>(n);
  }
  if (::fsync(fd) != 0 || ::close(fd) != 0) {
    absl::Status s = ErrnoStatus(absl::StrCat("fsync ", tmp));
    ::unlink(tmp.c_str());
    return s;
  }
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    absl::Status s = ErrnoStatus(absl::StrCat("rename ", tmp, " -> ", path));
    ::unlink(tmp.c_str());
    return s;
  }
  return FsyncDir(DirName(path));
}

template <typename Message>
absl::StatusOr<Message> ReadJson(const std::string& path) {
  absl::StatusOr<std::string> text = common::ReadFile(path);
  if (!text.ok()) return text.status();
  Message message;
  google::protobuf::util::JsonParseOptions options;
  options.ignore_unknown_fields = true;  // newer servers may add fields
  auto status = google::protobuf::util::JsonStringToMessage(*text, &message, options);
  if (!status.ok()) {
    return absl::DataLossError(absl::StrCat("corrupt metadata ", path, ": ", status.ToString()));
  }
  return message;
}

template <typename Message>
absl::Status WriteJson(const std::string& tmp_dir, const std::string& path,
                       const Message& message) {
  std::string text;
  google::protobuf::util::JsonPrintOptions options;
  options.add_whitespace = true;
  options.preserve_proto_field_names = true;
  auto status = google::protobuf::util::MessageToJsonString(message, &text, options);
  if (!status.ok()) return absl::InternalError(status.ToString());
  return AtomicWrite(tmp_dir, path, text);
}

std::string HostName() {
  char host[256] = {0};
  if (::gethostname(host, sizeof(host) - 1) != 0 || host[0] == '\0') return "host";
  std::string name = host;
  for (char& c : name) {
    if (c == '-' || c == '/') c = '_';  // '-' separates the fields of a staging name
  }
  return name;
}

// Newest mtime of `path` and, for a directory, of its entries.
time_t NewestMtime(const std::string& path) {
  struct stat st;
  if (::lstat(path.c_str(), &st) != 0) return 0;
  time_t newest = st.st_mtime;
  if (S_ISDIR(st.st_mode)) {
    for (const std::string& name : ListDir(path)) {
      newest = std::max(newest, NewestMtime(absl::StrCat(path, "/", name)));
    }
  }
  return newest;
}

void RemoveTree(const std::string& path) {
  struct stat st;
  if (::lstat(path.c_str(), &st) != 0) return;
  if (S_ISDIR(st.st_mode)) {
    for (const std::string& name : ListDir(path)) RemoveTree(absl::StrCat(path, "/", name));
    ::rmdir(path.c_str());
  } else {
    ::unlink(path.c_str());
  }
}

// True when the staging entry `name` (under tmp/) belongs to no live
// process: a directory "<host>-<pid>-<rand>" of this host whose pid is gone,
// or anything (another host's directory, an old-layout file) in which
// nothing changed for `stale_seconds`. A live replica's files are never
// removed: its pid answers kill(0), or on another host its files are fresh.
bool StagingIsStale(const std::string& tmp, const std::string& name, const std::string& host,
                    int64_t stale_seconds) {
  std::vector<std::string> parts = absl::StrSplit(name, '-');
  int pid = 0;
  if (parts.size() == 3 && parts[0] == host && absl::SimpleAtoi(parts[1], &pid) && pid > 0) {
    if (pid == ::getpid()) return false;
    return ::kill(pid, 0) != 0 && errno == ESRCH;
  }
  return ::time(nullptr) - NewestMtime(absl::StrCat(tmp, "/", name)) > stale_seconds;
}

}  // namespace

// The store lock: this process's mutex, then flock() on <root>/LOCK across
// processes (each holder opens its own descriptor; closing releases it).
class ABSL_SCOPED_LOCKABLE Store::Lock final {
 public:
  explicit Lock(Store* store) ABSL_EXCLUSIVE_LOCK_FUNCTION(store->mu_) : store_(store) {
    store_->mu_.Lock();
    if (!store_->options_.use_flock) return;
    fd_ = ::open(absl::StrCat(store_->root_, "/LOCK").c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (fd_ < 0) {
      error_ = ErrnoStatus(absl::StrCat("open ", store_->root_, "/LOCK"));
      return;
    }
    while (::flock(fd_, LOCK_EX) != 0) {
      if (errno == EINTR) continue;
      // A filesystem without flock: link()-claimed version numbers still
      // never collide, so go on without the cross-process lock.
      break;
    }
  }
  ~Lock() ABSL_UNLOCK_FUNCTION() {
    if (fd_ >= 0) ::close(fd_);
    store_->mu_.Unlock();
  }
  const absl::Status& status() const { return error_; }

 private:
  Store* const store_;
  int fd_ = -1;
  absl::Status error_;
};

// ---------------------------------------------------------------- StagedFile

StagedFile::~StagedFile() {
  if (fd_ >= 0) ::close(fd_);
  if (!keep_) ::unlink(path_.c_str());
}

absl::Status StagedFile::Append(std::string_view bytes) {
  if (fd_ < 0) return absl::FailedPreconditionError("staged file already finished");
  if (sha_ == nullptr) sha_ = std::make_unique<common::Sha256>();
  sha_->Update(bytes);
  while (!bytes.empty()) {
    ssize_t n = ::write(fd_, bytes.data(), bytes.size());
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return ErrnoStatus(absl::StrCat("write ", path_));
    bytes.remove_prefix(static_cast<size_t>(n));
    size_ += static_cast<uint64_t>(n);
  }
  return absl::OkStatus();
}

absl::Status StagedFile::Finish(bool sync) {
  if (fd_ < 0) return absl::FailedPreconditionError("staged file already finished");
  sha256_ = sha_ != nullptr ? sha_->HexDigest() : common::Sha256Hex("");
  sha_.reset();
  int rc = sync ? ::fsync(fd_) : 0;
  ::close(fd_);
  fd_ = -1;
  return rc == 0 ? absl::OkStatus() : ErrnoStatus(absl::StrCat("fsync ", path_));
}

absl::Status StagedFile::AdoptContents(const std::string& known_sha256) {
  if (fd_ >= 0) ::close(fd_);
  sha_.reset();
  if (!known_sha256.empty() && !common::IsSha256Hex(known_sha256)) {
    return absl::InternalError(absl::StrCat("not a sha256: '", known_sha256.substr(0, 80), "'"));
  }
  // Nothing appended through us: hash what the other writer left at path_.
  absl::StatusOr<std::string> sha = known_sha256.empty() ? common::Sha256File(path_) : known_sha256;
  if (!sha.ok()) return sha.status();
  struct stat st;
  if (::stat(path_.c_str(), &st) != 0) return ErrnoStatus(absl::StrCat("stat ", path_));
  size_ = static_cast<uint64_t>(st.st_size);
  sha256_ = *sha;
  // Make the other writer's bytes durable before the blob is named.
  fd_ = ::open(path_.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd_ < 0) return ErrnoStatus(absl::StrCat("open ", path_));
  int rc = ::fsync(fd_);
  ::close(fd_);
  fd_ = -1;
  return rc == 0 ? absl::OkStatus() : ErrnoStatus(absl::StrCat("fsync ", path_));
}

// ---------------------------------------------------------------- Store

Store::Store(const Options& options, std::string root)
    : options_(options), root_(std::move(root)) {}

Store::~Store() {
  // Staged files are removed by their owners; an empty directory goes too.
  ::rmdir(staging_dir_.c_str());
}

absl::StatusOr<std::unique_ptr<Store>> Store::Open(const Options& options) {
  if (options.root.empty()) return absl::InvalidArgumentError("store root is empty");
  std::string root = options.root;
  while (root.size() > 1 && root.back() == '/') root.pop_back();
  for (const char* sub : {"", "/blobs", "/models", "/tmp"}) {
    if (absl::Status s = MakeDirs(root + sub); !s.ok()) return s;
  }
  std::unique_ptr<Store> store(new Store(options, root));
  // Staging left by crashed processes. Other live replicas stage in their
  // own directories, which StagingIsStale never selects.
  std::string host = HostName();
  std::string tmp = root + "/tmp";
  for (const std::string& name : ListDir(tmp)) {
    if (StagingIsStale(tmp, name, host, options.stale_staging_seconds)) {
      RemoveTree(absl::StrCat(tmp, "/", name));
    }
  }
  std::string suffix = RandomSuffix();  // "<pid>.<random>"
  store->staging_dir_ =
      absl::StrCat(tmp, "/", host, "-", ::getpid(), "-", suffix.substr(suffix.find('.') + 1));
  if (::mkdir(store->staging_dir_.c_str(), 0755) != 0) {
    return ErrnoStatus(absl::StrCat("mkdir ", store->staging_dir_));
  }
  return store;
}

absl::StatusOr<std::unique_ptr<StagedFile>> Store::NewStagedFile() {
  std::string path = absl::StrCat(staging_dir_, "/stage.", RandomSuffix());
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (fd < 0) return ErrnoStatus(absl::StrCat("create ", path));
  return std::make_unique<StagedFile>(path, fd);
}

std::string Store::BlobPath(const std::string& sha256) const {
  return absl::StrCat(root_, "/blobs/", sha256);
}

bool Store::HasBlob(const std::string& sha256) const {
  struct stat st;
  return common::IsSha256Hex(sha256) && ::stat(BlobPath(sha256).c_str(), &st) == 0;
}

absl::StatusOr<std::string> Store::CommitBlob(std::unique_ptr<StagedFile> staged) {
  if (staged->fd_ >= 0) {
    if (absl::Status s = staged->Finish(); !s.ok()) return s;
  }
  Lock lock(this);
  if (!lock.status().ok()) return lock.status();
  return PlaceBlobLocked(*staged);
}

absl::StatusOr<std::string> Store::PlaceBlobLocked(StagedFile& staged) {
  if (staged.fd_ >= 0) {
    if (absl::Status s = staged.Finish(); !s.ok()) return s;
  }
  std::string sha = staged.sha256();
  std::string path = BlobPath(sha);
  if (HasBlob(sha)) {
    // Content-addressed: identical bytes are stored once. The reused blob may
    // be unreferenced and old; a fresh mtime makes garbage collection spare
    // it until the caller's record names it.
    if (::utimensat(AT_FDCWD, path.c_str(), nullptr, 0) != 0 && errno != ENOENT) {
      return ErrnoStatus(absl::StrCat("touch ", path));
    }
    if (HasBlob(sha)) return sha;
    // Collected by a process that does not share our lock: store our copy.
  }
  ::chmod(staged.path().c_str(), 0444);
  if (::rename(staged.path().c_str(), path.c_str()) != 0) {
    return ErrnoStatus(absl::StrCat("rename ", staged.path(), " -> ", path));
  }
  staged.keep_ = true;
  if (absl::Status s = FsyncDir(root_ + "/blobs"); !s.ok()) return s;
  return sha;
}

uint64_t Store::BlobSize(const std::string& sha256) const {
  struct stat st;
  if (!common::IsSha256Hex(sha256) || ::stat(BlobPath(sha256).c_str(), &st) != 0) return 0;
  return static_cast<uint64_t>(st.st_size);
}

uint64_t Store::BlobBytes() const {
  uint64_t total = 0;
  for (const std::string& name : ListDir(root_ + "/blobs")) {
    struct stat st;
    if (::stat(BlobPath(name).c_str(), &st) == 0) total += static_cast<uint64_t>(st.st_size);
  }
  return total;
}

static std::string ModelDir(const std::string& root, const std::string& id) {
  return absl::StrCat(root, "/models/", id);
}

absl::Status Store::PutModel(const Model& model) {
  Lock lock(this);
  if (!lock.status().ok()) return lock.status();
  return PutModelLocked(model);
}

absl::Status Store::PutModelLocked(const Model& model) {
  if (absl::Status s = ValidateModelId(model.model_id()); !s.ok()) return s;
  if (const std::string& ts = model.spec().torchscript_sha256(); !ts.empty()) {
    // The TorchScript reference was committed (and refreshed) by the caller;
    // under the lock it either still exists, and is refreshed again so that
    // collection spares it, or the model is not written.
    if (!common::IsSha256Hex(ts) || ::utimensat(AT_FDCWD, BlobPath(ts).c_str(), nullptr, 0) != 0) {
      return absl::AbortedError(
          absl::StrCat("TorchScript reference blob ", ts, " vanished before the model was saved"));
    }
  }
  std::string dir = ModelDir(root_, model.model_id());
  struct stat st;
  if (::stat((dir + "/versions").c_str(), &st) != 0) {
    if (absl::Status s = MakeDirs(dir + "/versions"); !s.ok()) return s;
    // models/ gained <id>, and <id> gained versions/: both entries must be
    // durable before anything inside them is.
    if (absl::Status s = FsyncDir(dir); !s.ok()) return s;
    if (absl::Status s = FsyncDir(root_ + "/models"); !s.ok()) return s;
  }
  absl::Status written = WriteJson(staging_dir_, dir + "/model.json", model);
  if (written.ok() && listener_) listener_(model.model_id());
  return written;
}

absl::StatusOr<Model> Store::GetModel(const std::string& model_id) const {
  if (absl::Status s = ValidateModelId(model_id); !s.ok()) return s;
  absl::StatusOr<Model> model = ReadJson<Model>(ModelDir(root_, model_id) + "/model.json");
  if (absl::IsNotFound(model.status())) {
    return absl::NotFoundError(absl::StrCat("model '", model_id, "' is not registered"));
  }
  return model;
}

absl::StatusOr<std::vector<Model>> Store::ListModels() const {
  std::vector<Model> models;
  for (const std::string& id : ListDir(root_ + "/models")) {
    if (!ValidateModelId(id).ok()) continue;
    absl::StatusOr<Model> model = GetModel(id);
    if (absl::IsNotFound(model.status())) continue;  // being deleted or half-created
    if (!model.ok()) return model.status();
    models.push_back(*std::move(model));
  }
  return models;
}

absl::Status Store::UpdateModel(const std::string& model_id,
                                const std::function<absl::Status(Model&)>& fn) {
  Lock lock(this);
  if (!lock.status().ok()) return lock.status();
  absl::StatusOr<Model> model = GetModel(model_id);
  if (!model.ok()) return model.status();
  if (absl::Status s = fn(*model); !s.ok()) return s;
  model->set_updated_unix_ms(NowMs());
  return PutModelLocked(*model);
}

absl::Status Store::DeleteModel(const std::string& model_id) {
  Lock lock(this);
  if (!lock.status().ok()) return lock.status();
  std::string dir = ModelDir(root_, model_id);
  if (absl::StatusOr<Model> m = GetModel(model_id); !m.ok()) return m.status();
  // model.json goes first: from then on the model is gone for every reader,
  // and a crash mid-way leaves only unreachable version records.
  if (::unlink((dir + "/model.json").c_str()) != 0) return ErrnoStatus("unlink model.json");
  if (absl::Status s = FsyncDir(dir); !s.ok()) return s;
  for (const std::string& name : ListDir(dir + "/versions")) {
    ::unlink(absl::StrCat(dir, "/versions/", name).c_str());
  }
  if (absl::Status s = FsyncDir(dir + "/versions"); !s.ok()) return s;
  ::rmdir((dir + "/versions").c_str());
  if (absl::Status s = FsyncDir(dir); !s.ok()) return s;
  ::rmdir(dir.c_str());
  if (absl::Status s = FsyncDir(root_ + "/models"); !s.ok()) return s;
  return CollectGarbageLocked();
}

static std::string VersionPath(const std::string& root, const std::string& id, int64_t v) {
  return absl::StrCat(ModelDir(root, id), "/versions/", v, ".json");
}

absl::StatusOr<Version> Store::AddVersion(const std::string& model_id, Version version,
                                          const std::string& alias) {
  Lock lock(this);
  if (!lock.status().ok()) return lock.status();
  if (!version.blob_sha256().empty()) {
    // The caller committed the blob earlier: refresh it, or fail rather than
    // record a version whose bytes are gone.
    std::string path = BlobPath(version.blob_sha256());
    if (!common::IsSha256Hex(version.blob_sha256()) ||
        ::utimensat(AT_FDCWD, path.c_str(), nullptr, 0) != 0) {
      return absl::AbortedError(
          absl::StrCat("blob ", version.blob_sha256(), " vanished before its version was added"));
    }
  }
  return AddVersionLocked(model_id, std::move(version), alias);
}

absl::StatusOr<Version> Store::CommitVersion(const std::string& model_id,
                                             std::unique_ptr<StagedFile> staged, Version version,
                                             const std::string& alias) {
  if (staged->fd_ >= 0) {
    if (absl::Status s = staged->Finish(); !s.ok()) return s;
  }
  Lock lock(this);
  if (!lock.status().ok()) return lock.status();
  if (absl::StatusOr<Model> model = GetModel(model_id); !model.ok()) return model.status();
  absl::StatusOr<std::string> sha = PlaceBlobLocked(*staged);
  if (!sha.ok()) return sha.status();
  version.set_blob_sha256(*sha);
  version.set_size_bytes(static_cast<int64_t>(BlobSize(*sha)));
  if (options_.after_blob_hook_for_testing) options_.after_blob_hook_for_testing();
  return AddVersionLocked(model_id, std::move(version), alias);
}

absl::StatusOr<int64_t> Store::ClaimVersionLocked(const std::string& model_id, int64_t first,
                                                  Version& version) {
  std::string dir = ModelDir(root_, model_id) + "/versions";
  // Bounded: each failed attempt means another writer claimed that number.
  for (int64_t n = first; n < first + 100000; ++n) {
    version.set_version(n);
    std::string text;
    google::protobuf::util::JsonPrintOptions print;
    print.add_whitespace = true;
    print.preserve_proto_field_names = true;
    if (auto st = google::protobuf::util::MessageToJsonString(version, &text, print); !st.ok()) {
      return absl::InternalError(st.ToString());
    }
    std::string tmp = absl::StrCat(staging_dir_, "/version.", RandomSuffix(), ".tmp");
    if (absl::Status s = AtomicWrite(staging_dir_, tmp, text); !s.ok()) return s;
    // link() fails with EEXIST instead of replacing: the number is ours only
    // if no other writer (even one whose flock was a no-op) took it first.
    int rc = ::link(tmp.c_str(), VersionPath(root_, model_id, n).c_str());
    int link_errno = errno;
    ::unlink(tmp.c_str());
    if (rc == 0) {
      if (absl::Status s = FsyncDir(dir); !s.ok()) return s;
      return n;
    }
    if (link_errno != EEXIST) {
      errno = link_errno;
      return ErrnoStatus(absl::StrCat("link ", VersionPath(root_, model_id, n)));
    }
  }
  return absl::ResourceExhaustedError(absl::StrCat("no free version number for ", model_id));
}

absl::StatusOr<Version> Store::AddVersionLocked(const std::string& model_id, Version version,
                                                const std::string& alias) {
  absl::StatusOr<Model> model = GetModel(model_id);
  if (!model.ok()) return model.status();
  int64_t next = 1;
  for (const std::string& name : ListDir(ModelDir(root_, model_id) + "/versions")) {
    next = std::max<int64_t>(next, std::atoll(name.c_str()) + 1);
  }
  next = std::max<int64_t>(next, model->version_count() + 1);
  version.set_model_id(model_id);
  if (version.created_unix_ms() == 0) version.set_created_unix_ms(NowMs());
  absl::StatusOr<int64_t> claimed = ClaimVersionLocked(model_id, next, version);
  if (!claimed.ok()) return claimed.status();
  // Re-read: without a working flock another replica may have moved aliases
  // meanwhile. "latest" only ever moves forward.
  if (absl::StatusOr<Model> again = GetModel(model_id); again.ok()) model = *std::move(again);
  auto& aliases = *model->mutable_aliases();
  if (aliases["latest"] < *claimed) aliases["latest"] = *claimed;
  if (!alias.empty()) aliases[alias] = *claimed;
  model->set_version_count(std::max<int64_t>(model->version_count(), *claimed));
  model->set_updated_unix_ms(NowMs());
  if (absl::Status s = PutModelLocked(*model); !s.ok()) return s;
  return version;
}

// Reads version `version` of `model` (already read), with its aliases.
static absl::StatusOr<Version> ReadVersionOf(const std::string& root, const Model& model,
                                             int64_t version) {
  absl::StatusOr<Version> v = ReadJson<Version>(VersionPath(root, model.model_id(), version));
  if (absl::IsNotFound(v.status())) {
    return absl::NotFoundError(
        absl::StrCat("model '", model.model_id(), "' has no version ", version));
  }
  if (!v.ok()) return v.status();
  v->clear_aliases();
  for (const auto& [name, target] : model.aliases()) {
    if (target == version) v->add_aliases(name);
  }
  std::sort(v->mutable_aliases()->begin(), v->mutable_aliases()->end());
  return v;
}

absl::StatusOr<Version> Store::GetVersion(const std::string& model_id, int64_t version) const {
  absl::StatusOr<Model> model = GetModel(model_id);
  if (!model.ok()) return model.status();
  return ReadVersionOf(root_, *model, version);
}

absl::StatusOr<std::vector<Version>> Store::ListVersions(const std::string& model_id) const {
  absl::StatusOr<Model> model = GetModel(model_id);
  if (!model.ok()) return model.status();
  std::vector<int64_t> numbers;
  for (const std::string& name : ListDir(ModelDir(root_, model_id) + "/versions")) {
    if (name.size() > 5 && name.substr(name.size() - 5) == ".json")
      numbers.push_back(std::atoll(name.c_str()));
  }
  std::sort(numbers.begin(), numbers.end());
  std::vector<Version> versions;
  for (int64_t n : numbers) {
    absl::StatusOr<Version> v = ReadVersionOf(root_, *model, n);
    if (absl::IsNotFound(v.status())) continue;
    if (!v.ok()) return v.status();
    versions.push_back(*std::move(v));
  }
  return versions;
}

absl::Status Store::DeleteVersion(const std::string& model_id, int64_t version) {
  Lock lock(this);
  if (!lock.status().ok()) return lock.status();
  absl::StatusOr<Model> model = GetModel(model_id);
  if (!model.ok()) return model.status();
  std::string path = VersionPath(root_, model_id, version);
  if (::unlink(path.c_str()) != 0) {
    if (errno == ENOENT) {
      return absl::NotFoundError(absl::StrCat("model '", model_id, "' has no version ", version));
    }
    return ErrnoStatus(absl::StrCat("unlink ", path));
  }
  if (absl::Status s = FsyncDir(ModelDir(root_, model_id) + "/versions"); !s.ok()) return s;
  // Aliases that pointed at it are removed; "latest" falls back to the newest left.
  auto* aliases = model->mutable_aliases();
  for (auto it = aliases->begin(); it != aliases->end();) {
    it = it->second == version ? aliases->erase(it) : std::next(it);
  }
  int64_t newest = 0;
  for (const std::string& name : ListDir(ModelDir(root_, model_id) + "/versions")) {
    newest = std::max<int64_t>(newest, std::atoll(name.c_str()));
  }
  if (newest > 0) (*aliases)["latest"] = newest;
  model->set_updated_unix_ms(NowMs());
  if (absl::Status s = PutModelLocked(*model); !s.ok()) return s;
  return CollectGarbageLocked();
}

absl::StatusOr<int64_t> Store::SetAlias(const std::string& model_id, const std::string& alias,
                                        int64_t version) {
  if (absl::Status s = ValidateModelId(alias); !s.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("invalid alias '", alias, "'"));
  }
  Lock lock(this);
  if (!lock.status().ok()) return lock.status();
  absl::StatusOr<Model> model = GetModel(model_id);
  if (!model.ok()) return model.status();
  struct stat st;
  if (::stat(VersionPath(root_, model_id, version).c_str(), &st) != 0) {
    return absl::NotFoundError(absl::StrCat("model '", model_id, "' has no version ", version));
  }
  auto& aliases = *model->mutable_aliases();
  int64_t previous = aliases.count(alias) ? aliases[alias] : 0;
  aliases[alias] = version;
  model->set_updated_unix_ms(NowMs());
  if (absl::Status s = PutModelLocked(*model); !s.ok()) return s;
  return previous;
}

absl::StatusOr<Version> Store::Resolve(const std::string& ref) const {
  absl::StatusOr<ParsedRef> parsed = ParseRef(ref);
  if (!parsed.ok()) return parsed.status();
  absl::StatusOr<Model> model = GetModel(parsed->model_id);
  if (!model.ok()) return model.status();
  int64_t version = parsed->version;
  if (version == 0) {
    auto it = model->aliases().find(parsed->alias);
    if (it == model->aliases().end()) {
      return absl::NotFoundError(
          absl::StrCat("model '", parsed->model_id, "' has no alias '", parsed->alias, "'"));
    }
    version = it->second;
  }
  return ReadVersionOf(root_, *model, version);
}

absl::Status Store::CollectGarbage() {
  Lock lock(this);
  if (!lock.status().ok()) return lock.status();
  return CollectGarbageLocked();
}

absl::Status Store::CollectGarbageLocked() {
  std::set<std::string> live;
  for (const std::string& id : ListDir(root_ + "/models")) {
    absl::StatusOr<Model> model = ReadJson<Model>(ModelDir(root_, id) + "/model.json");
    if (model.ok()) {
      live.insert(model->spec().source_sha256());
      live.insert(model->spec().torchscript_sha256());
    } else if (!absl::IsNotFound(model.status())) {
      return model.status();  // never collect on a store we could not read completely
    }
    for (const std::string& name : ListDir(ModelDir(root_, id) + "/versions")) {
      absl::StatusOr<Version> v =
          ReadJson<Version>(absl::StrCat(ModelDir(root_, id), "/versions/", name));
      if (v.ok()) {
        live.insert(v->blob_sha256());
      } else if (!absl::IsNotFound(v.status())) {
        return v.status();
      }
    }
  }
  // A blob committed or reused in the last minutes may belong to an upload
  // whose record is not written yet (CommitBlob, then AddVersion or
  // PutModel): its mtime was refreshed under this lock, so keep it.
  time_t now = ::time(nullptr);
  bool removed = false;
  for (const std::string& name : ListDir(root_ + "/blobs")) {
    struct stat st;
    if (live.count(name) || ::stat(BlobPath(name).c_str(), &st) != 0) continue;
    if (now - st.st_mtime < options_.blob_grace_seconds) continue;
    removed = ::unlink(BlobPath(name).c_str()) == 0 || removed;
  }
  if (removed) return FsyncDir(root_ + "/blobs");
  return absl::OkStatus();
}

}  // namespace weightgate::store
