#include "client/cli/command_line.h"

#include <ctime>
#include <iostream>

#include "common/model_ref.h"

namespace weightgate::cli {

int UsageError(absl::string_view command, absl::string_view message) {
  std::cerr << "weightgate: " << command << ": " << message << "\n";
  return kExitUsage;
}

std::optional<int> ParseOrExit(const client::CommandSpec& spec, absl::string_view command,
                               const Args& args, client::ParsedArgs* parsed) {
  absl::StatusOr<client::ParsedArgs> p = client::ParseArgs(spec, args);
  if (!p.ok()) return UsageError(command, p.status().message());
  if (p->help) {
    std::cout << client::HelpText(spec);
    return kExitOk;
  }
  *parsed = *std::move(p);
  return std::nullopt;
}

int CheckModelId(absl::string_view command, const std::string& id) {
  absl::Status s = common::ValidateModelId(id);
  return s.ok() ? kExitOk : UsageError(command, s.message());
}

std::string FormatTime(int64_t unix_ms) {
  if (unix_ms == 0) return "-";
  time_t t = static_cast<time_t>(unix_ms / 1000);
  struct tm tm;
  gmtime_r(&t, &tm);
  char buf[32];
  strftime(buf, sizeof buf, "%Y-%m-%d %H:%M:%SZ", &tm);
  return buf;
}

}  // namespace weightgate::cli
