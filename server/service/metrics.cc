#include "server/service/metrics.h"

#include <exception>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace weightgate::service {
namespace {

const prometheus::Histogram::BucketBoundaries& LatencyBuckets() {
  static const prometheus::Histogram::BucketBoundaries kBuckets = {
      0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300};
  return kBuckets;
}

}  // namespace

absl::StatusOr<std::unique_ptr<Metrics>> Metrics::Create(const std::string& listen) {
  std::unique_ptr<Metrics> m(new Metrics());
  m->registry_ = std::make_shared<prometheus::Registry>();
  auto& reg = *m->registry_;
  m->rpcs_ = &prometheus::BuildCounter()
                  .Name("weightgate_rpcs_total")
                  .Help("Finished RPCs by method and gRPC status code")
                  .Register(reg);
  m->validations_ = &prometheus::BuildCounter()
                         .Name("weightgate_validations_total")
                         .Help("Checkpoint validations and uploads by RPC and verdict")
                         .Register(reg);
  m->rejections_ = &prometheus::BuildCounter()
                        .Name("weightgate_rejections_total")
                        .Help("INVALID verdicts by reason (one checkpoint may have several)")
                        .Register(reg);
  m->validation_seconds_ =
      &prometheus::BuildHistogram()
           .Name("weightgate_validation_seconds")
           .Help("Server-side time to read, normalise and validate a checkpoint")
           .Register(reg);
  m->fetch_seconds_ = &prometheus::BuildHistogram()
                           .Name("weightgate_fetch_seconds")
                           .Help("FetchWeights stream duration")
                           .Register(reg)
                           .Add({}, LatencyBuckets());
  m->bytes_in_ = &prometheus::BuildCounter()
                      .Name("weightgate_bytes_in_total")
                      .Help("Checkpoint bytes received")
                      .Register(reg)
                      .Add({});
  m->bytes_out_ = &prometheus::BuildCounter()
                       .Name("weightgate_bytes_out_total")
                       .Help("Weight bytes streamed to clients")
                       .Register(reg)
                       .Add({});
  m->active_streams_ = &prometheus::BuildGauge()
                            .Name("weightgate_active_streams")
                            .Help("Streaming RPCs in progress")
                            .Register(reg)
                            .Add({});
  auto& cache = prometheus::BuildCounter()
                    .Name("weightgate_cache_requests_total")
                    .Help("Blob cache lookups by result")
                    .Register(reg);
  m->cache_hits_ = &cache.Add({{"result", "hit"}});
  m->cache_misses_ = &cache.Add({{"result", "miss"}});
  m->cache_bytes_served_ = &prometheus::BuildCounter()
                                .Name("weightgate_cache_bytes_total")
                                .Help("Bytes served from cached (open) blobs")
                                .Register(reg)
                                .Add({});
  m->store_bytes_ = &prometheus::BuildGauge()
                         .Name("weightgate_store_bytes")
                         .Help("Bytes of blobs in the store")
                         .Register(reg)
                         .Add({});
  m->models_ = &prometheus::BuildGauge()
                    .Name("weightgate_models")
                    .Help("Registered models")
                    .Register(reg)
                    .Add({});
  m->timeouts_ = &prometheus::BuildCounter()
                      .Name("weightgate_timeouts_total")
                      .Help(
                          "Calls cancelled for making no progress, by kind "
                          "(upload_idle, stalled_reader)")
                      .Register(reg);
  m->rejected_busy_ = &prometheus::BuildCounter()
                           .Name("weightgate_limited_total")
                           .Help("Calls refused with RESOURCE_EXHAUSTED by an edge limit, by kind")
                           .Register(reg);
  for (const char* kind : {"upload_idle", "stalled_reader"}) m->timeouts_->Add({{"kind", kind}});
  // Series that rate() and the dashboard need from the first scrape, at zero.
  for (const char* rpc : {"ValidateCheckpoint", "UploadCheckpoint"}) {
    for (const char* verdict : {"VALID", "NORMALIZED", "INVALID"}) {
      m->validations_->Add({{"rpc", rpc}, {"verdict", verdict}});
    }
    m->validation_seconds_->Add({{"rpc", rpc}}, LatencyBuckets());
  }
  for (const char* reason : {"unreadable", "not_a_checkpoint", "unsafe_pickle", "missing_keys",
                             "unexpected_keys", "shape_mismatch", "dtype_mismatch", "non_finite",
                             "no_state_dict", "smoke_test_failed", "too_large"}) {
    m->rejections_->Add({{"reason", reason}});
  }
  if (!listen.empty()) {
    try {
      m->exposer_ = std::make_unique<prometheus::Exposer>(listen, 2);
    } catch (const std::exception& e) {
      return absl::UnavailableError(
          absl::StrCat("cannot serve metrics on ", listen, ": ", e.what()));
    }
    m->exposer_->RegisterCollectable(m->registry_);
  }
  return m;
}

void Metrics::RecordRpc(const std::string& method, const std::string& code) {
  rpcs_->Add({{"method", method}, {"code", code}}).Increment();
}

void Metrics::RecordValidation(const std::string& rpc, const std::string& verdict, double seconds) {
  validations_->Add({{"rpc", rpc}, {"verdict", verdict}}).Increment();
  validation_seconds_->Add({{"rpc", rpc}}, LatencyBuckets()).Observe(seconds);
}

void Metrics::RecordRejection(const std::string& reason) {
  rejections_->Add({{"reason", reason}}).Increment();
}

void Metrics::AddBytesIn(double bytes) { bytes_in_->Increment(bytes); }
void Metrics::AddBytesOut(double bytes) { bytes_out_->Increment(bytes); }
void Metrics::StreamStarted() { active_streams_->Increment(); }
void Metrics::StreamFinished() { active_streams_->Decrement(); }
void Metrics::RecordFetch(double seconds) { fetch_seconds_->Observe(seconds); }

void Metrics::RecordCache(bool hit, double bytes) {
  (hit ? cache_hits_ : cache_misses_)->Increment();
  cache_bytes_served_->Increment(bytes);
}

void Metrics::RecordTimeout(const std::string& kind) {
  timeouts_->Add({{"kind", kind}}).Increment();
}

void Metrics::RecordLimited(const std::string& kind) {
  rejected_busy_->Add({{"kind", kind}}).Increment();
}

void Metrics::SetStoreBytes(double bytes) { store_bytes_->Set(bytes); }
void Metrics::SetModels(double count) { models_->Set(count); }

}  // namespace weightgate::service
