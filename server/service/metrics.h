// Metrics owns every Prometheus series weightgate exports (prefix
// `weightgate_`) and the HTTP exposer that serves them. Handlers call the
// Record* methods; none of them blocks.
//
// This class is thread-safe.
#ifndef WEIGHTGATE_SERVER_SERVICE_METRICS_H_
#define WEIGHTGATE_SERVER_SERVICE_METRICS_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "prometheus/counter.h"
#include "prometheus/exposer.h"
#include "prometheus/family.h"
#include "prometheus/gauge.h"
#include "prometheus/histogram.h"
#include "prometheus/registry.h"

namespace weightgate::service {

class Metrics final {
 public:
  // Serves /metrics on `listen` ("127.0.0.1:9464"); an empty address exports
  // nothing but still counts (tests).
  static absl::StatusOr<std::unique_ptr<Metrics>> Create(const std::string& listen);

  // One finished RPC: method is the short name ("ListModels"), code the
  // grpc status code name ("OK", "NOT_FOUND").
  void RecordRpc(const std::string& method, const std::string& code);
  // A validation or upload finished with `verdict` ("VALID", "NORMALIZED",
  // "INVALID"); `seconds` is the server-side time spent validating.
  void RecordValidation(const std::string& rpc, const std::string& verdict, double seconds);
  void RecordRejection(const std::string& reason);
  void AddBytesIn(double bytes);
  void AddBytesOut(double bytes);
  void StreamStarted();
  void StreamFinished();
  void RecordFetch(double seconds);
  void RecordCache(bool hit, double bytes);
  // A call cancelled by the watchdog ("upload_idle", "stalled_reader").
  void RecordTimeout(const std::string& kind);
  // A call refused by an edge limit ("uploads", "streams", "staging").
  void RecordLimited(const std::string& kind);
  void SetStoreBytes(double bytes);
  void SetModels(double count);

  prometheus::Registry& registry() { return *registry_; }

 private:
  Metrics() = default;

  std::shared_ptr<prometheus::Registry> registry_;
  std::unique_ptr<prometheus::Exposer> exposer_;
  prometheus::Family<prometheus::Counter>* rpcs_ = nullptr;
  prometheus::Family<prometheus::Counter>* validations_ = nullptr;
  prometheus::Family<prometheus::Counter>* rejections_ = nullptr;
  prometheus::Family<prometheus::Histogram>* validation_seconds_ = nullptr;
  prometheus::Histogram* fetch_seconds_ = nullptr;
  prometheus::Counter* bytes_in_ = nullptr;
  prometheus::Counter* bytes_out_ = nullptr;
  prometheus::Gauge* active_streams_ = nullptr;
  prometheus::Counter* cache_hits_ = nullptr;
  prometheus::Counter* cache_misses_ = nullptr;
  prometheus::Counter* cache_bytes_served_ = nullptr;
  prometheus::Gauge* store_bytes_ = nullptr;
  prometheus::Gauge* models_ = nullptr;
  prometheus::Family<prometheus::Counter>* timeouts_ = nullptr;
  prometheus::Family<prometheus::Counter>* rejected_busy_ = nullptr;
};

}  // namespace weightgate::service

#endif  // WEIGHTGATE_SERVER_SERVICE_METRICS_H_
