#include "server/service/stream_service.h"

#include <algorithm>
#include <map>

#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "common/crc32c.h"
#include "common/model_ref.h"
#include "common/time_util.h"
#include "server/service/call_log.h"
#include "server/service/status_util.h"

namespace weightgate::service {
namespace {

using weightgate::v1::FetchResponse;
using weightgate::v1::WatchEvent;

constexpr uint32_t kDefaultChunkBytes = 1 << 20;
constexpr uint32_t kMinChunkBytes = 4 << 10;
constexpr uint32_t kMaxChunkBytes = 8 << 20;

template <typename Response>
class FinishedWriter final : public grpc::ServerWriteReactor<Response> {
 public:
  explicit FinishedWriter(const grpc::Status& status) { this->Finish(status); }
  void OnDone() override { delete this; }
};

// Appends `v` as a protobuf varint.
void AppendVarint(std::string* out, uint64_t v) {
  while (v >= 0x80) {
    out->push_back(static_cast<char>((v & 0x7F) | 0x80));
    v >>= 7;
  }
  out->push_back(static_cast<char>(v));
}

// A chunk's bytes are sent straight from the blob's mapping: the slice holds a
// reference to the blob until gRPC has written it out, so an evicted blob
// stays mapped for as long as the transport needs its bytes.
void ReleaseBlob(void* holder) {
  delete static_cast<std::shared_ptr<const store::OpenBlob>*>(holder);
}

// FetchResponse{chunk: Chunk{offset, crc32c, data}} as two slices: a few
// header bytes, then the blob's own bytes (no copy). Fields may come in any
// order on the wire; `data` goes last so the payload is one slice.
grpc::ByteBuffer ChunkMessage(const std::shared_ptr<const store::OpenBlob>& blob, uint64_t offset,
                              std::string_view data, uint32_t crc) {
  std::string inner;
  inner.push_back(0x08);  // Chunk.offset, varint
  AppendVarint(&inner, offset);
  inner.push_back(0x18);  // Chunk.crc32c, varint
  AppendVarint(&inner, crc);
  inner.push_back(0x12);  // Chunk.data, length-delimited
  AppendVarint(&inner, data.size());
  std::string head;
  head.push_back(0x12);  // FetchResponse.chunk, length-delimited
  AppendVarint(&head, inner.size() + data.size());
  head += inner;
  grpc::Slice slices[2] = {
      grpc::Slice(head),
      grpc::Slice(const_cast<char*>(data.data()), data.size(), &ReleaseBlob,
                  new std::shared_ptr<const store::OpenBlob>(blob)),
  };
  return grpc::ByteBuffer(slices, 2);
}

// Names, in `manifest`, the tensors the upload had tied (the report's shared
// storages) whose dtype, shape and bytes equal an earlier member's. Only for
// blobs stored before tie records existed (they hold a tied tensor once per
// name); a blob with tie records already names its ties in the manifest.
void MarkTies(const weightgate::v1::ValidationReport& report, std::string_view blob,
              weightgate::v1::Manifest* manifest) {
  if (report.shared_storages().empty()) return;
  for (const auto& t : manifest->tensors()) {
    if (!t.tied_to().empty()) return;
  }
  std::map<std::string, weightgate::v1::TensorEntry*> by_name;
  for (auto& t : *manifest->mutable_tensors()) by_name[t.name()] = &t;
  auto bytes = [&](const weightgate::v1::TensorEntry& t) -> std::string_view {
    if (t.offset() > blob.size() || t.length() > blob.size() - t.offset()) return {};
    return blob.substr(t.offset(), t.length());
  };
  for (const auto& group : report.shared_storages()) {
    std::vector<weightgate::v1::TensorEntry*> members;
    for (const std::string& name : group.names()) {
      auto it = by_name.find(name);
      if (it == by_name.end()) continue;
      weightgate::v1::TensorEntry* t = it->second;
      for (const weightgate::v1::TensorEntry* first : members) {
        if (first->tied_to().empty() && first->dtype() == t->dtype() &&
            std::equal(first->shape().begin(), first->shape().end(), t->shape().begin(),
                       t->shape().end()) &&
            first->length() == t->length() && bytes(*first) == bytes(*t)) {
          t->set_tied_to(first->name());
          break;
        }
      }
      members.push_back(t);
    }
  }
}

// Streams one blob: manifest first, then chunks of the requested byte ranges.
// Registered as a raw method so chunk payloads can be slices of the mapping.
class FetchReactor final : public grpc::ServerWriteReactor<grpc::ByteBuffer> {
 public:
  FetchReactor(const StreamService::Options& options, ChunkCrcCache* crc_cache,
               grpc::CallbackServerContext* context, const grpc::ByteBuffer* request)
      : options_(options),
        crc_cache_(crc_cache),
        request_(ParseRequest(request, &request_ok_)),
        start_(std::chrono::steady_clock::now()),
        log_(options.metrics, "FetchWeights", context) {
    options_.metrics->StreamStarted();
    log_.set_ref(request_.ref());
    Caller caller;
    grpc::Status auth = options_.auth->Check(context, Role::kReader, &caller);
    log_.set_identity(caller.identity);
    if (!auth.ok()) {
      Done(auth);
      return;
    }
    if (!request_ok_) {
      Done(grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "malformed FetchRequest"));
      return;
    }
    if (grpc::Status slot = options_.limits->AcquireStream(context); !slot.ok()) {
      options_.metrics->RecordLimited("streams");
      Done(slot);
      return;
    }
    have_slot_ = true;
    watch_id_ = options_.limits->Watch(context, options_.limits->options().stalled_reader_timeout);
    // Resolving reads metadata files: off the gRPC thread.
    options_.executor->Schedule([this] { Begin(); });
  }

