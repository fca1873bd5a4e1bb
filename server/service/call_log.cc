#include "server/service/call_log.h"

#include <atomic>
#include <cstdio>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_replace.h"
#include "server/service/status_util.h"

namespace weightgate::service {
namespace {

std::atomic<bool> access_log_enabled{true};

std::string Value(const std::string& v) {
  if (v.empty()) return "\"\"";
  if (v.find_first_of(" \"=\n\t") == std::string::npos) return v;
  return absl::StrCat("\"", absl::StrReplaceAll(v, {{"\\", "\\\\"}, {"\"", "\\\""}, {"\n", "\\n"}}),
                      "\"");
}

}  // namespace

void SetAccessLogEnabled(bool enabled) { access_log_enabled = enabled; }

CallLog::CallLog(Metrics* metrics, const char* method, const grpc::CallbackServerContext* context)
    : metrics_(metrics),
      method_(method),
      peer_(context != nullptr ? context->peer() : ""),
      start_(std::chrono::steady_clock::now()) {}

void CallLog::Finish(const grpc::Status& status) {
  if (finished_) return;
  finished_ = true;
  std::string code = CodeName(status.error_code());
  metrics_->RecordRpc(method_, code);
  if (!access_log_enabled) return;
  double ms =
      std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start_).count();
  std::string line = absl::StrFormat(
      "weightgate-server: access method=%s ref=%s peer=%s identity=%s code=%s bytes=%d ms=%.1f\n",
      method_, Value(ref_), Value(peer_), Value(identity_), code, bytes_, ms);
  // One write per line so concurrent calls never interleave within a line.
  std::fwrite(line.data(), 1, line.size(), stderr);
}

}  // namespace weightgate::service
