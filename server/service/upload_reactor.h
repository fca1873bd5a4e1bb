// UploadReactor receives a client stream of one header message followed by
// byte chunks into a staged file of the Store, then runs a completion
// function on the Executor with the header and the staged file. Disk writes
// and the completion run off the gRPC threads; exactly one read is in flight
// at a time, so memory per upload is one chunk.
#ifndef WEIGHTGATE_SERVER_SERVICE_UPLOAD_REACTOR_H_
#define WEIGHTGATE_SERVER_SERVICE_UPLOAD_REACTOR_H_

#include <chrono>
#include <functional>
#include <memory>
#include <string>

#include "absl/strings/str_cat.h"
#include "grpcpp/grpcpp.h"
#include "server/service/auth.h"
#include "server/service/executor.h"
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
  Executor* heavy;     // the completion (parsing, tensor checks)
  uint64_t max_bytes;
};

// Request is RegisterModelRequest or UploadRequest (oneof header/chunk).
template <typename Request, typename Header>
class UploadReactor final : public grpc::ServerReadReactor<Request> {
 public:
  // Returns the RPC's final status; the response message is filled by it.
  using Complete = std::function<grpc::Status(const Header&, store::StagedFile&)>;

  UploadReactor(const UploadSetup& setup, Complete complete)
      : setup_(setup), complete_(std::move(complete)) {
    setup_.metrics->StreamStarted();
    grpc::Status auth = setup_.auth->Check(setup_.context, Role::kWriter);
    if (!auth.ok()) {
      Fail(auth);
      return;
    }
    this->StartRead(&request_);
  }

  void OnReadDone(bool ok) override {
    if (!ok) {  // half-close (complete) or cancellation (not)
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
      setup_.heavy->Schedule([this] {
        // No fsync: an upload is read back at once, and whatever of it is
        // committed (the normalised output, or the upload itself when it
        // already is canonical) is fsynced by AdoptContents.
        absl::Status finished = staged_->Finish(/*sync=*/false);
        if (!finished.ok()) {
          Fail(ToGrpcStatus(finished));
          return;
        }
        Fail(complete_(header_, *staged_));
      });
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
      if (header_.total_bytes() < 0 ||
          static_cast<uint64_t>(header_.total_bytes()) > setup_.max_bytes) {
        Fail(TooLarge());
        return;
      }
      absl::StatusOr<std::unique_ptr<store::StagedFile>> staged = setup_.store->NewStagedFile();
      if (!staged.ok()) {
        Fail(ToGrpcStatus(staged.status()));
        return;
      }
      staged_ = *std::move(staged);
      this->StartRead(&request_);
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
    setup_.executor->Schedule([this] {
      absl::Status written = staged_->Append(request_.chunk());
      if (!written.ok()) {
        Fail(ToGrpcStatus(written));
        return;
      }
      this->StartRead(&request_);
    });
  }

  void OnDone() override {
    setup_.metrics->StreamFinished();
    delete this;
  }

 private:
  grpc::Status TooLarge() const {
    return grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED,
                        absl::StrCat("upload larger than the server's limit of ", setup_.max_bytes,
                                     " bytes (--max_upload_bytes)"));
  }

  void Fail(const grpc::Status& status) {
    setup_.metrics->RecordRpc(setup_.method, CodeName(status.error_code()));
    this->Finish(status);
  }

  UploadSetup setup_;
  Complete complete_;
  Request request_;
  Header header_;
  bool have_header_ = false;
  std::unique_ptr<store::StagedFile> staged_;
};

}  // namespace weightgate::service

#endif  // WEIGHTGATE_SERVER_SERVICE_UPLOAD_REACTOR_H_