  void OnWriteDone(bool ok) override {
    options_.limits->Disarm(watch_id_);
    if (!ok) {  // the client went away, or never took the chunk in time
      if (options_.limits->TimedOut(watch_id_)) {
        options_.metrics->RecordTimeout("stalled_reader");
        Done(grpc::Status(grpc::StatusCode::DEADLINE_EXCEEDED,
                          "client left a chunk unread longer than --stalled_reader_timeout_ms"));
        return;
      }
      Done(grpc::Status(grpc::StatusCode::CANCELLED, "client cancelled the fetch"));
      return;
    }
    // Computing a chunk's CRC reads the blob, which may fault pages in from a
    // slow volume: not on a gRPC callback thread. A chunk whose CRC is known
    // (every chunk after the first fetch of a blob) is sent from here,
    // without a thread hop per chunk.
    if (NextCrcKnown()) {
      NextChunk();
    } else {
      options_.executor->Schedule([this] { NextChunk(); });
    }
  }

  void OnCancel() override {
    // The write in flight completes with ok=false and ends the stream.
  }

  void OnDone() override {
    if (watch_id_ != 0) options_.limits->Unwatch(watch_id_);
    blob_.reset();
    if (have_slot_) options_.limits->ReleaseStream();
    options_.metrics->StreamFinished();
    delete this;
  }

 private:
  static weightgate::v1::FetchRequest ParseRequest(const grpc::ByteBuffer* raw, bool* ok) {
    std::vector<grpc::Slice> slices;
    std::string bytes;
    if (raw->Dump(&slices).ok()) {
      for (const grpc::Slice& s : slices) {
        bytes.append(reinterpret_cast<const char*>(s.begin()), s.size());
      }
    }
    weightgate::v1::FetchRequest request;
    *ok = request.ParseFromString(bytes);
    return request;
  }

