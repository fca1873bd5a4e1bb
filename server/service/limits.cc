#include "server/service/limits.h"

#include <malloc.h>
#include <sys/statvfs.h>

#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/time.h"

namespace weightgate::service {
namespace {

constexpr int kRetryAfterMs = 1000;

}  // namespace

Limits::Limits(const Options& options) : options_(options) {
  watchdog_ = std::thread([this] { Loop(); });
}

Limits::~Limits() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  watchdog_.join();
}

grpc::Status Limits::Busy(grpc::CallbackServerContext* context, const std::string& what) const {
  context->AddTrailingMetadata("retry-after-ms", std::to_string(kRetryAfterMs));
  return grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED,
                      absl::StrCat("server busy: ", what, "; retry in ", kRetryAfterMs / 1000,
                                   " s (retry-after-ms trailer)"));
}

grpc::Status Limits::AcquireUpload(grpc::CallbackServerContext* context) {
  {
    absl::MutexLock lock(&mu_);
    if (uploads_ < options_.max_uploads) {
      ++uploads_;
      return grpc::Status::OK;
    }
  }
  return Busy(context, absl::StrCat(options_.max_uploads, " uploads in progress (--max_uploads)"));
}

void Limits::ReleaseUpload() {
  absl::MutexLock lock(&mu_);
  --uploads_;
}

grpc::Status Limits::AcquireStream(grpc::CallbackServerContext* context) {
  {
    absl::MutexLock lock(&mu_);
    if (streams_ < options_.max_streams) {
      ++streams_;
      return grpc::Status::OK;
    }
  }
  return Busy(context,
              absl::StrCat(options_.max_streams, " fetch/watch streams open (--max_streams)"));
}

void Limits::ReleaseStream() {
  absl::MutexLock lock(&mu_);
  --streams_;
}

grpc::Status Limits::ReserveStaged(grpc::CallbackServerContext* context, uint64_t bytes) {
  struct statvfs fs;
  uint64_t free_bytes = UINT64_MAX;
  if (!options_.store_root.empty() && ::statvfs(options_.store_root.c_str(), &fs) == 0) {
    free_bytes = static_cast<uint64_t>(fs.f_bavail) * fs.f_frsize;
  }
  if (bytes > free_bytes || free_bytes - bytes < options_.min_free_bytes) {
    return Busy(context, absl::StrCat("the store's filesystem would fall below its reserve of ",
                                      options_.min_free_bytes, " free bytes (--min_free_bytes)"));
  }
  absl::MutexLock lock(&mu_);
  if (bytes > options_.max_staged_bytes - std::min(staged_, options_.max_staged_bytes)) {
    return Busy(context,
                absl::StrCat("uploads in flight already stage ", staged_, " bytes of at most ",
                             options_.max_staged_bytes, " (--max_staged_bytes)"));
  }
  staged_ += bytes;
  return grpc::Status::OK;
}

void Limits::ReleaseStaged(uint64_t bytes) {
  absl::MutexLock lock(&mu_);
  staged_ -= std::min(staged_, bytes);
}

uint64_t Limits::staged_bytes() const {
  absl::MutexLock lock(&mu_);
  return staged_;
}

uint64_t Limits::Watch(grpc::CallbackServerContext* context, std::chrono::milliseconds timeout) {
  absl::MutexLock lock(&mu_);
  uint64_t id = next_id_++;
  watched_.emplace(id, Watched{context, timeout});
  return id;
}

void Limits::Arm(uint64_t id) {
  absl::MutexLock lock(&mu_);
  auto it = watched_.find(id);
  if (it != watched_.end()) it->second.deadline = Clock::now() + it->second.timeout;
}

void Limits::Disarm(uint64_t id) {
  absl::MutexLock lock(&mu_);
  auto it = watched_.find(id);
  if (it != watched_.end()) it->second.deadline = Clock::time_point::max();
}

bool Limits::TimedOut(uint64_t id) const {
  absl::MutexLock lock(&mu_);
  auto it = watched_.find(id);
  return it != watched_.end() && it->second.timed_out;
}

void Limits::Unwatch(uint64_t id) {
  absl::MutexLock lock(&mu_);
  // While the watchdog cancels this call its context must stay valid: wait,
  // unless the cancellation runs this call's reactions inline right here.
  if (std::this_thread::get_id() != watchdog_.get_id()) {
    auto not_cancelling = [this, id]()
                              ABSL_SHARED_LOCKS_REQUIRED(mu_) { return cancelling_ != id; };
    mu_.Await(absl::Condition(&not_cancelling));
  }
  watched_.erase(id);
}

uint64_t Limits::timeouts() const {
  absl::MutexLock lock(&mu_);
  return timeouts_;
}

void Limits::Loop() {
  absl::MutexLock lock(&mu_);
  bool trim = false;
  while (!stopping_) {
    mu_.AwaitWithTimeout(absl::Condition(&stopping_), absl::FromChrono(options_.watchdog_period));
    if (stopping_) break;
    Clock::time_point now = Clock::now();
    std::vector<std::pair<uint64_t, grpc::CallbackServerContext*>> expired;
    for (auto& [id, w] : watched_) {
      if (w.timed_out || w.deadline > now) continue;
      w.timed_out = true;
      ++timeouts_;
      expired.emplace_back(id, w.context);
    }
    for (const auto& [id, context] : expired) {
      if (!watched_.count(id)) continue;  // finished meanwhile
      // TryCancel may run the call's reactions inline (they take mu_):
      // cancel without the lock, with Unwatch holding off until done.
      cancelling_ = id;
      mu_.Unlock();
      context->TryCancel();
      mu_.Lock();
      cancelling_ = 0;
      trim = true;
    }
    if (trim && watched_.empty()) {
      // The cancelled calls' buffers are freed; hand the pages back.
      ::malloc_trim(0);
      trim = false;
    }
  }
}

}  // namespace weightgate::service
