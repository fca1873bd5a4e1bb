// weightgate: the command-line client. It never loads libtorch, so it starts
// in milliseconds; `normalize` runs the separate weightgate-normalize helper.
#include <malloc.h>

#include <cstdlib>
#include <cstring>
#include <functional>
#include <iostream>
#include <string>
#include <vector>

#include "absl/strings/string_view.h"
#include "client/cli/commands.h"
#include "client/cli/inspect_command.h"

namespace {

using weightgate::cli::Args;
using weightgate::cli::GlobalOptions;

constexpr char kUsage[] =
    "usage: weightgate [--server ADDR] [--json] [--token TOKEN] [--tls_ca PEM] [--tls_cert PEM "
    "--tls_key PEM]\n                  COMMAND [ARGS]\n"
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
    "  fetch REF -o OUT [--format safetensors|pt] [--tensor NAME]...\n"
    "  watch REF                        print alias moves as they happen\n"
    "\n";

constexpr char kUsageTail[] =
    "`weightgate COMMAND --help` describes a command. Exit codes: 0 ok, 1 invalid or\n"
    "unreadable checkpoint, 2 usage or connection error.\n";

// Global flags may stand before or after the command; "--" ends them. Each
// entry says where its value goes.
struct GlobalFlag {
  weightgate::client::Flag flag;
  std::function<void(GlobalOptions&, const std::string&)> set;
};

// clang-format off
const std::vector<GlobalFlag>& GlobalFlags() {
  static const auto* flags = new std::vector<GlobalFlag>{
      {{.name = "--server", .value_name = "ADDR",
        .help = "default 127.0.0.1:50051, or $WEIGHTGATE_SERVER"},
       [](GlobalOptions& g, const std::string& v) { g.server = v; }},
      {{.name = "--json", .value_name = "", .help = "print protobuf JSON"},
       [](GlobalOptions& g, const std::string&) { g.json = true; }},
      {{.name = "--token", .value_name = "TOKEN", .help = "bearer token, or $WEIGHTGATE_TOKEN"},
       [](GlobalOptions& g, const std::string& v) { g.token = v; }},
      {{.name = "--tls_ca", .value_name = "PEM", .help = "CA roots; enables TLS"},
       [](GlobalOptions& g, const std::string& v) { g.tls_ca = v; }},
      {{.name = "--tls_cert", .value_name = "PEM",
        .help = "client certificate for mutual TLS (with --tls_key); enables TLS"},
       [](GlobalOptions& g, const std::string& v) { g.tls_cert = v; }},
      {{.name = "--tls_key", .value_name = "PEM", .help = "client private key (with --tls_cert)"},
       [](GlobalOptions& g, const std::string& v) { g.tls_key = v; }},
  };
  return *flags;
}
// clang-format on

std::string Usage() {
  weightgate::client::FlagGroup group{"Global flags", {}};
  for (const GlobalFlag& f : GlobalFlags()) group.flags.push_back(f.flag);
  return std::string(kUsage) + weightgate::client::GroupHelp(group) + kUsageTail;
}

// Applies and removes the global flag at args[i], if it is one. Returns
// false when args[i] is not a global flag; sets *error for a missing value.
bool TakeGlobal(Args& args, size_t i, GlobalOptions& g, std::string* error) {
  absl::string_view a = args[i];
  for (const GlobalFlag& f : GlobalFlags()) {
    absl::string_view name = f.flag.name;
    if (a == name && !f.flag.takes_value()) {
      f.set(g, "");
      args.erase(args.begin() + static_cast<long>(i));
      return true;
    }
    if (a == name) {
      if (i + 1 >= args.size()) {
        *error = std::string(name) + " needs a value";
        return true;
      }
      f.set(g, args[i + 1]);
      args.erase(args.begin() + static_cast<long>(i), args.begin() + static_cast<long>(i) + 2);
      return true;
    }
    if (f.flag.takes_value() && a.size() > name.size() && a.substr(0, name.size()) == name &&
        a[name.size()] == '=') {
      f.set(g, std::string(a.substr(name.size() + 1)));
      args.erase(args.begin() + static_cast<long>(i));
      return true;
    }
  }
  return false;
}

using Command = std::function<int(const GlobalOptions&, const Args&, const char* argv0)>;

// clang-format off
const std::vector<std::pair<absl::string_view, Command>>& Commands() {
  using namespace weightgate::cli;
  static const auto* commands = new std::vector<std::pair<absl::string_view, Command>>{
      {"inspect",   [](auto& g, auto& a, auto) { return RunInspectCommand(a, g.json); }},
      {"normalize", [](auto& g, auto& a, auto argv0) { return RunNormalize(g, a, argv0); }},
      {"ls",        [](auto& g, auto& a, auto) { return RunLs(g, a); }},
      {"show",      [](auto& g, auto& a, auto) { return RunShow(g, a); }},
      {"register",  [](auto& g, auto& a, auto) { return RunRegister(g, a); }},
      {"validate",  [](auto& g, auto& a, auto) { return RunValidate(g, a); }},
      {"upload",    [](auto& g, auto& a, auto) { return RunUpload(g, a); }},
      {"fetch",     [](auto& g, auto& a, auto) { return RunFetch(g, a); }},
      {"alias",     [](auto& g, auto& a, auto) { return RunAlias(g, a); }},
      {"delete",    [](auto& g, auto& a, auto) { return RunDelete(g, a); }},
      {"watch",     [](auto& g, auto& a, auto) { return RunWatch(g, a); }},
  };
  return *commands;
}
// clang-format on

}  // namespace

int main(int argc, char** argv) {
  using namespace weightgate::cli;
  // A fetch or upload passes ~1 GB/s through gRPC's message buffers. Keep
  // freed buffers in the heap for reuse instead of returning them to the
  // kernel (glibc maps and unmaps blocks this large by default): otherwise
  // every buffer is page-faulted and zeroed afresh, a quarter of the
  // process's kernel time in a fetch.
  mallopt(M_MMAP_THRESHOLD, 64 << 20);
  mallopt(M_TRIM_THRESHOLD, 256 << 20);
  mallopt(M_TOP_PAD, 64 << 20);
  GlobalOptions global;
  if (const char* env = std::getenv("WEIGHTGATE_SERVER"); env != nullptr && *env)
    global.server = env;
  if (const char* env = std::getenv("WEIGHTGATE_TOKEN"); env != nullptr && *env) global.token = env;

  Args args(argv + 1, argv + argc);
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
    std::cout << Usage();
    return args.empty() ? kExitUsage : kExitOk;
  }
  if (args[0] == "--version") {
    std::cout << "weightgate 0.1.0\n";
    return kExitOk;
  }
  const std::string& command = args[0];
  Args rest(args.begin() + 1, args.end());
  for (const auto& [name, run] : Commands()) {
    if (name == command) return run(global, rest, argv[0]);
  }
  if (command.rfind("-", 0) == 0)
    return UsageError("usage", "unknown flag '" + command + "' (see --help)");
  return UsageError("usage", "unknown command '" + command + "' (see --help)");
}