  void Begin() {
    absl::StatusOr<weightgate::v1::Version> version = options_.store->Resolve(request_.ref());
    if (!version.ok()) {
      Done(ToGrpcStatus(version.status()));
      return;
    }
    bool hit = false;
    absl::StatusOr<std::shared_ptr<const store::OpenBlob>> blob =
        options_.cache->Get(version->blob_sha256(), &hit);
    if (!blob.ok()) {
      Done(ToGrpcStatus(blob.status()));
      return;
    }
    blob_ = *std::move(blob);
    hit_ = hit;
    const auto& full = blob_->manifest;
    uint64_t total = full.total_bytes();
    uint64_t start = request_.start_offset();
    uint64_t end = request_.end_offset() == 0 ? total : request_.end_offset();
    if (end > total || start > end) {
      Done(grpc::Status(grpc::StatusCode::OUT_OF_RANGE,
                        absl::StrCat("byte range [", start, ", ", end, ") is not within the ",
                                     total, " bytes of ", request_.ref())));
      return;
    }
    // Byte ranges to send, in blob order.
    if (request_.tensor_names().empty()) {
      ranges_.push_back({start, end});
    } else {
      std::set<std::string> wanted(request_.tensor_names().begin(), request_.tensor_names().end());
      for (const auto& t : full.tensors()) {
        if (!wanted.erase(t.name())) continue;
        uint64_t begin = std::max<uint64_t>(t.offset(), start);
        uint64_t stop = std::min<uint64_t>(t.offset() + t.length(), end);
        if (begin < stop) ranges_.push_back({begin, stop});
      }
      if (!wanted.empty()) {
        Done(grpc::Status(grpc::StatusCode::NOT_FOUND,
                          absl::StrCat("no tensor '", *wanted.begin(), "' in ", request_.ref())));
        return;
      }
      // A tied tensor's range is its partner's: asking for both sends it once.
      std::sort(ranges_.begin(), ranges_.end());
      ranges_.erase(std::unique(ranges_.begin(), ranges_.end()), ranges_.end());
    }
    // Per-stream memory is one chunk: clamp to the server's maximum.
    uint32_t max_chunk = std::max(kMinChunkBytes, options_.max_chunk_bytes);
    chunk_bytes_ = request_.chunk_bytes() == 0
                       ? std::min(kDefaultChunkBytes, max_chunk)
                       : std::clamp(request_.chunk_bytes(), kMinChunkBytes, max_chunk);
    crcs_ = crc_cache_->For(version->blob_sha256(), total, chunk_bytes_);
    FetchResponse response;
    auto* manifest = response.mutable_manifest();
    *manifest = full;
    manifest->set_model_id(version->model_id());
    manifest->set_version(version->version());
    MarkTies(version->report(), blob_->file->data(), manifest);
    bool own = false;
    grpc::Status s = grpc::SerializationTraits<FetchResponse>::Serialize(response, &buffer_, &own);
    if (!s.ok()) {
      Done(s);
      return;
    }
    Write();
  }

  void SkipEmptyRanges() {
    while (range_index_ < ranges_.size() &&
           ranges_[range_index_].first >= ranges_[range_index_].second) {
      ++range_index_;
    }
  }

  // The next chunk of `range`: its length, and whether it is a whole
  // aligned chunk (whose CRC crcs_ shares across streams). Chunks are
  // aligned to chunk_bytes_ in the blob (a range that starts mid-chunk sends
  // a short first one).
  struct Extent {
    uint64_t bytes;
    bool whole;
  };
  Extent NextExtent(const std::pair<uint64_t, uint64_t>& range) const {
    uint64_t n =
        std::min<uint64_t>(chunk_bytes_ - range.first % chunk_bytes_, range.second - range.first);
    bool whole = range.first % chunk_bytes_ == 0 &&
                 (n == chunk_bytes_ || range.first + n == blob_->file->size());
    return {n, whole};
  }

  // Whether the next chunk is a whole one with a known CRC (or there is none).
  bool NextCrcKnown() {
    SkipEmptyRanges();
    if (range_index_ >= ranges_.size()) return true;
    const auto& range = ranges_[range_index_];
    return NextExtent(range).whole && crcs_->Known(range.first / chunk_bytes_);
  }

  void NextChunk() {
    SkipEmptyRanges();
    if (range_index_ >= ranges_.size()) {
      Done(grpc::Status::OK);
      return;
    }
    auto& range = ranges_[range_index_];
    const auto [n, whole] = NextExtent(range);
    std::string_view data = blob_->file->data().substr(range.first, n);
    uint32_t crc = whole ? crcs_->Get(range.first / chunk_bytes_, data) : common::Crc32c(data);
    if (blob_->damaged()) {
      // The file under the mapping went away (GC on another replica, NFS):
      // the guard mapped zeros in place of the lost pages. End this stream.
      Done(grpc::Status(grpc::StatusCode::UNAVAILABLE,
                        absl::StrCat("blob ", blob_->manifest.blob_sha256(),
                                     " became unreadable while streaming; retry the fetch")));
      return;
    }
    buffer_ = ChunkMessage(blob_, range.first, data, crc);
    range.first += n;
    sent_ += n;
    Write();
  }

