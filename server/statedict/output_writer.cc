#include "server/statedict/output_writer.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <deque>
#include <future>
#include <system_error>
#include <thread>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "common/sha256.h"
#include "server/checkpoint/safetensors.h"
#include "server/checkpoint/torch_writer.h"

namespace weightgate::statedict {
namespace {

bool EndsWith(const std::string& s, const char* suffix) {
  const std::string t(suffix);
  return s.size() >= t.size() && s.compare(s.size() - t.size(), t.size(), t) == 0;
}

std::string TempPath(const std::string& path) { return absl::StrCat(path, ".tmp.", ::getpid()); }

absl::Status RenameInto(const std::string& from, const std::string& to) {
  if (std::rename(from.c_str(), to.c_str()) != 0) {
    absl::Status s = absl::ErrnoToStatus(errno, absl::StrCat("rename ", from, " -> ", to));
    std::remove(from.c_str());
    return s;
  }
  return absl::OkStatus();
}

// Writes the fd fully or fails.
absl::Status WriteAll(int fd, std::string_view bytes, const std::string& path) {
  while (!bytes.empty()) {
    ssize_t n = ::write(fd, bytes.data(), bytes.size());
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return absl::ErrnoToStatus(errno, absl::StrCat("write ", path));
    bytes.remove_prefix(static_cast<size_t>(n));
  }
  return absl::OkStatus();
}

// safetensors cannot alias: every entry that needs bytes (for the stored
// form, every entry but the tied ones) carries its own. The header comes from
// checkpoint::SafetensorsHeader; the data region is streamed here rather than
// through checkpoint::SafetensorsWriter because the latter always fsyncs, and
// whether a sync is wanted is the caller's call (the store syncs when it
// adopts the file; torch.save never does). Every byte written is hashed on
// the way out; writeback is started behind the writer (sync_file_range,
// which neither waits nor makes anything durable), so the disk works while
// the next tensors are checked.
class SafetensorsOutput final : public OutputWriter {
 public:
  SafetensorsOutput(std::string path, std::string temp, int fd, uint64_t data_size, bool sync,
                    std::vector<bool> needs_bytes)
      : path_(std::move(path)),
        temp_(std::move(temp)),
        fd_(fd),
        data_size_(data_size),
        sync_(sync),
        needs_bytes_(std::move(needs_bytes)) {}
  ~SafetensorsOutput() override {
    if (fd_ >= 0) Abort();
  }

  // The header, before any tensor bytes.
  absl::Status WriteHeader(std::string_view header) { return Write(header); }

  bool NeedsBytes(size_t k) const override { return k >= needs_bytes_.size() || needs_bytes_[k]; }

  absl::Status Append(std::string_view bytes) override {
    if (fd_ < 0) return absl::FailedPreconditionError("output already finished");
    if (bytes.size() > data_size_ - written_) {
      return absl::InternalError("more tensor bytes than the header declares");
    }
    written_ += bytes.size();
    if (buffer_.size() + bytes.size() <= kBufferBytes) {
      buffer_.append(bytes.data(), bytes.size());
      return absl::OkStatus();
    }
    if (absl::Status s = Flush(); !s.ok()) return s;
    if (bytes.size() >= kBufferBytes) return Write(bytes);
    buffer_.append(bytes.data(), bytes.size());
    return absl::OkStatus();
  }

  absl::Status Finish() override {
    if (fd_ < 0) return absl::FailedPreconditionError("output already finished");
    absl::Status s = Flush();
    if (s.ok() && written_ != data_size_) {
      s = absl::InternalError(
          absl::StrCat("wrote ", written_, " of ", data_size_, " tensor bytes"));
    }
    if (s.ok() && sync_ && ::fsync(fd_) != 0) s = absl::ErrnoToStatus(errno, "fsync " + temp_);
    if (::close(fd_) != 0 && s.ok()) s = absl::ErrnoToStatus(errno, "close " + temp_);
    fd_ = -1;
    if (!s.ok()) {
      std::remove(temp_.c_str());
      return s;
    }
    sha256_ = sha_.HexDigest();
    return RenameInto(temp_, path_);
  }

