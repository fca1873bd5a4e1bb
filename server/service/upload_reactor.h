// UploadReactor receives a client stream of one header message followed by
// byte chunks into a staged file of the Store, then runs a completion
// function on the Executor with the header and the staged file. Disk writes
// (with the running sha256) and the completion run off the gRPC threads.
// Receiving and writing overlap: the next read starts while earlier chunks
// are still being hashed and written, in order, by one task at a time; at
// most kMaxPendingBytes wait (plus the chunk being read), so memory per
// upload stays bounded.
//
// Limits apply at the edge: a slot among --max_uploads is taken before the
// first read (RESOURCE_EXHAUSTED when none is free), every chunk's bytes are
// reserved against the staging total and the free-disk reserve before they
// are written, and a stream whose next message does not arrive within the
// idle timeout is cancelled, freeing its slot, staged file and buffers.
#ifndef WEIGHTGATE_SERVER_SERVICE_UPLOAD_REACTOR_H_
#define WEIGHTGATE_SERVER_SERVICE_UPLOAD_REACTOR_H_

#include <chrono>
#include <deque>
#include <functional>
#include <memory>
#include <string>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "grpcpp/grpcpp.h"
#include "server/service/auth.h"
#include "server/service/call_log.h"
#include "server/service/executor.h"
#include "server/service/limits.h"
#include "server/service/metrics.h"
#include "server/service/status_util.h"
#include "server/store/store.h"

namespace weightgate::service {

// What every upload stream needs; none of the pointers is owned.
struct UploadSetup {
  const char* method;  // metric label
  grpc::CallbackServerContext* context;
  store::Store* store;
  Metrics* metrics;
  const Authorizer* auth;
  Executor* executor;  // chunk writes
  Executor* heavy;     // the completion (parsing, tensor checks); bounded queue
  uint64_t max_bytes;
  Limits* limits;
  Role role;  // needed to call
};

// Request is RegisterModelRequest or UploadRequest (oneof header/chunk).
template <typename Request, typename Header>
class UploadReactor final : public grpc::ServerReadReactor<Request> {
 public:
  // Returns the RPC's final status; the response message is filled by it.
  using Complete = std::function<grpc::Status(const Header&, store::StagedFile&, const Caller&)>;

  UploadReactor(const UploadSetup& setup, Complete complete)
      : setup_(setup),
        complete_(std::move(complete)),
        log_(setup.metrics, setup.method, setup.context) {
    setup_.metrics->StreamStarted();
    grpc::Status auth = setup_.auth->Check(setup_.context, setup_.role, &caller_);
    log_.set_identity(caller_.identity);
    if (!auth.ok()) {
      Fail(auth);
      return;
    }
    grpc::Status slot = setup_.limits->AcquireUpload(setup_.context);
    if (!slot.ok()) {
      setup_.metrics->RecordLimited("uploads");
      Fail(slot);
      return;
    }
    have_slot_ = true;
    watch_id_ = setup_.limits->Watch(setup_.context, setup_.limits->options().idle_upload_timeout);
    ReadNext();
  }

