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

// Streams one blob: manifest first, then chunks of the requested byte ranges.
class FetchReactor final : public grpc::ServerWriteReactor<FetchResponse> {
 public:
  FetchReactor(const StreamService::Options& options, grpc::CallbackServerContext* context,
               const weightgate::v1::FetchRequest* request)
      : options_(options),
        request_(*request),
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
    // Reading the blob may fault pages in from a slow volume: not on a gRPC
    // callback thread.
    options_.executor->Schedule([this] { NextChunk(); });
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
    if (request_.start_offset() > total) {
      Done(grpc::Status(grpc::StatusCode::OUT_OF_RANGE,
                        absl::StrCat("start_offset ", request_.start_offset(), " is past the end (",
                                     total, " bytes)")));
      return;
    }
    // Byte ranges to send, in blob order.
    if (request_.tensor_names().empty()) {
      ranges_.push_back({request_.start_offset(), total});
    } else {
      std::set<std::string> wanted(request_.tensor_names().begin(), request_.tensor_names().end());
      for (const auto& t : full.tensors()) {
        if (!wanted.erase(t.name())) continue;
        uint64_t begin = std::max<uint64_t>(t.offset(), request_.start_offset());
        if (begin < t.offset() + t.length()) ranges_.push_back({begin, t.offset() + t.length()});
      }
      if (!wanted.empty()) {
        Done(grpc::Status(grpc::StatusCode::NOT_FOUND,
                          absl::StrCat("no tensor '", *wanted.begin(), "' in ", request_.ref())));
        return;
      }
      std::sort(ranges_.begin(), ranges_.end());
    }
    // Per-stream memory is one chunk: clamp to the server's maximum.
    uint32_t max_chunk = std::max(kMinChunkBytes, options_.max_chunk_bytes);
    chunk_bytes_ = request_.chunk_bytes() == 0
                       ? std::min(kDefaultChunkBytes, max_chunk)
                       : std::clamp(request_.chunk_bytes(), kMinChunkBytes, max_chunk);
    auto* manifest = response_.mutable_manifest();
    *manifest = full;
    manifest->set_model_id(version->model_id());
    manifest->set_version(version->version());
    Write();
  }

  void NextChunk() {
    while (range_index_ < ranges_.size() &&
           ranges_[range_index_].first >= ranges_[range_index_].second) {
      ++range_index_;
    }
    if (range_index_ >= ranges_.size()) {
      Done(grpc::Status::OK);
      return;
    }
    auto& range = ranges_[range_index_];
    uint64_t n = std::min<uint64_t>(chunk_bytes_, range.second - range.first);
    std::string_view data = blob_->file->data().substr(range.first, n);
    auto* chunk = response_.mutable_chunk();
    chunk->set_offset(range.first);
    chunk->set_data(data.data(), data.size());
    chunk->set_crc32c(common::Crc32c(data));
    if (blob_->damaged()) {
      // The file under the mapping went away (GC on another replica, NFS):
      // the guard mapped zeros in place of the lost pages. End this stream.
      Done(grpc::Status(grpc::StatusCode::UNAVAILABLE,
                        absl::StrCat("blob ", blob_->manifest.blob_sha256(),
                                     " became unreadable while streaming; retry the fetch")));
      return;
    }
    range.first += n;
    sent_ += n;
    Write();
  }

  void Write() {
    options_.limits->Arm(watch_id_);
    StartWrite(&response_);
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
  const weightgate::v1::FetchRequest request_;
  const std::chrono::steady_clock::time_point start_;
  std::shared_ptr<const store::OpenBlob> blob_;  // keeps the mapping alive
  bool hit_ = false;
  std::vector<std::pair<uint64_t, uint64_t>> ranges_;
  size_t range_index_ = 0;
  uint32_t chunk_bytes_ = kDefaultChunkBytes;
  uint64_t sent_ = 0;
  FetchResponse response_;
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
    mu_.AwaitWithTimeout(absl::Condition(&stopping_), absl::FromChrono(options_.watch_poll));
  }
}

grpc::ServerWriteReactor<FetchResponse>* StreamService::FetchWeights(
    grpc::CallbackServerContext* context, const weightgate::v1::FetchRequest* request) {
  return new FetchReactor(options_, context, request);
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
