#include "client/cli/inspect_command.h"

#include <iostream>

#include "common/exit_codes.h"
#include "server/checkpoint/checkpoint.h"
#include "server/checkpoint/inspect.h"

namespace weightgate::cli {
namespace {

constexpr char kInspectUsageText[] =
    "usage: weightgate inspect [--json] FILE\n"
    "\n"
    "Reads a checkpoint offline (torch.save zip or legacy, TorchScript, safetensors, JSON spec)\n"
    "without executing anything and prints its format, container, where the state_dict sits,\n"
    "wrapper prefixes, tensors (name, dtype, shape, bytes), shared storages, non-contiguous\n"
    "tensors and the opaque and unsafe globals its pickle names.\n"
    "FILE may be a checkpoint set read as one: a directory or an index file (HF sharded,\n"
    "torch.distributed.checkpoint, DeepSpeed ZeRO, Megatron tensor-parallel ranks).\n"
    "Exit codes: 0 readable and safe, 1 unreadable or unsafe, 2 usage.\n";

// One line, whatever the message holds.
std::string OneLine(std::string s) {
  for (char& c : s) {
    if (c == '\n' || c == '\r') c = ' ';
  }
  return s;
}

}  // namespace

int RunInspectCommand(const std::vector<std::string>& args, bool json, std::ostream& out,
                      std::ostream& err) {
  std::string file;
  bool files_only = false;
  for (const std::string& a : args) {
    if (!files_only && (a == "--help" || a == "-h")) {
      out << kInspectUsageText;
      return common::kExitOk;
    }
    if (!files_only && a == "--json") {
      json = true;
    } else if (!files_only && a == "--") {
      files_only = true;
    } else if (!files_only && a.size() > 1 && a[0] == '-') {
      err << "weightgate: inspect: unknown flag '" << a << "'\n" << kInspectUsageText;
      return common::kExitUsage;
    } else if (file.empty()) {
      file = a;
    } else {
      err << "weightgate: inspect: expects one FILE\n" << kInspectUsageText;
      return common::kExitUsage;
    }
  }
  if (file.empty()) {
    err << "weightgate: inspect: missing FILE\n" << kInspectUsageText;
    return common::kExitUsage;
  }
  absl::StatusOr<checkpoint::Checkpoint> ckpt = checkpoint::ReadCheckpointFile(file);
  if (!ckpt.ok()) {
    err << "weightgate: inspect: " << file << ": " << OneLine(std::string(ckpt.status().message()))
        << "\n";
    return common::kExitInvalid;
  }
  checkpoint::Inspection inspection = checkpoint::Inspect(*ckpt);
  out << (json ? checkpoint::RenderInspectionJson(inspection)
               : checkpoint::RenderInspectionText(inspection));
  out.flush();
  if (inspection.unsafe()) {
    std::string globals;
    for (size_t k = 0; k < inspection.unsafe_globals.size(); ++k) {
      if (k > 0) globals += ", ";
      globals += inspection.unsafe_globals[k];
    }
    err << "weightgate: inspect: " << file << ": unsafe pickle: names " << OneLine(globals) << "\n";
    return common::kExitInvalid;
  }
  return common::kExitOk;
}

int RunInspectCommand(const std::vector<std::string>& args, bool json) {
  return RunInspectCommand(args, json, std::cout, std::cerr);
}

}  // namespace weightgate::cli