  void Write() {
    options_.limits->Arm(watch_id_);
    StartWrite(&buffer_);
  }

  void Done(const grpc::Status& status) {
    log_.add_bytes(sent_);
    log_.Finish(status);
    if (status.ok()) {
      options_.metrics->AddBytesOut(static_cast<double>(sent_));
      options_.metrics->RecordCache(hit_, static_cast<double>(sent_));
      options_.metrics->RecordFetch(
          std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count());
    }
    Finish(status);
  }

  const StreamService::Options& options_;
  ChunkCrcCache* const crc_cache_;
  std::shared_ptr<ChunkCrcs> crcs_;
  bool request_ok_ = false;  // set by ParseRequest in the initialiser list
  const weightgate::v1::FetchRequest request_;
  const std::chrono::steady_clock::time_point start_;
  std::shared_ptr<const store::OpenBlob> blob_;  // keeps the mapping alive
  bool hit_ = false;
  std::vector<std::pair<uint64_t, uint64_t>> ranges_;
  size_t range_index_ = 0;
  uint32_t chunk_bytes_ = kDefaultChunkBytes;
  uint64_t sent_ = 0;
  grpc::ByteBuffer buffer_;  // the message being written
  CallLog log_;
  bool have_slot_ = false;
  uint64_t watch_id_ = 0;
};

}  // namespace

// One watch stream. The poller thread calls Poll(); at most one write is in
// flight, and an alias that moves twice while a write is in flight is sent
// once, at its newest version.
class WatchReactor final : public grpc::ServerWriteReactor<WatchEvent> {
 public:
  // `log` accounts for the call; the caller took a stream slot for it.
  WatchReactor(StreamService* service, std::string model_id, std::string alias,
               std::unique_ptr<CallLog> log)
      : service_(service),
        model_id_(std::move(model_id)),
        alias_(std::move(alias)),
        log_(std::move(log)) {
    service_->options_.metrics->StreamStarted();
  }

  // Called by the poller (never concurrently with itself).
  const std::string& model_id() const { return model_id_; }

  // `model` is the model as just read from the store.
  void Poll(const absl::StatusOr<weightgate::v1::Model>& model) ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    if (finished_) return;
    if (!model.ok()) {
      if (absl::IsNotFound(model.status())) FinishLocked(ToGrpcStatus(model.status()));
      return;  // transient read errors: try again next poll
    }
    auto it = model->aliases().find(alias_);
    int64_t version = it == model->aliases().end() ? 0 : it->second;
    if (version == last_sent_ || version == 0 || writing_) return;
    event_.set_model_id(model_id_);
    event_.set_alias(alias_);
    event_.set_version(version);
    event_.set_previous_version(last_sent_);
    event_.set_unix_ms(common::NowMs());
    last_sent_ = version;
    writing_ = true;
    StartWrite(&event_);
  }

  void OnWriteDone(bool ok) override ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    writing_ = false;
    if (!ok) FinishLocked(grpc::Status(grpc::StatusCode::CANCELLED, "client went away"));
  }

  void OnCancel() override ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    FinishLocked(grpc::Status(grpc::StatusCode::CANCELLED, "watch cancelled"));
  }

  void Stop() ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    FinishLocked(grpc::Status::OK);
  }

  void OnDone() override {
    service_->options_.limits->ReleaseStream();
    service_->options_.metrics->StreamFinished();
    done_.store(true);
  }

  bool done() const { return done_.load(); }

 private:
  void FinishLocked(const grpc::Status& status) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (finished_) return;
    finished_ = true;
    log_->Finish(status);
    Finish(status);
  }

  StreamService* const service_;
  const std::string model_id_;
  const std::string alias_;
  absl::Mutex mu_;
  std::unique_ptr<CallLog> log_ ABSL_GUARDED_BY(mu_);
  WatchEvent event_ ABSL_GUARDED_BY(mu_);
  int64_t last_sent_ ABSL_GUARDED_BY(mu_) = 0;
  bool writing_ ABSL_GUARDED_BY(mu_) = false;
  bool finished_ ABSL_GUARDED_BY(mu_) = false;
  std::atomic<bool> done_{false};
};

