// weightgate: the command-line client. It never loads libtorch, so it starts
// in milliseconds; `normalize` runs the separate weightgate-normalize helper.
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <string>
#include <vector>

#include "client/cli/commands.h"
#include "client/cli/inspect_command.h"

namespace {

constexpr char kUsage[] =
    "usage: weightgate [--server ADDR] [--json] [--token TOKEN] [--tls_ca PEM] COMMAND [ARGS]\n"
    "\n"
    "Offline (no server):\n"
    "  inspect FILE                     format, container, wrappers, tensors, unsafe globals\n"
    "  normalize FILE --spec REF -o OUT fix a checkpoint for a spec (.safetensors or .pt)\n"
    "Registry:\n"
    "  register MODEL --from FILE       register a model from a reference state_dict,\n"
    "                                   TorchScript archive or JSON spec\n"
    "  validate MODEL FILE              report; exit 0 VALID/NORMALIZED, 1 INVALID\n"
    "  upload MODEL FILE [--alias NAME] validate, fix and store as the next version\n"
    "  ls [MODEL]                       list models, or the versions of MODEL\n"
    "  show MODEL                       spec and policy of a model\n"
    "  alias MODEL VERSION NAME         point alias NAME at VERSION\n"
    "  delete MODEL[@VERSION]           delete a model or one version\n"
    "Inference side:\n"
    "  fetch REF -o OUT [--format safetensors|pt]\n"
    "  watch REF                        print alias moves as they happen\n"
    "\n"
    "Global flags: --server (default 127.0.0.1:50051, or $WEIGHTGATE_SERVER), --json (print\n"
    "protobuf JSON), --token (or $WEIGHTGATE_TOKEN), --tls_ca. `weightgate COMMAND --help`\n"
    "describes a command. Exit codes: 0 ok, 1 invalid or unreadable checkpoint, 2 usage or\n"
    "connection error.\n";

// Global flags may stand before or after the command; "--" ends flag parsing.
bool TakeGlobal(std::vector<std::string>& args, size_t& i, weightgate::cli::GlobalOptions& g,
                std::string* error) {
  const std::string& a = args[i];
  auto value = [&](const std::string& name, std::string* out) {
    if (a == name) {
      if (i + 1 >= args.size()) {
        *error = name + " needs a value";
        return true;
      }
      *out = args[i + 1];
      args.erase(args.begin() + i, args.begin() + i + 2);
      return true;
    }
    if (a.rfind(name + "=", 0) == 0) {
      *out = a.substr(name.size() + 1);
      args.erase(args.begin() + i);
      return true;
    }
    return false;
  };
  if (a == "--json") {
    g.json = true;
    args.erase(args.begin() + i);
    return true;
  }
  return value("--server", &g.server) || value("--token", &g.token) || value("--tls_ca", &g.tls_ca);
}

}  // namespace

int main(int argc, char** argv) {
  using namespace weightgate::cli;
  GlobalOptions global;
  if (const char* env = std::getenv("WEIGHTGATE_SERVER"); env != nullptr && *env)
    global.server = env;
  if (const char* env = std::getenv("WEIGHTGATE_TOKEN"); env != nullptr && *env) global.token = env;

  std::vector<std::string> args(argv + 1, argv + argc);
  for (size_t i = 0; i < args.size();) {
    if (args[i] == "--") break;
    std::string error;
    if (TakeGlobal(args, i, global, &error)) {
      if (!error.empty()) return UsageError("usage", error);
      continue;
    }
    ++i;
  }
  if (args.empty() || args[0] == "--help" || args[0] == "-h" || args[0] == "help") {
    std::cout << kUsage;
    return args.empty() ? kExitUsage : kExitOk;
  }
  if (args[0] == "--version") {
    std::cout << "weightgate 0.1.0\n";
    return kExitOk;
  }
  std::string command = args[0];
  Args rest(args.begin() + 1, args.end());
  if (command == "inspect") {
    return RunInspectCommand(rest, global.json);
  }
  if (command == "normalize") return RunNormalize(global, rest, argv[0]);
  if (command == "ls") return RunLs(global, rest);
  if (command == "show") return RunShow(global, rest);
  if (command == "register") return RunRegister(global, rest);
  if (command == "validate") return RunValidate(global, rest);
  if (command == "upload") return RunUpload(global, rest);
  if (command == "fetch") return RunFetch(global, rest);
  if (command == "alias") return RunAlias(global, rest);
  if (command == "delete") return RunDelete(global, rest);
  if (command == "watch") return RunWatch(global, rest);
  if (command.rfind("-", 0) == 0)
    return UsageError("usage", "unknown flag '" + command + "' (see --help)");
  return UsageError("usage", "unknown command '" + command + "' (see --help)");
}