  void OnReadDone(bool ok) override {
    setup_.limits->Disarm(watch_id_);
    if (!ok) {  // half-close (complete) or cancellation (not)
      if (setup_.limits->TimedOut(watch_id_)) {
        setup_.metrics->RecordTimeout("upload_idle");
        Fail(grpc::Status(grpc::StatusCode::DEADLINE_EXCEEDED,
                          "upload idle for longer than --idle_upload_timeout_ms"));
        return;
      }
      if (setup_.context->IsCancelled()) {
        Fail(grpc::Status(grpc::StatusCode::CANCELLED, "upload cancelled by the client"));
        return;
      }
      if (!have_header_) {
        Fail(grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "upload stream had no header"));
        return;
      }
      bool drained = false;
      {
        absl::MutexLock lock(&mu_);
        if (finishing_) return;  // the call is ending already
        half_closed_ = true;
        drained = !busy_;
        busy_ = true;  // the completion's, or still the writing task's
      }
      // Otherwise the writing task completes once the last chunk is written.
      if (drained) CompleteUpload();
      return;
    }
    if (!have_header_) {
      if (request_.msg_case() != Request::kHeader) {
        Fail(grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                          "the first upload message must be the header"));
        return;
      }
      header_ = request_.header();
      have_header_ = true;
      log_.set_ref(header_.model_id());
      if (header_.total_bytes() < 0 ||
          static_cast<uint64_t>(header_.total_bytes()) > setup_.max_bytes) {
        Fail(TooLarge());
        return;
      }
      // Creating the staging file touches the disk: not on a gRPC thread.
      setup_.executor->Schedule([this] {
        absl::StatusOr<std::unique_ptr<store::StagedFile>> staged = setup_.store->NewStagedFile();
        if (!staged.ok()) {
          Fail(ToGrpcStatus(staged.status()));
          return;
        }
        staged_ = *std::move(staged);
        ReadNext();
      });
      return;
    }
    if (request_.msg_case() != Request::kChunk) {
      Fail(grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "a second header in one upload"));
      return;
    }
    if (request_.chunk().size() > setup_.max_bytes - received_) {
      Fail(TooLarge());
      return;
    }
    received_ += request_.chunk().size();
    setup_.metrics->AddBytesIn(static_cast<double>(request_.chunk().size()));
    log_.add_bytes(request_.chunk().size());
    // The chunk's bytes move to the queue (no copy); request_ is free for
    // the next read.
    std::string bytes = std::move(*request_.mutable_chunk());
    bool start_writer = false;
    bool read_on = false;
    {
      absl::MutexLock lock(&mu_);
      if (finishing_) return;
      pending_bytes_ += bytes.size();
      pending_.push_back(std::move(bytes));
      start_writer = !busy_;
      busy_ = true;
      read_on = pending_bytes_ < kMaxPendingBytes;
      read_paused_ = !read_on;
    }
    if (start_writer) setup_.executor->Schedule([this] { WritePending(); });
    if (read_on) ReadNext();
  }

  void OnCancel() override {
    // The pending read (if any) completes with ok=false and ends the call.
  }

  void OnDone() override {
    if (watch_id_ != 0) setup_.limits->Unwatch(watch_id_);
    staged_.reset();  // unlinks an uncommitted staged file
    setup_.limits->ReleaseStaged(reserved_);
    if (have_slot_) setup_.limits->ReleaseUpload();
    setup_.metrics->StreamFinished();
    delete this;
  }

 private:
  void ReadNext() {
    setup_.limits->Arm(watch_id_);
    this->StartRead(&request_);
  }

  grpc::Status TooLarge() const {
    return grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED,
                        absl::StrCat("upload larger than the server's limit of ", setup_.max_bytes,
                                     " bytes (--max_upload_bytes)"));
  }

  // The validation queue is full: the client should come back later.
  grpc::Status Busy() const {
    setup_.context->AddTrailingMetadata("retry-after-ms", "1000");
    return grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED,
                        absl::StrCat("server busy: ", setup_.heavy->max_queued(),
                                     " validations already waiting (--max_pending_validations); "
                                     "retry in about 1 s"));
  }

  // Chunks received and not yet written, at most kMaxPendingBytes of them
  // before the next read waits for the writer.
  static constexpr uint64_t kMaxPendingBytes = uint64_t{8} << 20;

  // The one writing task: appends queued chunks in order until the queue is
  // empty, resuming a read that waited for room; completes the upload when
  // the stream ended meanwhile.
  void WritePending() ABSL_LOCKS_EXCLUDED(mu_) {
    for (;;) {
      mu_.Lock();
      if (finishing_) {
        // A failure arrived while we wrote: the call ends now that nothing
        // of ours runs any more.
        busy_ = false;
        EndCallAndUnlock();
        return;
      }
      if (pending_.empty()) {
        const bool complete = half_closed_;
        busy_ = complete;  // the completion takes over
        mu_.Unlock();
        // Otherwise the next chunk starts a new task.
        if (complete) CompleteUpload();
        return;
      }
      std::string bytes = std::move(pending_.front());
      pending_.pop_front();
      mu_.Unlock();
      // Room on disk first (statvfs may be slow on NFS: off the gRPC
      // thread), then the bytes.
      grpc::Status status = setup_.limits->ReserveStaged(setup_.context, bytes.size());
      if (status.ok()) {
        reserved_ += bytes.size();
        status = ToGrpcStatus(staged_->Append(bytes));
      } else {
        setup_.metrics->RecordLimited("staging");
      }
      if (!status.ok()) {
        TaskDone(status);
        return;
      }
      mu_.Lock();
      pending_bytes_ -= bytes.size();
      const bool read_on = read_paused_ && pending_bytes_ < kMaxPendingBytes && !finishing_;
      if (read_on) read_paused_ = false;
      mu_.Unlock();
      if (read_on) ReadNext();
    }
  }

  // Every byte is written: check the size, then hand the staged file to the
  // completion on the bounded heavy executor. REQUIRES: busy_ is ours.
  void CompleteUpload() {
    if (header_.total_bytes() > 0 &&
        staged_->size() != static_cast<uint64_t>(header_.total_bytes())) {
      TaskDone(
          grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                       absl::StrCat("upload incomplete: header announced ", header_.total_bytes(),
                                    " bytes, received ", staged_->size())));
      return;
    }
    bool queued = setup_.heavy->TrySchedule([this] {
      // No fsync: an upload is read back at once, and whatever of it is
      // committed (the normalised output, or the upload itself when it
      // already is canonical) is fsynced by AdoptContents.
      absl::Status finished = staged_->Finish(/*sync=*/false);
      TaskDone(finished.ok() ? complete_(header_, *staged_, caller_) : ToGrpcStatus(finished));
    });
    if (!queued) TaskDone(Busy());
  }

  // Ends the call with `status` (the first one decided wins). While a task
  // of ours (writing, completion) is scheduled or runs, that task ends the
  // call when it stops instead: OnDone deletes this reactor, which must not
  // happen under a running task.
  void Fail(const grpc::Status& status) ABSL_LOCKS_EXCLUDED(mu_) {
    mu_.Lock();
    if (finishing_) {
      mu_.Unlock();
      return;
    }
    finishing_ = true;
    final_ = status;
    if (busy_) {
      mu_.Unlock();
      return;
    }
    EndCallAndUnlock();
  }

  // The running task stops with `status`: the call ends with it, or with a
  // failure decided meanwhile.
  void TaskDone(const grpc::Status& status) ABSL_LOCKS_EXCLUDED(mu_) {
    mu_.Lock();
    busy_ = false;
    if (!finishing_) {
      finishing_ = true;
      final_ = status;
    }
    EndCallAndUnlock();
  }

  // Calls Finish(final_) once, after releasing mu_: OnDone may follow at
  // once and delete this reactor, mutex included.
  void EndCallAndUnlock() ABSL_UNLOCK_FUNCTION(mu_) {
    if (finished_) {
      mu_.Unlock();
      return;
    }
    finished_ = true;
    pending_.clear();
    grpc::Status status = final_;
    mu_.Unlock();
    log_.Finish(status);
    this->Finish(status);
  }

  UploadSetup setup_;
  Complete complete_;
  CallLog log_;
  Caller caller_;
  Request request_;
  Header header_;
  bool have_header_ = false;
  bool have_slot_ = false;
  uint64_t watch_id_ = 0;
  uint64_t received_ = 0;  // chunk bytes read so far (gRPC reactions only)
  uint64_t reserved_ = 0;  // touched by the writing task only
  std::unique_ptr<store::StagedFile> staged_;

  absl::Mutex mu_;
  std::deque<std::string> pending_ ABSL_GUARDED_BY(mu_);
  uint64_t pending_bytes_ ABSL_GUARDED_BY(mu_) = 0;
  bool busy_ ABSL_GUARDED_BY(mu_) = false;  // a writing or completion task is scheduled or runs
  bool read_paused_ ABSL_GUARDED_BY(mu_) = false;  // the next read waits for room
  bool half_closed_ ABSL_GUARDED_BY(mu_) = false;  // the client sent its last chunk
  bool finishing_ ABSL_GUARDED_BY(mu_) = false;    // final_ is decided
  bool finished_ ABSL_GUARDED_BY(mu_) = false;     // Finish() was called
  grpc::Status final_ ABSL_GUARDED_BY(mu_);
};

}  // namespace weightgate::service

#endif  // WEIGHTGATE_SERVER_SERVICE_UPLOAD_REACTOR_H_
