// `weightgate register | validate | upload`: a header and a local file
// streamed to the registry; validate and upload print the report.
#include <iostream>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "client/cli/command_line.h"
#include "client/cli/commands.h"
#include "client/cli/send_file.h"
#include "client/common/policy_flags.h"
#include "client/common/report_format.h"
#include "common/file_util.h"
#include "common/human_bytes.h"
#include "common/model_ref.h"

namespace weightgate::cli {
namespace {

using client::CommandSpec;
using client::FormatReport;
using client::ParsedArgs;
using client::PolicyFlags;
using client::ProtoToJson;
using weightgate::v1::Model;
using weightgate::v1::ValidationReport;

// clang-format off
const CommandSpec kRegisterSpec = {
    .program = "weightgate register", .synopsis = "MODEL",
    .description =
        "FILE: a reference state_dict (torch.save, safetensors), a TorchScript archive\n"
        "(torch.jit.script(model).save) or a JSON spec {\"tensors\": {name: {dtype, shape}}}.\n"
        "--example_input 1x3x32x32 (TorchScript only) enables a forward-pass smoke test.\n"
        "FILE may be a checkpoint set: a directory or an index file (sent as one bundle).",
    .flags = {
        {.name = "--from", .value_name = "FILE", .help = "what defines the expected tensors",
         .required = true},
        {.name = "--example_input", .value_name = "SHAPE[:DTYPE]",
         .help = "forward() argument, e.g. 1x3x224x224[:F32]", .repeatable = true},
        {.name = "--description", .value_name = "TEXT", .help = "free text kept with the model"},
        {.name = "--replace", .value_name = "", .help = "overwrite an existing model's spec"},
    },
    .groups = {&PolicyFlags()},
    .min_args = 1, .max_args = 1, .args_error = "expected MODEL (and --from FILE)"};

const CommandSpec kValidateSpec = {
    .program = "weightgate validate", .synopsis = "MODEL FILE",
    .description =
        "Dry run: reads, repairs and checks FILE against MODEL's spec; stores nothing.\n"
        "Exit 0 when VALID or NORMALIZED, 1 when INVALID (also unreadable or unsafe files),\n"
        "2 on usage or connection errors. Policy flags override the model's policy.\n"
        "FILE may be a checkpoint set: a directory (HF shards, DCP, ZeRO, Megatron) or an\n"
        "index file; every file is sent in one request.",
    .groups = {&PolicyFlags()},
    .min_args = 2, .max_args = 2, .args_error = "expected MODEL FILE"};

const CommandSpec kUploadSpec = {
    .program = "weightgate upload", .synopsis = "MODEL FILE",
    .description =
        "Validates and repairs FILE, stores the fixed weights as MODEL's next version\n"
        "(moving `latest`, and NAME if given) and prints the version.\n"
        "Exit 1 when the checkpoint is INVALID (nothing is stored).\n"
        "FILE may be a checkpoint set (a directory or an index file): one version.",
    .flags = {
        {.name = "--alias", .value_name = "NAME", .help = "also point this alias at the version"},
    },
    .groups = {&PolicyFlags()},
    .min_args = 2, .max_args = 2, .args_error = "expected MODEL FILE"};
// clang-format on

// "1x3x224x224[:F32]" -> *input.
absl::Status ParseExampleInput(const std::string& text, weightgate::v1::ExampleInput* input) {
  std::vector<std::string> parts = absl::StrSplit(text, ':');
  for (absl::string_view dim : absl::StrSplit(parts[0], 'x')) {
    int64_t d = 0;
    if (!absl::SimpleAtoi(dim, &d) || d < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("bad --example_input '", text, "' (want e.g. 1x3x224x224[:F32])"));
    }
    input->add_shape(d);
  }
  input->set_dtype(parts.size() > 1 ? parts[1] : "F32");
  return absl::OkStatus();
}

// Shared by validate and upload: the header from the parsed arguments.
int FillUploadHeader(const std::string& command, const ParsedArgs& p,
                     weightgate::v1::UploadHeader* header) {
  bool any = false;
  if (absl::Status s = client::ApplyPolicyFlags(p, header->mutable_policy_override(), &any);
      !s.ok()) {
    return UsageError(command, s.message());
  }
  if (!any) header->clear_policy_override();
  if (int rc = CheckModelId(command, p.positional[0]); rc != kExitOk) return rc;
  const std::string& file = p.positional[1];
  int64_t size = UploadSize(file);
  if (size < 0) return UsageError(command, absl::StrCat("cannot read ", file));
  header->set_model_id(p.positional[0]);
  header->set_total_bytes(size);
  header->set_filename(file.substr(file.rfind('/') == std::string::npos ? 0 : file.rfind('/') + 1));
  return kExitOk;
}

}  // namespace

