// UploadReactor receives a client stream of one header message followed by
// byte chunks into a staged file of the Store, then runs a completion
// function on the Executor with the header and the staged file. Disk writes
// and the completion run off the gRPC threads; exactly one read is in flight
// at a time, so memory per upload is one chunk.
//
// Limits apply at the edge: a slot among --max_uploads is taken before the
// first read (RESOURCE_EXHAUSTED when none is free), every chunk's bytes are
// reserved against the staging total and the free-disk reserve before they
// are written, and a stream whose next message does not arrive within the
// idle timeout is cancelled, freeing its slot, staged file and buffers.
#ifndef WEIGHTGATE_SERVER_SERVICE_UPLOAD_REACTOR_H_
#define WEIGHTGATE_SERVER_SERVICE_UPLOAD_REACTOR_H_

#include <chrono>
#include <functional>
#include <memory>
#include <string>

#include "absl/strings/str_cat.h"
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
      if (header_.total_bytes() > 0 &&
          staged_->size() != static_cast<uint64_t>(header_.total_bytes())) {
        Fail(
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
        if (!finished.ok()) {
          Fail(ToGrpcStatus(finished));
          return;
        }
        Fail(complete_(header_, *staged_, caller_));
      });
      if (!queued) Fail(Busy());
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
    if (request_.chunk().size() > setup_.max_bytes - staged_->size()) {
      Fail(TooLarge());
      return;
    }
    setup_.metrics->AddBytesIn(static_cast<double>(request_.chunk().size()));
    log_.add_bytes(request_.chunk().size());
    setup_.executor->Schedule([this] {
      // Room on disk first (statvfs may be slow on NFS: off the gRPC thread),
      // then the bytes.
      grpc::Status room = setup_.limits->ReserveStaged(setup_.context, request_.chunk().size());
      if (!room.ok()) {
        setup_.metrics->RecordLimited("staging");
        Fail(room);
        return;
      }
      reserved_ += request_.chunk().size();
      absl::Status written = staged_->Append(request_.chunk());
      if (!written.ok()) {
        Fail(ToGrpcStatus(written));
        return;
      }
      ReadNext();
    });
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

  void Fail(const grpc::Status& status) {
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
  uint64_t reserved_ = 0;
  std::unique_ptr<store::StagedFile> staged_;
};

}  // namespace weightgate::service

#endif  // WEIGHTGATE_SERVER_SERVICE_UPLOAD_REACTOR_H_
