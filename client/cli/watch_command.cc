// `weightgate watch REF`: one line per alias move until the stream ends.
#include <iostream>

#include "client/cli/command_line.h"
#include "client/cli/commands.h"
#include "client/common/report_format.h"
#include "common/model_ref.h"

namespace weightgate::cli {
namespace {

// clang-format off
const client::CommandSpec kWatchSpec = {
    .program = "weightgate watch", .synopsis = "REF",
    .description = "Prints an event whenever the alias in REF moves.",
    .min_args = 1, .max_args = 1, .args_error = "expected REF"};
// clang-format on

}  // namespace

int RunWatch(const GlobalOptions& global, const Args& args) {
  client::ParsedArgs p;
  if (std::optional<int> rc = ParseOrExit(kWatchSpec, "watch", args, &p)) return *rc;
  absl::StatusOr<common::ParsedRef> ref = common::ParseRef(p.positional[0]);
  if (!ref.ok()) return UsageError("watch", ref.status().message());
  auto conn = Connection::Open(global);
  if (!conn) return kExitUsage;
  weightgate::v1::WatchRequest request;
  request.set_ref(p.positional[0]);
  auto ctx = conn->NewContext();
  auto reader = conn->stream().WatchModel(ctx.get(), request);
  weightgate::v1::WatchEvent event;
  while (reader->Read(&event)) {
    if (global.json) {
      std::cout << client::ProtoToJson(event) << std::flush;
    } else {
      std::cout << FormatTime(event.unix_ms()) << " " << event.model_id() << "@" << event.alias()
                << " -> " << event.version() << std::endl;
    }
  }
  return ReportRpcError("watch", reader->Finish());
}

}  // namespace weightgate::cli
