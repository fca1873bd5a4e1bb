// Rendering of a weightgate.v1.ValidationReport for people (a short table)
// and machines (the proto as JSON), identical across the CLI, the server
// logs and weightgate-normalize.
#ifndef WEIGHTGATE_CLIENT_COMMON_REPORT_FORMAT_H_
#define WEIGHTGATE_CLIENT_COMMON_REPORT_FORMAT_H_

#include <string>

#include "google/protobuf/message.h"
#include "weightgate/v1/types.pb.h"

namespace weightgate::client {

// Verdict, format, container, device; then fixes, findings (missing,
// unexpected, mismatches, non-finite, shared storages, globals), the
// matcher's winner and runner-up, the smoke test and timings. Long lists are
// cut after a few entries with a count of the rest. Ends with a newline.
std::string FormatReport(const weightgate::v1::ValidationReport& report);

// The report as proto JSON (field names as in the .proto), with a newline.
std::string ReportToJson(const weightgate::v1::ValidationReport& report);

// Any message as ReportToJson prints a report (what --json prints).
std::string ProtoToJson(const google::protobuf::Message& message);

// "VALID", "NORMALIZED", "INVALID" or "UNSPECIFIED".
std::string VerdictName(weightgate::v1::Verdict verdict);

}  // namespace weightgate::client

#endif  // WEIGHTGATE_CLIENT_COMMON_REPORT_FORMAT_H_
