#include "weightgate/client.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <optional>
#include <sstream>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "common/crc32c.h"
#include "common/sha256.h"
#include "grpcpp/generic/generic_stub.h"
#include "grpcpp/grpcpp.h"
#include "grpcpp/impl/codegen/proto_utils.h"
#include "weightgate/v1/stream.pb.h"

namespace weightgate {
namespace {

constexpr char kFetchMethod[] = "/weightgate.v1.WeightStream/FetchWeights";
// A blob is a safetensors file: its first 8 bytes (the header length) exist.
constexpr uint64_t kHeadBytes = 8;
constexpr uint64_t kBytesPerStream = 64ull << 20;
constexpr int kMaxStreams = 8;
constexpr uint64_t kRangeAlign = 1ull << 20;
constexpr uint64_t kHashStep = 16ull << 20;
// Received chunks at most this far past the hashed prefix are kept (their
// message buffers, no copy) for the hashing thread, which then hashes them
// while they are still in cache instead of reading them back from the sink.
constexpr uint64_t kHashWindow = 32ull << 20;
constexpr int kMaxReceiveBytes = 64 << 20;

absl::Status FromGrpc(const grpc::Status& s, const std::string& what) {
  return absl::Status(static_cast<absl::StatusCode>(s.error_code()),
                      absl::StrCat(what, ": ", s.error_message()));
}

absl::StatusOr<std::string> ReadPem(const std::string& path, const std::string& what) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::InvalidArgumentError(absl::StrCat("cannot read ", what, " ", path));
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::string EnvOr(const char* name, const std::string& fallback) {
  const char* v = std::getenv(name);
  return v != nullptr && *v != '\0' ? std::string(v) : fallback;
}

// Where fetched bytes go. Write() may be called from several threads for
// disjoint ranges; data() (one thread: the hashing one) reads bytes already
// written, and is null if they cannot be read.
class Sink {
 public:
  virtual ~Sink() = default;
  virtual absl::Status Write(uint64_t offset, const struct iovec* pieces, int count) = 0;
  virtual const char* data() const = 0;
  // Bytes at the start already in place (a partial file being resumed).
  virtual uint64_t present() const { return 0; }
  // data()[offset, offset + n) has been hashed and will not be read again.
  virtual void Hashed(uint64_t offset, uint64_t n) {}
};

class MemorySink final : public Sink {
 public:
  explicit MemorySink(char* base) : base_(base) {}
  absl::Status Write(uint64_t offset, const struct iovec* pieces, int count) override {
    char* p = base_ + offset;
    for (int i = 0; i < count; ++i) {
      std::memcpy(p, pieces[i].iov_base, pieces[i].iov_len);
      p += pieces[i].iov_len;
    }
    return absl::OkStatus();
  }
  const char* data() const override { return base_; }

