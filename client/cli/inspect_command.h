// `weightgate inspect [--json] FILE`: reads a checkpoint offline (no server,
// no libtorch) and prints what it holds: format, container, where the
// state_dict sits, wrapper prefixes, tensors, shared storages, opaque and
// unsafe globals. Exit 0 when readable and safe, 1 when unreadable or
// unsafe (the reason on stderr as one line "weightgate: inspect: FILE:
// REASON"), 2 on usage errors.
#ifndef WEIGHTGATE_CLIENT_CLI_INSPECT_COMMAND_H_
#define WEIGHTGATE_CLIENT_CLI_INSPECT_COMMAND_H_

#include <ostream>
#include <string>
#include <vector>

namespace weightgate::cli {

// `args` are the words after "inspect" ({"FILE"}, {"--json", "FILE"},
// {"--help"}); `json` is the global --json flag.
int RunInspectCommand(const std::vector<std::string>& args, bool json);

// Same, writing to the given streams (tests).
int RunInspectCommand(const std::vector<std::string>& args, bool json, std::ostream& out,
                      std::ostream& err);

}  // namespace weightgate::cli

#endif  // WEIGHTGATE_CLIENT_CLI_INSPECT_COMMAND_H_
