// The one place absl::Status becomes grpc::Status (the service edge).
#ifndef WEIGHTGATE_SERVER_SERVICE_STATUS_UTIL_H_
#define WEIGHTGATE_SERVER_SERVICE_STATUS_UTIL_H_

#include <string>

#include "absl/status/status.h"
#include "grpcpp/support/status.h"

namespace weightgate::service {

grpc::Status ToGrpcStatus(const absl::Status& status);

// "OK", "NOT_FOUND", ... (the metric label).
std::string CodeName(grpc::StatusCode code);

}  // namespace weightgate::service

#endif  // WEIGHTGATE_SERVER_SERVICE_STATUS_UTIL_H_