 private:
  char* const base_;
};

// pwritev() into the file (no page faults on the write side); what the hash
// must read back comes through a read-only shared mapping of the same file,
// made on first use (see data()), which sees the page cache.
class FileSink final : public Sink {
 public:
  // `resume`: keep what `path` holds (when not longer than `size`) as the
  // blob's first bytes.
  static absl::StatusOr<std::unique_ptr<FileSink>> Create(const std::string& path, uint64_t size,
                                                          bool resume) {
    int fd = ::open(path.c_str(), O_RDWR | O_CREAT | (resume ? 0 : O_TRUNC) | O_CLOEXEC, 0644);
    if (fd < 0) return absl::ErrnoToStatus(errno, absl::StrCat("open ", path));
    auto sink = std::unique_ptr<FileSink>(new FileSink(fd, size));
    struct stat st;
    if (resume && ::fstat(fd, &st) == 0 && static_cast<uint64_t>(st.st_size) <= size) {
      sink->present_ = static_cast<uint64_t>(st.st_size);
    } else if (resume && ::ftruncate(fd, 0) != 0) {
      return absl::ErrnoToStatus(errno, absl::StrCat("truncate ", path));
    }
    if (::ftruncate(fd, static_cast<off_t>(size)) != 0) {
      return absl::ErrnoToStatus(errno, absl::StrCat("truncate ", path));
    }
    return sink;
  }
  ~FileSink() override {
    if (map_ != nullptr) ::munmap(const_cast<char*>(map_), size_);
    if (fd_ >= 0) ::close(fd_);
  }
  absl::Status Write(uint64_t offset, const struct iovec* pieces, int count) override {
    while (count > 0) {
      int batch = std::min(count, IOV_MAX);
      ssize_t n = ::pwritev(fd_, pieces, batch, static_cast<off_t>(offset));
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) return absl::ErrnoToStatus(errno, "write");
      size_t batch_bytes = 0;
      for (int i = 0; i < batch; ++i) batch_bytes += pieces[i].iov_len;
      if (static_cast<size_t>(n) != batch_bytes) return absl::DataLossError("short write");
      offset += batch_bytes;
      pieces += batch;
      count -= batch;
    }
    return absl::OkStatus();
  }
  // Mapped on first use: a fetch whose chunks all arrive in order hashes
  // them from their receive buffers and never reads the file back, and an
  // unused mapping of the file still costs the kernel work as it is written.
  // Null when the file cannot be mapped.
  const char* data() const override {
    if (map_ == nullptr && size_ > 0) {
      void* map = ::mmap(nullptr, size_, PROT_READ, MAP_SHARED, fd_, 0);
      if (map != MAP_FAILED) map_ = static_cast<const char*>(map);
    }
    return map_;
  }
  uint64_t present() const override { return present_; }
  // Hashed pages leave this process's mapping (they stay in the page cache):
  // a fetch to a file keeps a small resident set whatever the blob's size.
  void Hashed(uint64_t offset, uint64_t n) override {
    const uint64_t page = 4096;
    uint64_t begin = (offset + page - 1) / page * page;
    uint64_t end = (offset + n) / page * page;
    if (map_ != nullptr && end > begin) {
      ::madvise(const_cast<char*>(map_) + begin, end - begin, MADV_DONTNEED);
    }
  }
  // Keeps only the first `n` bytes (what a later fetch can resume from).
  void KeepPrefix(uint64_t n) { (void)::ftruncate(fd_, static_cast<off_t>(n)); }
  absl::Status Sync() {
    if (::fsync(fd_) != 0) return absl::ErrnoToStatus(errno, "fsync");
    return absl::OkStatus();
  }

 private:
  FileSink(int fd, uint64_t size) : fd_(fd), size_(size) {}
  int fd_;
  uint64_t size_;
  uint64_t present_ = 0;
  mutable const char* map_ = nullptr;  // see data()
};

// Bytes of one received message, read across its slices. The slices (and
// so the bytes Take() points at: a short slice holds its bytes inline) are
// owned by the caller's vector and must outlive the pointers.
class MessageReader {
 public:
  MessageReader(const grpc::ByteBuffer& buffer, std::vector<grpc::Slice>* slices)
      : slices_(*slices) {
    slices_.clear();
    (void)buffer.Dump(&slices_);
    for (const grpc::Slice& s : slices_) remaining_ += s.size();
  }
  uint64_t remaining() const { return remaining_; }
  bool Byte(uint8_t* out) {
    while (index_ < slices_.size() && at_ == slices_[index_].size()) {
      ++index_;
      at_ = 0;
    }
    if (index_ >= slices_.size()) return false;
    *out = slices_[index_].begin()[at_++];
    --remaining_;
    return true;
  }
  bool Varint(uint64_t* out) {
    uint64_t v = 0;
    for (int shift = 0; shift < 64; shift += 7) {
      uint8_t b;
      if (!Byte(&b)) return false;
      v |= static_cast<uint64_t>(b & 0x7F) << shift;
      if (b < 0x80) {
        *out = v;
        return true;
      }
    }
    return false;
  }
  // The next `n` bytes as pieces (pointers into the slices); false if short.
  bool Take(uint64_t n, std::vector<struct iovec>* pieces) {
    if (n > remaining_) return false;
    remaining_ -= n;
    while (n > 0) {
      const grpc::Slice& s = slices_[index_];
      size_t take = std::min<uint64_t>(n, s.size() - at_);
      if (take > 0) {
        pieces->push_back({const_cast<uint8_t*>(s.begin() + at_), take});
      }
      at_ += take;
      n -= take;
      if (at_ == s.size()) {
        ++index_;
        at_ = 0;
      }
    }
    return true;
  }