  void Abort() override {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
    std::remove(temp_.c_str());
  }

  std::string sha256() const override { return sha256_; }

 private:
  // Small tensors (biases, norms) are gathered; large pieces go straight out.
  static constexpr size_t kBufferBytes = size_t{1} << 20;
  // Pieces at least this large are hashed and written at the same time.
  static constexpr size_t kParallelHashBytes = size_t{1} << 20;
  // Writeback is started for every this many bytes written.
  static constexpr uint64_t kWritebackBytes = uint64_t{8} << 20;

  absl::Status Flush() {
    absl::Status s = Write(buffer_);
    buffer_.clear();
    return s;
  }

  // Every byte of the file passes here, in order.
  absl::Status Write(std::string_view bytes) {
    absl::Status s;
    std::future<void> hashed;
    if (bytes.size() >= kParallelHashBytes) {
      // A large piece is hashed on a second thread while it is written; when
      // no thread can be had (e.g. a worker near its memory limit), in turn.
      try {
        hashed = std::async(std::launch::async, [this, bytes] { sha_.Update(bytes); });
      } catch (const std::system_error&) {
      }
    }
    if (hashed.valid()) {
      s = WriteAll(fd_, bytes, temp_);
      hashed.wait();
    } else {
      sha_.Update(bytes);
      s = WriteAll(fd_, bytes, temp_);
    }
    if (!s.ok()) return s;
    offset_ += bytes.size();
    if (offset_ - started_ >= kWritebackBytes) {
      // Advisory: a failure here only means the final fsync does the work.
      ::sync_file_range(fd_, static_cast<off_t>(started_), static_cast<off_t>(offset_ - started_),
                        SYNC_FILE_RANGE_WRITE);
      started_ = offset_;
    }
    return absl::OkStatus();
  }

  std::string path_;
  std::string temp_;
  int fd_ = -1;
  uint64_t data_size_ = 0;
  uint64_t written_ = 0;
  bool sync_ = false;
  std::vector<bool> needs_bytes_;
  std::string buffer_;
  common::Sha256 sha_;
  std::string sha256_;
  uint64_t offset_ = 0;   // bytes written to fd_
  uint64_t started_ = 0;  // writeback started for [0, started_)
};

// torch.save zip through checkpoint::TorchZipWriter: a tied entry names the
// storage of the entry it is tied to, so torch.load gives aliasing tensors
// again and the bytes are stored once.
class TorchZipOutput final : public OutputWriter {
 public:
  TorchZipOutput(std::string path, std::string temp, std::vector<bool> needs_bytes,
                 std::unique_ptr<checkpoint::TorchZipWriter> writer)
      : path_(std::move(path)),
        temp_(std::move(temp)),
        needs_bytes_(std::move(needs_bytes)),
        writer_(std::move(writer)) {}
  ~TorchZipOutput() override {
    if (writer_ != nullptr) Abort();
  }

  bool NeedsBytes(size_t k) const override { return k >= needs_bytes_.size() || needs_bytes_[k]; }
  absl::Status Append(std::string_view bytes) override {
    if (writer_ == nullptr) return absl::FailedPreconditionError("output already finished");
    return writer_->Append(bytes);
  }
  absl::Status Finish() override {
    if (writer_ == nullptr) return absl::FailedPreconditionError("output already finished");
    absl::Status s = writer_->Finish();
    writer_.reset();
    if (!s.ok()) {
      std::remove(temp_.c_str());
      return s;
    }
    return RenameInto(temp_, path_);
  }
  void Abort() override {
    writer_.reset();  // removes its unfinished file
    std::remove(temp_.c_str());
  }

