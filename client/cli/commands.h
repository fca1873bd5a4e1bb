// The CLI's subcommands, one file per job: model_commands.cc (ls, show,
// alias, delete), upload_commands.cc (register, validate, upload),
// fetch_command.cc, watch_command.cc, normalize_command.cc and
// inspect_command.h. Each takes the words after its name and returns the
// process exit code (common/exit_codes.h). Each states its flags once, as a
// client::CommandSpec that serves parsing, validation and --help.
#ifndef WEIGHTGATE_CLIENT_CLI_COMMANDS_H_
#define WEIGHTGATE_CLIENT_CLI_COMMANDS_H_

#include "client/cli/command_line.h"
#include "client/cli/connection.h"

namespace weightgate::cli {

int RunLs(const GlobalOptions& global, const Args& args);
int RunShow(const GlobalOptions& global, const Args& args);
int RunRegister(const GlobalOptions& global, const Args& args);
int RunValidate(const GlobalOptions& global, const Args& args);
int RunUpload(const GlobalOptions& global, const Args& args);
int RunFetch(const GlobalOptions& global, const Args& args);
int RunAlias(const GlobalOptions& global, const Args& args);
int RunDelete(const GlobalOptions& global, const Args& args);
int RunWatch(const GlobalOptions& global, const Args& args);
// Offline, no server; the helper binary carries libtorch, the CLI does not.
int RunNormalize(const GlobalOptions& global, const Args& args, const char* argv0);

}  // namespace weightgate::cli

#endif  // WEIGHTGATE_CLIENT_CLI_COMMANDS_H_