 private:
  std::vector<grpc::Slice>& slices_;
  size_t index_ = 0;
  size_t at_ = 0;
  uint64_t remaining_ = 0;
};

struct ParsedChunk {
  uint64_t offset = 0;
  uint32_t crc = 0;
  std::vector<grpc::Slice> slices;  // the message's; own the bytes `data` points at
  std::vector<struct iovec> data;
};

// Parses FetchResponse{chunk}. NOT_FOUND-free: kNotAChunk means "a manifest".
enum class Kind { kChunk, kManifest, kMalformed };
Kind ParseChunk(const grpc::ByteBuffer& buffer, ParsedChunk* chunk) {
  MessageReader r(buffer, &chunk->slices);
  uint8_t tag;
  if (!r.Byte(&tag)) return Kind::kMalformed;
  if (tag == 0x0A) return Kind::kManifest;
  if (tag != 0x12) return Kind::kMalformed;
  uint64_t len;
  if (!r.Varint(&len) || len != r.remaining()) return Kind::kMalformed;
  bool have_data = false;
  while (r.remaining() > 0) {
    uint64_t key;
    if (!r.Varint(&key)) return Kind::kMalformed;
    uint64_t field = key >> 3, wire = key & 7;
    if (wire == 0) {
      uint64_t v;
      if (!r.Varint(&v)) return Kind::kMalformed;
      if (field == 1) chunk->offset = v;
      if (field == 3) chunk->crc = static_cast<uint32_t>(v);
    } else if (wire == 2) {
      uint64_t n;
      if (!r.Varint(&n)) return Kind::kMalformed;
      std::vector<struct iovec> ignored;
      if (!r.Take(n, field == 2 ? &chunk->data : &ignored)) return Kind::kMalformed;
      if (field == 2) {
        if (have_data) return Kind::kMalformed;
        have_data = true;
      }
    } else if (wire == 5 || wire == 1) {
      std::vector<struct iovec> ignored;
      if (!r.Take(wire == 5 ? 4 : 8, &ignored)) return Kind::kMalformed;
    } else {
      return Kind::kMalformed;
    }
  }
  return Kind::kChunk;
}

uint64_t PiecesBytes(const std::vector<struct iovec>& pieces) {
  uint64_t n = 0;
  for (const auto& p : pieces) n += p.iov_len;
  return n;
}

void FillInfo(const weightgate::v1::Manifest& m, FetchInfo* info) {
  info->model_id = m.model_id();
  info->version = m.version();
  info->sha256 = m.blob_sha256();
  info->total_bytes = m.total_bytes();
  info->tensors.clear();
  for (const auto& t : m.tensors()) {
    TensorInfo ti;
    ti.name = t.name();
    ti.dtype = t.dtype();
    ti.shape.assign(t.shape().begin(), t.shape().end());
    ti.offset = t.offset();
    ti.length = t.length();
    ti.tied_to = t.tied_to();
    info->tensors.push_back(std::move(ti));
  }
}

void Backoff(int attempt) {
  std::this_thread::sleep_for(
      std::chrono::milliseconds(std::min(2000, 50 << std::min(attempt, 6))));
}

}  // namespace

int DefaultStreams(uint64_t total_bytes) {
  // Each stream's thread receives, checks and writes; the hashing thread
  // follows them. One stream per two cores keeps both kinds busy.
  int cores = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  uint64_t by_size = total_bytes / kBytesPerStream;
  uint64_t by_cores = static_cast<uint64_t>(std::max(1, cores / 2));
  return static_cast<int>(
      std::max<uint64_t>(1, std::min<uint64_t>({by_size, by_cores, kMaxStreams})));
}