 private:
  std::string path_;
  std::string temp_;
  std::vector<bool> needs_bytes_;
  std::unique_ptr<checkpoint::TorchZipWriter> writer_;
};

// Longer file stems fall back to "archive" (zip entry names stay short).
constexpr size_t kMaxArchivePrefix = 128;

// torch.save names the archive's top folder after the file ("model" for
// model.pt); anything odd falls back to torch's "archive".
std::string ArchivePrefix(const std::string& path) {
  size_t slash = path.find_last_of('/');
  std::string base = slash == std::string::npos ? path : path.substr(slash + 1);
  size_t dot = base.find('.');
  if (dot != std::string::npos) base.resize(dot);
  for (char c : base) {
    bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '_' || c == '-';
    if (!ok) return "archive";
  }
  return base.empty() || base.size() > kMaxArchivePrefix ? "archive" : base;
}

// Runs the writes of an inner writer on its own thread, so the disk works
// while the next tensor is checked and converted. At most kMaxQueuedBytes
// wait in the queue (a larger piece waits for an empty queue), which keeps
// memory bounded; pieces are copied because callers release their memory
// (or mapped pages) as soon as Append returns.
class AsyncOutput final : public OutputWriter {
 public:
  explicit AsyncOutput(std::unique_ptr<OutputWriter> inner)
      : inner_(std::move(inner)), thread_([this] { Run(); }) {}
  ~AsyncOutput() override {
    if (!finished_) Abort();
  }

  bool NeedsBytes(size_t k) const override { return inner_->NeedsBytes(k); }

  absl::Status Append(std::string_view bytes) override ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    while (error_.ok() && queued_ != 0 &&
           (queued_ > kMaxQueuedBytes || bytes.size() > kMaxQueuedBytes - queued_)) {
      cv_.Wait(&mu_);
    }
    if (!error_.ok()) return error_;
    queue_.emplace_back(bytes.data(), bytes.size());
    queued_ += bytes.size();
    cv_.SignalAll();
    return absl::OkStatus();
  }

  absl::Status Finish() override ABSL_LOCKS_EXCLUDED(mu_) {
    Stop(/*abort=*/false);
    finished_ = true;
    absl::Status error = Error();
    if (!error.ok()) {
      inner_->Abort();
      return error;
    }
    return inner_->Finish();
  }

  void Abort() override {
    Stop(/*abort=*/true);
    finished_ = true;
    inner_->Abort();
  }

  std::string sha256() const override { return inner_->sha256(); }

 private:
  static constexpr size_t kMaxQueuedBytes = size_t{32} << 20;

  void Stop(bool abort) ABSL_LOCKS_EXCLUDED(mu_) {
    {
      absl::MutexLock lock(&mu_);
      closing_ = true;
      if (abort) {
        queue_.clear();
        queued_ = 0;
      }
      cv_.SignalAll();
    }
    if (thread_.joinable()) thread_.join();
  }

  absl::Status Error() ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    return error_;
  }

  void Run() ABSL_LOCKS_EXCLUDED(mu_) {
    for (;;) {
      std::string piece;
      {
        absl::MutexLock lock(&mu_);
        while (queue_.empty() && !closing_) cv_.Wait(&mu_);
        if (queue_.empty()) return;  // closing, and everything is written
        piece = std::move(queue_.front());
        queue_.pop_front();
      }
      absl::Status s = inner_->Append(piece);
      absl::MutexLock lock(&mu_);
      queued_ -= std::min(queued_, piece.size());
      if (!s.ok()) {
        error_ = s;
        queue_.clear();
        queued_ = 0;
      }
      cv_.SignalAll();
      if (!s.ok()) return;
    }
  }

  std::unique_ptr<OutputWriter> inner_;
  absl::Mutex mu_;
  absl::CondVar cv_;
  std::deque<std::string> queue_ ABSL_GUARDED_BY(mu_);
  size_t queued_ ABSL_GUARDED_BY(mu_) = 0;
  bool closing_ ABSL_GUARDED_BY(mu_) = false;
  absl::Status error_ ABSL_GUARDED_BY(mu_);
  bool finished_ = false;
  std::thread thread_;  // last: starts after the members it uses
};

