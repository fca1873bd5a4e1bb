// weightgate-normalize: the offline normalisation engine, no server.
//
//   weightgate-normalize FILE --spec REF [-o OUT.safetensors|OUT.pt] [--json]
//       [policy flags] [--device auto|cpu|cuda] [--example_input 1x3x32x32[:F32]]...
//       [--model ID] [--sha256]
//
// REF is a reference state_dict (any readable format), a TorchScript archive
// or a JSON spec. Exit status: 0 VALID or NORMALIZED, 1 INVALID, 2 usage or
// environment errors. `weightgate normalize ...` execs this binary with the
// same arguments, so the CLI itself never loads libtorch.
#include <cstdio>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "client/common/flag_table.h"
#include "client/common/policy_flags.h"
#include "client/common/report_format.h"
#include "common/exit_codes.h"
#include "server/statedict/normalizer.h"
#include "server/statedict/spec.h"

namespace {

namespace v1 = weightgate::v1;
namespace sd = weightgate::statedict;
using weightgate::common::kExitInvalid;
using weightgate::common::kExitOk;
using weightgate::common::kExitUsage;

// clang-format off
const weightgate::client::CommandSpec kSpec = {
    .program = "weightgate-normalize", .synopsis = "FILE",
    .description =
        "REF: reference state_dict (any readable format), TorchScript archive or JSON spec.\n"
        "--example_input 1x3x32x32[:F32]: with a TorchScript REF, run one forward pass\n"
        "with the normalised weights (repeat for each forward() argument).\n"
        "exit status: 0 VALID or NORMALIZED, 1 INVALID, 2 usage or environment error.",
    .flags = {
        {.name = "--spec", .value_name = "REF", .help = "what the checkpoint must match",
         .required = true},
        {.name = "--output", .value_name = "OUT", .help = "write OUT.safetensors or OUT.pt",
         .alias = "-o"},
        {.name = "--json", .value_name = "", .help = "print the report as proto JSON"},
        {.name = "--device", .value_name = "auto|cpu|cuda[:N]",
         .help = "where the numeric checks run (default auto)"},
        {.name = "--example_input", .value_name = "SHAPE[:DTYPE]",
         .help = "forward() argument for the smoke test", .repeatable = true},
        {.name = "--model", .value_name = "ID", .help = "model id shown in the report"},
        {.name = "--sha256", .value_name = "", .help = "hash the input file into the report"},
    },
    .groups = {&weightgate::client::PolicyFlags()},
    .min_args = 1, .max_args = 1, .args_error = "expected one FILE"};
// clang-format on

int Fail(absl::string_view message) {
  std::fprintf(stderr, "weightgate-normalize: %s\n", std::string(message).c_str());
  return kExitUsage;
}

}  // namespace

int main(int argc, char** argv) {
  absl::StatusOr<weightgate::client::ParsedArgs> p =
      weightgate::client::ParseArgs(kSpec, std::vector<std::string>(argv + 1, argv + argc));
  if (!p.ok()) return Fail(p.status().message());
  if (p->help) {
    std::fputs(weightgate::client::HelpText(kSpec).c_str(), stdout);
    return kExitOk;
  }
  v1::NormalizationPolicy policy;
  if (absl::Status s = weightgate::client::ApplyPolicyFlags(*p, &policy, nullptr); !s.ok()) {
    return Fail(s.message());
  }
  sd::NormalizeOptions options;
  options.output_path = p->Get("--output");
  options.device = p->Get("--device", options.device);
  options.model_id = p->Get("--model");
  options.compute_input_sha256 = p->Has("--sha256");
  std::vector<v1::ExampleInput> examples;
  for (const std::string& text : p->All("--example_input")) {
    absl::StatusOr<v1::ExampleInput> in = sd::ParseExampleInput(text);
    if (!in.ok()) return Fail(in.status().message());
    examples.push_back(*in);
  }
  const std::string& file = p->positional[0];
  std::string spec_path = p->Get("--spec");

  absl::StatusOr<v1::ModelSpec> spec = sd::SpecFromFile(spec_path, examples);
  if (!spec.ok()) return Fail(absl::StrCat("--spec ", spec_path, ": ", spec.status().message()));
  if (!spec->torchscript_sha256().empty()) options.torchscript_path = spec_path;

  absl::StatusOr<v1::ValidationReport> report = sd::Normalize(file, *spec, policy, options);
  if (!report.ok()) return Fail(report.status().message());
  if (p->Has("--json")) {
    std::fputs(weightgate::client::ReportToJson(*report).c_str(), stdout);
  } else {
    std::fputs(weightgate::client::FormatReport(*report).c_str(), stdout);
    if (!options.output_path.empty() && report->verdict() != v1::INVALID) {
      std::printf("%-12s %s\n", "output", options.output_path.c_str());
    }
  }
  return report->verdict() == v1::INVALID ? kExitInvalid : kExitOk;
}