struct Client::Impl {
  ClientOptions options;
  std::shared_ptr<grpc::ChannelCredentials> creds;
  absl::Mutex mu;
  // One channel (one TCP connection) per stream slot, created on demand.
  std::vector<std::shared_ptr<grpc::Channel>> channels ABSL_GUARDED_BY(mu);

  std::shared_ptr<grpc::Channel> Channel(int index) ABSL_LOCKS_EXCLUDED(mu) {
    absl::MutexLock lock(&mu);
    while (static_cast<int>(channels.size()) <= index) {
      grpc::ChannelArguments args;
      args.SetMaxReceiveMessageSize(kMaxReceiveBytes);
      // Channels to one target share a subchannel (one connection) without it.
      args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
      channels.push_back(grpc::CreateCustomChannel(options.server, creds, args));
    }
    return channels[index];
  }

  void Prepare(grpc::ClientContext* ctx) const {
    if (!options.token.empty()) ctx->AddMetadata("authorization", "Bearer " + options.token);
    if (options.deadline.count() > 0) {
      ctx->set_deadline(std::chrono::system_clock::now() + options.deadline);
    }
  }

  // `*contiguous`: on return, how many bytes from the start are in place
  // and checked (all of them on success).
  absl::StatusOr<FetchInfo> Fetch(
      const std::string& ref, const std::function<absl::StatusOr<Sink*>(const FetchInfo&)>& open,
      uint64_t* contiguous);
};

namespace {

// One generic (raw bytes) FetchWeights call on its own completion queue.
class RawCall {
 public:
  RawCall(const std::shared_ptr<grpc::Channel>& channel, grpc::ClientContext* ctx,
          const weightgate::v1::FetchRequest& request)
      : stub_(channel) {
    call_ = stub_.PrepareCall(ctx, kFetchMethod, &cq_);
    call_->StartCall(Tag(1));
    ok_ = Wait();
    grpc::ByteBuffer bytes;
    bool own = false;
    (void)grpc::SerializationTraits<weightgate::v1::FetchRequest>::Serialize(request, &bytes, &own);
    if (ok_) {
      call_->Write(bytes, Tag(2));
      ok_ = Wait();
    }
    if (ok_) {
      call_->WritesDone(Tag(3));
      ok_ = Wait();
    }
  }
  ~RawCall() {
    cq_.Shutdown();
    void* tag;
    bool ok;
    while (cq_.Next(&tag, &ok)) {
    }
  }
  // Next response; false at the end of the stream (or on failure).
  bool Read(grpc::ByteBuffer* out) {
    if (!ok_) return false;
    call_->Read(out, Tag(4));
    ok_ = Wait();
    return ok_;
  }
  grpc::Status Finish() {
    grpc::Status status;
    call_->Finish(&status, Tag(5));
    Wait();
    return status;
  }

 private:
  static void* Tag(intptr_t n) { return reinterpret_cast<void*>(n); }
  bool Wait() {
    void* tag;
    bool ok = false;
    if (!cq_.Next(&tag, &ok)) return false;
    return ok;
  }

  grpc::GenericStub stub_;
  grpc::CompletionQueue cq_;
  std::unique_ptr<grpc::GenericClientAsyncReaderWriter> call_;
  bool ok_ = false;
};

// Shared state of the range streams of one fetch.
class RangeFetch {
 public:
  RangeFetch(Client::Impl* impl, std::string ref, Sink* sink, std::string sha256,
             std::vector<std::pair<uint64_t, uint64_t>> ranges)
      : impl_(impl),
        ref_(std::move(ref)),
        sink_(sink),
        sha256_(std::move(sha256)),
        ranges_(std::move(ranges)) {
    for (const auto& r : ranges_) pos_.push_back(r.first);
  }

  void Run(int index) {
    absl::Status s = RunRange(index);
    if (!s.ok()) Fail(s);
  }

