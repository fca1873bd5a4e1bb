// CallLog accounts for one RPC at the service edge: when the call finishes
// it counts it in weightgate_rpcs_total and writes one access-log line
//
//   weightgate-server: access method=FetchWeights ref=m@prod peer=ipv4:127.0.0.1:40112
//     identity=worker-7 code=OK bytes=1048576 ms=12.4
//
// (one line, logfmt: values with spaces or quotes are quoted). Finish()
// acts once; later calls do nothing.
//
// This class is not thread-safe; a reactor owns one and calls it from one
// reaction at a time.
#ifndef WEIGHTGATE_SERVER_SERVICE_CALL_LOG_H_
#define WEIGHTGATE_SERVER_SERVICE_CALL_LOG_H_

#include <chrono>
#include <cstdint>
#include <string>

#include "grpcpp/server_context.h"
#include "grpcpp/support/status.h"
#include "server/service/metrics.h"

namespace weightgate::service {

// Turns the access log on or off for the whole process (default on).
void SetAccessLogEnabled(bool enabled);

class CallLog final {
 public:
  CallLog(Metrics* metrics, const char* method, const grpc::CallbackServerContext* context);

  void set_ref(std::string ref) { ref_ = std::move(ref); }
  void set_identity(std::string identity) { identity_ = std::move(identity); }
  void add_bytes(uint64_t n) { bytes_ += n; }
  uint64_t bytes() const { return bytes_; }

  void Finish(const grpc::Status& status);

 private:
  Metrics* const metrics_;
  const char* const method_;
  const std::string peer_;
  const std::chrono::steady_clock::time_point start_;
  std::string ref_;
  std::string identity_ = "anonymous";
  uint64_t bytes_ = 0;
  bool finished_ = false;
};

}  // namespace weightgate::service

#endif  // WEIGHTGATE_SERVER_SERVICE_CALL_LOG_H_