int RunRegister(const GlobalOptions& global, const Args& args) {
  ParsedArgs p;
  if (std::optional<int> rc = ParseOrExit(kRegisterSpec, "register", args, &p)) return *rc;
  weightgate::v1::RegisterModelHeader header;
  if (absl::Status s = client::ApplyPolicyFlags(p, header.mutable_policy(), nullptr); !s.ok()) {
    return UsageError("register", s.message());
  }
  if (int rc = CheckModelId("register", p.positional[0]); rc != kExitOk) return rc;
  std::string file = p.Get("--from");
  int64_t size = UploadSize(file);
  if (size < 0) return UsageError("register", absl::StrCat("cannot read ", file));
  header.set_model_id(p.positional[0]);
  header.set_description(p.Get("--description"));
  header.set_replace(p.Has("--replace"));
  header.set_total_bytes(size);
  for (const std::string& spec : p.All("--example_input")) {
    if (absl::Status s = ParseExampleInput(spec, header.add_example_inputs()); !s.ok()) {
      return UsageError("register", s.message());
    }
  }
  auto conn = Connection::Open(global);
  if (!conn) return kExitUsage;
  Model model;
  auto ctx = conn->NewContext();
  auto writer = conn->registry().RegisterModel(ctx.get(), &model);
  absl::Status sent = SendFile(writer.get(), header, file);
  grpc::Status s = writer->Finish();
  if (!s.ok()) return ReportRpcError("register", s);
  if (!sent.ok()) return UsageError("register", sent.message());
  if (global.json) {
    std::cout << ProtoToJson(model);
  } else {
    std::cout << "registered " << model.model_id() << ": " << model.spec().tensors_size()
              << " tensors from " << model.spec().source_format() << "\n";
  }
  return kExitOk;
}

int RunValidate(const GlobalOptions& global, const Args& args) {
  ParsedArgs p;
  if (std::optional<int> rc = ParseOrExit(kValidateSpec, "validate", args, &p)) return *rc;
  weightgate::v1::UploadHeader header;
  if (int rc = FillUploadHeader("validate", p, &header); rc != kExitOk) return rc;
  auto conn = Connection::Open(global);
  if (!conn) return kExitUsage;
  ValidationReport report;
  auto ctx = conn->NewContext();
  auto writer = conn->registry().ValidateCheckpoint(ctx.get(), &report);
  absl::Status sent = SendFile(writer.get(), header, p.positional[1]);
  grpc::Status s = writer->Finish();
  if (!s.ok()) return ReportRpcError("validate", s);
  if (!sent.ok()) return UsageError("validate", sent.message());
  std::cout << (global.json ? ProtoToJson(report) : FormatReport(report));
  return report.verdict() == weightgate::v1::INVALID ? kExitInvalid : kExitOk;
}

int RunUpload(const GlobalOptions& global, const Args& args) {
  ParsedArgs p;
  if (std::optional<int> rc = ParseOrExit(kUploadSpec, "upload", args, &p)) return *rc;
  weightgate::v1::UploadHeader header;
  if (int rc = FillUploadHeader("upload", p, &header); rc != kExitOk) return rc;
  header.set_alias(p.Get("--alias"));
  if (!header.alias().empty() && !common::ValidateModelId(header.alias()).ok()) {
    return UsageError("upload", absl::StrCat("invalid alias '", header.alias(), "'"));
  }
  auto conn = Connection::Open(global);
  if (!conn) return kExitUsage;
  weightgate::v1::UploadResponse response;
  auto ctx = conn->NewContext();
  auto writer = conn->registry().UploadCheckpoint(ctx.get(), &response);
  absl::Status sent = SendFile(writer.get(), header, p.positional[1]);
  grpc::Status s = writer->Finish();
  if (s.error_code() == grpc::StatusCode::FAILED_PRECONDITION && !s.error_details().empty()) {
    ValidationReport report;
    if (report.ParseFromString(s.error_details())) {
      std::cout << (global.json ? ProtoToJson(report) : FormatReport(report));
      std::cerr << "weightgate: upload: " << s.error_message() << "; nothing stored\n";
      return kExitInvalid;
    }
  }
  if (!s.ok()) return ReportRpcError("upload", s);
  if (!sent.ok()) return UsageError("upload", sent.message());
  if (response.report().verdict() == weightgate::v1::INVALID) {
    // The server answers INVALID in the response body, report whole.
    std::cout << (global.json ? ProtoToJson(response) : FormatReport(response.report()));
    std::cerr << "weightgate: upload: checkpoint is INVALID for model '" << header.model_id()
              << "' (" << absl::StrJoin(response.report().reasons(), ", ") << "); nothing stored\n";
    return kExitInvalid;
  }
  if (global.json) {
    std::cout << ProtoToJson(response);
    return kExitOk;
  }
  const weightgate::v1::Version& v = response.version();
  std::cout << FormatReport(response.report());
  std::cout << "stored " << v.model_id() << "@" << v.version() << " ("
            << common::HumanBytes(v.size_bytes()) << ", sha256 " << v.blob_sha256().substr(0, 16)
            << ")";
  if (!v.aliases().empty()) std::cout << " aliases " << absl::StrJoin(v.aliases(), ",");
  std::cout << "\n";
  return kExitOk;
}

}  // namespace weightgate::cli