  // Hashes the contiguous prefix as it grows; returns how far it got. A
  // chunk a stream held for it is hashed from its message buffer; any other
  // bytes are read back from the sink.
  uint64_t HashPrefix(common::Sha256* sha, uint64_t from, uint64_t total) {
    uint64_t done = from;
    while (done < total) {
      uint64_t upto;
      std::optional<ParsedChunk> held;
      {
        absl::MutexLock lock(&mu_);
        hashed_ = done;
        while (!held_.empty() && held_.begin()->first < done) {  // hashed from the sink
          held_bytes_ -= PiecesBytes(held_.begin()->second.data);
          held_.erase(held_.begin());
        }
        mu_.Await(absl::Condition(this, &RangeFetch::HashCanProceed));
        if (failed_) return done;
        upto = PrefixLocked();
        if (auto it = held_.find(done); it != held_.end()) {
          held.emplace(std::move(it->second));
          held_bytes_ -= PiecesBytes(held->data);
          held_.erase(it);
        } else if (!held_.empty()) {
          upto = std::min(upto, held_.begin()->first);
        }
      }
      if (held) {
        for (const auto& p : held->data) {
          sha->Update(std::string_view(static_cast<const char*>(p.iov_base), p.iov_len));
        }
        done += PiecesBytes(held->data);
        continue;
      }
      const char* base = upto > done ? sink_->data() : nullptr;
      if (upto > done && base == nullptr) {
        Fail(absl::InternalError("cannot map the fetched file to hash it"));
        return done;
      }
      while (done < upto) {
        uint64_t step = std::min(upto - done, kHashStep);
        sha->Update(std::string_view(base + done, step));
        sink_->Hashed(done, step);
        done += step;
      }
    }
    return done;
  }

  // End of the contiguous received prefix.
  uint64_t Prefix() const ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    return PrefixLocked();
  }

