// How every CLI command turns its words into a ParsedArgs: the command's flag
// table (client/common/flag_table.h) does the parsing and the --help text;
// this adds the CLI's conventions: help on stdout with exit 0, and errors as
// one line "weightgate: COMMAND: MESSAGE" on stderr with exit 2.
#ifndef WEIGHTGATE_CLIENT_CLI_COMMAND_LINE_H_
#define WEIGHTGATE_CLIENT_CLI_COMMAND_LINE_H_

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/string_view.h"
#include "client/common/flag_table.h"
#include "common/exit_codes.h"

namespace weightgate::cli {

using Args = std::vector<std::string>;
using common::kExitInvalid;
using common::kExitOk;
using common::kExitUsage;

// Prints "weightgate: <command>: <message>" and returns kExitUsage.
int UsageError(absl::string_view command, absl::string_view message);

// Parses `args` against `spec` into *parsed. Returns nothing when the command
// should go on; otherwise the exit code, after printing the help (kExitOk) or
// the usage error (kExitUsage).
std::optional<int> ParseOrExit(const client::CommandSpec& spec, absl::string_view command,
                               const Args& args, client::ParsedArgs* parsed);

// kExitOk when `id` is a valid model id, else the usage error.
int CheckModelId(absl::string_view command, const std::string& id);

// "2026-01-31 12:00:00Z" (UTC); "-" for 0.
std::string FormatTime(int64_t unix_ms);

}  // namespace weightgate::cli

#endif  // WEIGHTGATE_CLIENT_CLI_COMMAND_LINE_H_