// The stored form's ties: each tied entry leaves `entries` and becomes a
// tie record in `metadata`. Returns, per original entry, whether its bytes
// are written.
absl::StatusOr<std::vector<bool>> OmitTied(
    std::vector<OutputWriter::Entry>* entries,
    std::vector<std::pair<std::string, std::string>>* metadata) {
  std::vector<bool> needs_bytes(entries->size(), true);
  for (size_t k = 0; k < entries->size(); ++k) {
    const OutputWriter::Entry& e = (*entries)[k];
    if (e.tied_to < 0) continue;
    const OutputWriter::Entry* partner =
        static_cast<size_t>(e.tied_to) < k ? &(*entries)[e.tied_to] : nullptr;
    if (partner == nullptr || partner->tied_to >= 0 || partner->dtype != e.dtype ||
        partner->shape != e.shape) {
      return absl::InvalidArgumentError(absl::StrCat(
          "tensor '", e.name, "' is tied to no earlier tensor of its dtype and shape"));
    }
    needs_bytes[k] = false;
    metadata->emplace_back(checkpoint::SafetensorsTieKey(e.name), partner->name);
  }
  std::vector<OutputWriter::Entry> kept;
  kept.reserve(entries->size());
  for (size_t k = 0; k < entries->size(); ++k) {
    if (needs_bytes[k]) kept.push_back(std::move((*entries)[k]));
  }
  *entries = std::move(kept);
  return needs_bytes;
}

}  // namespace

OutputWriter::Format OutputWriter::FormatForPath(const std::string& path) {
  if (EndsWith(path, ".pt") || EndsWith(path, ".pth") || EndsWith(path, ".bin")) {
    return Format::kTorchZip;
  }
  return Format::kSafetensors;
}

absl::StatusOr<std::unique_ptr<OutputWriter>> OutputWriter::Create(
    const std::string& path, Format format, std::vector<Entry> entries,
    std::vector<std::pair<std::string, std::string>> metadata, bool sync) {
  const std::string temp = TempPath(path);
  if (format != Format::kTorchZip) {
    std::vector<bool> needs_bytes;
    if (format == Format::kStoredSafetensors) {
      absl::StatusOr<std::vector<bool>> n = OmitTied(&entries, &metadata);
      if (!n.ok()) return n.status();
      needs_bytes = *std::move(n);
    }
    std::vector<checkpoint::SafetensorsEntry> tensors;
    tensors.reserve(entries.size());
    for (Entry& e : entries) tensors.push_back({std::move(e.name), e.dtype, std::move(e.shape)});
    if (absl::Status s = checkpoint::ValidateSafetensorsLayout(tensors, metadata); !s.ok()) {
      return s;
    }
    int fd = ::open(temp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) return absl::ErrnoToStatus(errno, absl::StrCat("open ", temp));
    auto out = std::make_unique<SafetensorsOutput>(
        path, temp, fd, checkpoint::SafetensorsDataSize(tensors), sync, std::move(needs_bytes));
    if (absl::Status s = out->WriteHeader(checkpoint::SafetensorsHeader(tensors, metadata));
        !s.ok()) {
      return s;  // out's destructor removes the temp file
    }
    return std::unique_ptr<OutputWriter>(new AsyncOutput(std::move(out)));
  }
  std::vector<checkpoint::TorchZipEntry> tensors;
  std::vector<bool> needs_bytes;
  tensors.reserve(entries.size());
  for (Entry& e : entries) {
    needs_bytes.push_back(e.tied_to < 0);
    tensors.push_back({std::move(e.name), e.dtype, std::move(e.shape), e.tied_to});
  }
  checkpoint::TorchZipWriterOptions options;
  options.archive_prefix = ArchivePrefix(path);
  absl::StatusOr<std::unique_ptr<checkpoint::TorchZipWriter>> w =
      checkpoint::TorchZipWriter::Create(temp, std::move(tensors), options);
  if (!w.ok()) {
    std::remove(temp.c_str());
    return w.status();
  }
  return std::unique_ptr<OutputWriter>(new AsyncOutput(std::unique_ptr<OutputWriter>(
      new TorchZipOutput(path, temp, std::move(needs_bytes), std::move(*w)))));
}

}  // namespace weightgate::statedict