  absl::Status error() const ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    return error_;
  }
  int resumes() const ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    return resumes_;
  }

 private:
  bool HashCanProceed() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return failed_ || PrefixLocked() > hashed_;
  }

  // Records that [offset, offset + bytes) is in the sink, and keeps the
  // chunk's bytes for the hashing thread when they are near the hashed prefix.
  void Received(int index, uint64_t offset, ParsedChunk* chunk, uint64_t bytes)
      ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    pos_[index] = offset + bytes;
    if (offset >= hashed_ && offset - hashed_ < kHashWindow && held_bytes_ + bytes <= kHashWindow) {
      held_[offset] = std::move(*chunk);
      held_bytes_ += bytes;
      *chunk = ParsedChunk();
    }
  }

  uint64_t PrefixLocked() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    for (size_t i = 0; i < ranges_.size(); ++i) {
      if (pos_[i] < ranges_[i].second) return pos_[i];
    }
    return ranges_.empty() ? 0 : ranges_.back().second;
  }

  void Fail(const absl::Status& s) ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    if (error_.ok()) error_ = s;
    failed_ = true;
    for (grpc::ClientContext* ctx : contexts_) ctx->TryCancel();
  }

  absl::Status RunRange(int index) {
    const auto [begin, end] = ranges_[index];
    uint64_t pos = begin;
    int attempts = 0;
    const ClientOptions& o = impl_->options;
    std::shared_ptr<grpc::Channel> channel = impl_->Channel(index);
    ParsedChunk chunk;
    while (pos < end) {
      grpc::ClientContext ctx;
      impl_->Prepare(&ctx);
      {
        absl::MutexLock lock(&mu_);
        if (failed_) return absl::OkStatus();
        contexts_.push_back(&ctx);
      }
      absl::Status local;
      grpc::Status status;
      {
        weightgate::v1::FetchRequest request;
        request.set_ref(ref_);
        request.set_start_offset(pos);
        request.set_end_offset(end);
        request.set_chunk_bytes(o.chunk_bytes);
        RawCall call(channel, &ctx, request);
        grpc::ByteBuffer message;
        while (local.ok() && call.Read(&message)) {
          chunk.data.clear();
          Kind kind = ParseChunk(message, &chunk);
          if (kind == Kind::kManifest) {
            weightgate::v1::FetchResponse response;
            if (!grpc::SerializationTraits<weightgate::v1::FetchResponse>::Deserialize(&message,
                                                                                       &response)
                     .ok()) {
              local = absl::InternalError(absl::StrCat("fetch ", ref_, ": malformed manifest"));
            } else if (response.manifest().blob_sha256() != sha256_) {
              local = absl::AbortedError(absl::StrCat("fetch ", ref_, ": the blob changed"));
            }
            continue;
          }
          uint64_t n = PiecesBytes(chunk.data);
          if (kind != Kind::kChunk || chunk.offset != pos || n == 0 || n > end - pos) {
            local = absl::InternalError(absl::StrCat("fetch ", ref_, ": unexpected chunk at ",
                                                     chunk.offset, " (+", n, "), expected ", pos));
            continue;
          }
          if (o.verify_chunks) {
            uint32_t crc = 0;
            for (const auto& p : chunk.data)
              crc = common::Crc32c(
                  std::string_view(static_cast<const char*>(p.iov_base), p.iov_len), crc);
            if (crc != chunk.crc) {
              local = absl::DataLossError(absl::StrCat(
                  "fetch ", ref_, ": checksum mismatch in chunk at offset ", chunk.offset));
              continue;
            }
          }
          local = sink_->Write(pos, chunk.data.data(), static_cast<int>(chunk.data.size()));
          if (!local.ok()) continue;
          Received(index, pos, &chunk, n);
          pos += n;
          attempts = 0;
        }
        if (!local.ok()) ctx.TryCancel();
        status = call.Finish();
      }
      bool stopped;
      {
        absl::MutexLock lock(&mu_);
        contexts_.erase(std::find(contexts_.begin(), contexts_.end(), &ctx));
        stopped = failed_;
      }
      if (!local.ok()) return local;
      if (stopped) return absl::OkStatus();
      if (status.ok()) {
        if (pos < end) {
          return absl::InternalError(absl::StrCat("fetch ", ref_, ": stream ended at ", pos,
                                                  " of [", begin, ", ", end, ")"));
        }
        break;
      }
      if (status.error_code() != grpc::StatusCode::UNAVAILABLE || attempts >= o.retries) {
        return FromGrpc(status, absl::StrCat("fetch ", ref_));
      }
      Backoff(attempts++);
      absl::MutexLock lock(&mu_);
      ++resumes_;
    }
    return absl::OkStatus();
  }

  Client::Impl* const impl_;
  const std::string ref_;
  Sink* const sink_;
  const std::string sha256_;
  const std::vector<std::pair<uint64_t, uint64_t>> ranges_;
  mutable absl::Mutex mu_;
  std::vector<uint64_t> pos_ ABSL_GUARDED_BY(mu_);
  std::vector<grpc::ClientContext*> contexts_ ABSL_GUARDED_BY(mu_);
  bool failed_ ABSL_GUARDED_BY(mu_) = false;
  absl::Status error_ ABSL_GUARDED_BY(mu_);
  int resumes_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t hashed_ ABSL_GUARDED_BY(mu_) = 0;  // where the hashing thread waits
  // Received, checked and written chunks kept for the hashing thread, by
  // offset (their slices own the bytes they point at).
  std::map<uint64_t, ParsedChunk> held_ ABSL_GUARDED_BY(mu_);
  uint64_t held_bytes_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace

