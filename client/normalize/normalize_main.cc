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

void Usage(FILE* out) {
  std::fprintf(
      out,
      "usage: weightgate-normalize FILE --spec REF [-o OUT.safetensors|OUT.pt] [--json]\n"
      "           [policy flags] [--device auto|cpu|cuda] [--example_input SHAPE[:DTYPE]]...\n"
      "           [--model ID] [--sha256]\n"
      "REF: reference state_dict (any readable format), TorchScript archive or JSON spec.\n"
      "--example_input 1x3x32x32[:F32]: with a TorchScript REF, run one forward pass\n"
      "  with the normalised weights (repeat for each forward() argument).\n"
      "exit status: 0 VALID or NORMALIZED, 1 INVALID, 2 usage or environment error.\n%s",
      weightgate::client::PolicyFlagsHelp());
}

int Fail(const std::string& message) {
  std::fprintf(stderr, "weightgate-normalize: %s\n", message.c_str());
  return kExitUsage;
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> args(argv + 1, argv + argc);
  std::string file, spec_path;
  sd::NormalizeOptions options;
  v1::NormalizationPolicy policy;
  std::vector<v1::ExampleInput> examples;
  bool json = false;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    bool any_set = false;
    absl::StatusOr<bool> consumed =
        weightgate::client::ConsumePolicyFlag(args, i, &policy, &any_set);
    if (!consumed.ok()) return Fail(std::string(consumed.status().message()));
    if (*consumed) continue;
    auto value = [&](std::string* out) -> bool {
      if (i + 1 >= args.size()) return false;
      *out = args[++i];
      return true;
    };
    if (a == "-h" || a == "--help") {
      Usage(stdout);
      return kExitOk;
    } else if (a == "--spec") {
      if (!value(&spec_path)) return Fail("--spec needs a file");
    } else if (a == "-o" || a == "--output") {
      if (!value(&options.output_path)) return Fail("-o needs a file");
    } else if (a == "--json") {
      json = true;
    } else if (a == "--device") {
      if (!value(&options.device)) return Fail("--device needs a value");
    } else if (a == "--model") {
      if (!value(&options.model_id)) return Fail("--model needs a value");
    } else if (a == "--sha256") {
      options.compute_input_sha256 = true;
    } else if (a == "--example_input") {
      std::string text;
      if (!value(&text)) return Fail("--example_input needs a shape");
      absl::StatusOr<v1::ExampleInput> in = sd::ParseExampleInput(text);
      if (!in.ok()) return Fail(std::string(in.status().message()));
      examples.push_back(*in);
    } else if (!a.empty() && a[0] == '-') {
      Usage(stderr);
      return Fail(absl::StrCat("unknown flag ", a));
    } else if (file.empty()) {
      file = a;
    } else {
      return Fail(absl::StrCat("unexpected argument ", a));
    }
  }
  if (file.empty() || spec_path.empty()) {
    Usage(stderr);
    return kExitUsage;
  }

  absl::StatusOr<v1::ModelSpec> spec = sd::SpecFromFile(spec_path, examples);
  if (!spec.ok()) return Fail(absl::StrCat("--spec ", spec_path, ": ", spec.status().message()));
  if (!spec->torchscript_sha256().empty()) options.torchscript_path = spec_path;

  absl::StatusOr<v1::ValidationReport> report = sd::Normalize(file, *spec, policy, options);
  if (!report.ok()) return Fail(std::string(report.status().message()));
  if (json) {
    std::fputs(weightgate::client::ReportToJson(*report).c_str(), stdout);
  } else {
    std::fputs(weightgate::client::FormatReport(*report).c_str(), stdout);
    if (!options.output_path.empty() && report->verdict() != v1::INVALID) {
      std::printf("%-12s %s\n", "output", options.output_path.c_str());
    }
  }
  return report->verdict() == v1::INVALID ? kExitInvalid : kExitOk;
}