StreamService::StreamService(const Options& options) : options_(options) {
  poller_ = std::thread([this] { PollLoop(); });
}

StreamService::~StreamService() {
  StopWatches();
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  poller_.join();
  // The server has shut down before its services are destroyed, so every
  // stream is over.
  for (WatchReactor* w : watches_) delete w;
}

void StreamService::StopWatches() {
  absl::MutexLock lock(&mu_);
  for (WatchReactor* w : watches_) w->Stop();
}

void StreamService::ModelChanged(const std::string& model_id) {
  absl::MutexLock lock(&mu_);
  if (watches_.empty()) return;
  changed_ = true;  // PollLoop's Await re-checks its condition on unlock
}

void StreamService::PollLoop() {
  absl::MutexLock lock(&mu_);
  for (;;) {
    // Reactors whose stream is over are deleted here, not in OnDone: OnDone
    // may run inline inside Finish() while locks are held.
    for (auto it = watches_.begin(); it != watches_.end();) {
      if ((*it)->done()) {
        delete *it;
        it = watches_.erase(it);
      } else {
        ++it;
      }
    }
    if (stopping_) return;
    // Each watched model is read once per round, however many workers watch
    // it, and without mu_: WatchModel (a gRPC thread) must not wait on disk.
    // Only this thread deletes reactors, so the pointers stay valid meanwhile.
    std::set<std::string> ids;
    for (WatchReactor* w : watches_) ids.insert(w->model_id());
    mu_.Unlock();
    std::map<std::string, absl::StatusOr<weightgate::v1::Model>> models;
    for (const std::string& id : ids) models.emplace(id, options_.store->GetModel(id));
    mu_.Lock();
    for (WatchReactor* w : watches_) {
      auto it = models.find(w->model_id());
      if (it != models.end()) w->Poll(it->second);  // watches added meanwhile: next round
    }
    mu_.AwaitWithTimeout(absl::Condition(this, &StreamService::StoppingOrChanged),
                         absl::FromChrono(options_.watch_poll));
    changed_ = false;
  }
}

grpc::ServerWriteReactor<grpc::ByteBuffer>* StreamService::FetchWeights(
    grpc::CallbackServerContext* context, const grpc::ByteBuffer* request) {
  return new FetchReactor(options_, &crc_cache_, context, request);
}

grpc::ServerWriteReactor<WatchEvent>* StreamService::WatchModel(
    grpc::CallbackServerContext* context, const weightgate::v1::WatchRequest* request) {
  auto log = std::make_unique<CallLog>(options_.metrics, "WatchModel", context);
  log->set_ref(request->ref());
  Caller caller;
  grpc::Status auth = options_.auth->Check(context, Role::kReader, &caller);
  log->set_identity(caller.identity);
  absl::StatusOr<common::ParsedRef> ref = common::ParseRef(request->ref());
  if (auth.ok() && !ref.ok()) auth = ToGrpcStatus(ref.status());
  if (auth.ok() && ref->version != 0) {
    auth = grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                        "watch takes MODEL or MODEL@ALIAS; a version number never moves");
  }
  if (auth.ok()) {
    auth = options_.limits->AcquireStream(context);
    if (!auth.ok()) options_.metrics->RecordLimited("streams");
  }
  if (!auth.ok()) {
    log->Finish(auth);
    return new FinishedWriter<WatchEvent>(auth);
  }
  auto* watch = new WatchReactor(this, ref->model_id, ref->alias, std::move(log));
  absl::MutexLock lock(&mu_);
  if (stopping_) {
    watch->Stop();
  } else {
    watches_.insert(watch);
  }
  return watch;
}

}  // namespace weightgate::service