absl::StatusOr<FetchInfo> Client::Impl::Fetch(
    const std::string& ref, const std::function<absl::StatusOr<Sink*>(const FetchInfo&)>& open,
    uint64_t* contiguous) {
  *contiguous = 0;
  // 1. The manifest and the first bytes, with one short call.
  weightgate::v1::Manifest manifest;
  std::string head;
  for (int attempt = 0;; ++attempt) {
    grpc::ClientContext ctx;
    Prepare(&ctx);
    weightgate::v1::FetchRequest request;
    request.set_ref(ref);
    request.set_end_offset(kHeadBytes);
    RawCall call(Channel(0), &ctx, request);
    grpc::ByteBuffer message;
    bool have_manifest = false;
    head.clear();
    absl::Status local;
    while (call.Read(&message)) {
      ParsedChunk chunk;
      Kind kind = ParseChunk(message, &chunk);
      if (kind == Kind::kManifest) {
        weightgate::v1::FetchResponse response;
        if (grpc::SerializationTraits<weightgate::v1::FetchResponse>::Deserialize(&message,
                                                                                  &response)
                .ok()) {
          manifest = response.manifest();
          have_manifest = true;
        }
      } else if (kind == Kind::kChunk) {
        for (const auto& p : chunk.data)
          head.append(static_cast<const char*>(p.iov_base), p.iov_len);
      } else {
        local = absl::InternalError(absl::StrCat("fetch ", ref, ": malformed response"));
      }
    }
    grpc::Status status = call.Finish();
    if (!local.ok()) return local;
    if (status.ok()) {
      if (!have_manifest) return absl::InternalError(absl::StrCat("fetch ", ref, ": no manifest"));
      break;
    }
    if (status.error_code() != grpc::StatusCode::UNAVAILABLE || attempt >= options.retries) {
      return FromGrpc(status, absl::StrCat("fetch ", ref));
    }
    Backoff(attempt);
  }

  // 2. The destination.
  FetchInfo info;
  FillInfo(manifest, &info);
  const uint64_t total = info.total_bytes;
  absl::StatusOr<Sink*> sink = open(info);
  if (!sink.ok()) return sink.status();
  const uint64_t present = (*sink)->present();
  const uint64_t start = std::max(std::min<uint64_t>(head.size(), total), present);
  if (present < start) {
    struct iovec piece = {head.data() + present, start - present};
    if (absl::Status s = (*sink)->Write(present, &piece, 1); !s.ok()) return s;
  }
  info.resumed_from = present;

  // 3. Range streams, pinned to the version the manifest named.
  int n = options.streams > 0 ? options.streams : DefaultStreams(total);
  n = static_cast<int>(std::max<uint64_t>(
      1, std::min<uint64_t>(static_cast<uint64_t>(n), (total - start) / kRangeAlign)));
  std::vector<std::pair<uint64_t, uint64_t>> ranges;
  uint64_t prev = start;
  for (int i = 1; i <= n; ++i) {
    uint64_t cut = i == n ? total : start + (total - start) / n * i;
    if (i < n) cut = std::max(prev, cut - cut % kRangeAlign);
    ranges.push_back({prev, cut});
    prev = cut;
  }
  const std::string pinned = absl::StrCat(info.model_id, "@", info.version);
  RangeFetch fetch(this, pinned, *sink, info.sha256, ranges);
  std::vector<std::thread> threads;
  for (int i = 0; i < n; ++i) threads.emplace_back([&fetch, i] { fetch.Run(i); });
  common::Sha256 sha;
  if (present == 0) {
    sha.Update(std::string_view(head.data(), start));  // the bytes just written
  } else if (const char* base = (*sink)->data(); base != nullptr) {
    sha.Update(std::string_view(base, start));  // resumed: the file's first bytes
  } else {
    return absl::InternalError(absl::StrCat("fetch ", ref, ": cannot map the output"));
  }
  uint64_t hashed = fetch.HashPrefix(&sha, start, total);
  for (std::thread& t : threads) t.join();
  *contiguous = fetch.Prefix();
  if (absl::Status s = fetch.error(); !s.ok()) return s;
  if (hashed != total) {
    return absl::InternalError(absl::StrCat("fetch ", pinned, ": only ", hashed, " of ", total));
  }
  std::string got = sha.HexDigest();
  if (got != info.sha256) {
    *contiguous = 0;
    return absl::DataLossError(absl::StrCat("fetch ", pinned, ": sha256 mismatch (got ",
                                            got.substr(0, 16), ", want ", info.sha256.substr(0, 16),
                                            ")"));
  }
  info.streams = n;
  info.resumes = fetch.resumes();
  return info;
}

