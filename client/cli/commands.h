// The CLI's subcommands. Each takes the arguments after its name and returns
// the process exit code (0 ok, 1 INVALID / unreadable, 2 usage or connection).
#ifndef WEIGHTGATE_CLIENT_CLI_COMMANDS_H_
#define WEIGHTGATE_CLIENT_CLI_COMMANDS_H_

#include <string>
#include <vector>

#include "client/cli/connection.h"

namespace weightgate::cli {

using Args = std::vector<std::string>;

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

// Prints "weightgate: <command>: <message>" and returns kExitUsage.
int UsageError(const std::string& command, const std::string& message);

// True when args contain -h or --help.
bool WantsHelp(const Args& args);

}  // namespace weightgate::cli

#endif  // WEIGHTGATE_CLIENT_CLI_COMMANDS_H_