Client::Client(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Client::~Client() = default;

absl::StatusOr<std::unique_ptr<Client>> Client::Create(const ClientOptions& options) {
  auto impl = std::make_unique<Impl>();
  impl->options = options;
  ClientOptions& o = impl->options;
  if (o.server.empty()) o.server = EnvOr("WEIGHTGATE_SERVER", "127.0.0.1:50051");
  if (o.token.empty()) o.token = EnvOr("WEIGHTGATE_TOKEN", "");
  if (o.retries < 0) return absl::InvalidArgumentError("retries must be >= 0");
  if (o.streams < 0) return absl::InvalidArgumentError("streams must be >= 0");
  if (o.tls_cert.empty() != o.tls_key.empty()) {
    return absl::InvalidArgumentError("tls_cert and tls_key go together");
  }
  if (!o.tls_ca.empty() || !o.tls_cert.empty()) {
    grpc::SslCredentialsOptions ssl;
    if (!o.tls_ca.empty()) {
      absl::StatusOr<std::string> ca = ReadPem(o.tls_ca, "tls_ca");
      if (!ca.ok()) return ca.status();
      ssl.pem_root_certs = *ca;
    }
    if (!o.tls_cert.empty()) {
      absl::StatusOr<std::string> cert = ReadPem(o.tls_cert, "tls_cert");
      if (!cert.ok()) return cert.status();
      absl::StatusOr<std::string> key = ReadPem(o.tls_key, "tls_key");
      if (!key.ok()) return key.status();
      ssl.pem_cert_chain = *cert;
      ssl.pem_private_key = *key;
    }
    impl->creds = grpc::SslCredentials(ssl);
  } else {
    impl->creds = grpc::InsecureChannelCredentials();
  }
  return std::unique_ptr<Client>(new Client(std::move(impl)));
}

absl::StatusOr<FetchInfo> Client::FetchToBuffer(const std::string& ref, const Allocator& allocate) {
  std::unique_ptr<MemorySink> sink;
  uint64_t contiguous = 0;
  return impl_->Fetch(
      ref,
      [&](const FetchInfo& info) -> absl::StatusOr<Sink*> {
        absl::StatusOr<char*> base = allocate(info);
        if (!base.ok()) return base.status();
        if (*base == nullptr && info.total_bytes > 0) {
          return absl::InvalidArgumentError("the allocator returned no memory");
        }
        sink = std::make_unique<MemorySink>(*base);
        return sink.get();
      },
      &contiguous);
}

absl::StatusOr<FetchInfo> Client::FetchToFile(const std::string& ref, const std::string& path) {
  const std::string part = path + ".part";
  const bool resume = impl_->options.resume_files;
  std::unique_ptr<FileSink> sink;
  uint64_t contiguous = 0;
  absl::StatusOr<FetchInfo> info = impl_->Fetch(
      ref,
      [&](const FetchInfo& info) -> absl::StatusOr<Sink*> {
        absl::StatusOr<std::unique_ptr<FileSink>> s =
            FileSink::Create(part, info.total_bytes, resume);
        if (!s.ok()) return s.status();
        sink = *std::move(s);
        return sink.get();
      },
      &contiguous);
  if (!info.ok()) {
    if (sink != nullptr) {  // a failure before the file was opened leaves it as it was
      if (resume && contiguous > 0) {
        sink->KeepPrefix(contiguous);
        sink.reset();
      } else {
        sink.reset();
        ::unlink(part.c_str());
      }
    }
    return info.status();
  }
  if (impl_->options.sync_files) {
    if (absl::Status s = sink->Sync(); !s.ok()) return s;
  }
  sink.reset();
  if (::rename(part.c_str(), path.c_str()) != 0) {
    return absl::ErrnoToStatus(errno, absl::StrCat("rename ", part, " -> ", path));
  }
  return info;
}

}  // namespace weightgate
