#include "client/cli/commands.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <ctime>
#include <fstream>
#include <iostream>
#include <map>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "client/cli/file_convert.h"
#include "client/cli/policy_args.h"
#include "client/common/report_format.h"
#include "common/crc32c.h"
#include "common/human_bytes.h"
#include "common/model_ref.h"
#include "common/sha256.h"
#include "google/protobuf/util/json_util.h"
#include "server/checkpoint/checkpoint_set.h"
#include "server/checkpoint/set_bundle.h"

namespace weightgate::cli {
namespace {

using common::HumanBytes;
using weightgate::v1::Model;
using weightgate::v1::ValidationReport;

constexpr size_t kChunkBytes = 1 << 20;

std::string ToJson(const google::protobuf::Message& message) {
  std::string out;
  google::protobuf::util::JsonPrintOptions options;
  options.add_whitespace = true;
  options.preserve_proto_field_names = true;
  (void)google::protobuf::util::MessageToJsonString(message, &out, options);
  return out;
}

std::string FormatTime(int64_t unix_ms) {
  if (unix_ms == 0) return "-";
  time_t t = static_cast<time_t>(unix_ms / 1000);
  struct tm tm;
  gmtime_r(&t, &tm);
  char buf[32];
  strftime(buf, sizeof buf, "%Y-%m-%d %H:%M:%SZ", &tm);
  return buf;
}

int CheckModelId(const std::string& command, const std::string& id) {
  absl::Status s = common::ValidateModelId(id);
  return s.ok() ? kExitOk : UsageError(command, std::string(s.message()));
}

// Positional arguments and the flags of one command: `--name value`,
// `--name=value` or boolean `--name`. Policy flags are consumed by
// ParsePolicyArgs before this sees them.
struct Parsed {
  std::vector<std::string> positional;
  std::map<std::string, std::vector<std::string>> flags;
  bool has(const std::string& name) const { return flags.count(name) > 0; }
  std::string get(const std::string& name, const std::string& fallback = "") const {
    auto it = flags.find(name);
    return it == flags.end() || it->second.empty() ? fallback : it->second.back();
  }
};

// `value_flags` take a value; `bool_flags` do not. Anything else starting
// with '-' is an error.
absl::StatusOr<Parsed> ParseArgs(const Args& args, std::vector<std::string> value_flags,
                                 std::vector<std::string> bool_flags) {
  Parsed parsed;
  bool only_positional = false;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    if (only_positional || a.size() < 2 || a[0] != '-') {
      parsed.positional.push_back(a);
      continue;
    }
    if (a == "--") {
      only_positional = true;
      continue;
    }
    std::string name = a;
    std::string value;
    bool has_value = false;
    if (size_t eq = a.find('='); eq != std::string::npos) {
      name = a.substr(0, eq);
      value = a.substr(eq + 1);
      has_value = true;
    }
    if (std::find(bool_flags.begin(), bool_flags.end(), name) != bool_flags.end()) {
      if (has_value) return absl::InvalidArgumentError(absl::StrCat(name, " takes no value"));
      parsed.flags[name].push_back("true");
      continue;
    }
    if (std::find(value_flags.begin(), value_flags.end(), name) != value_flags.end()) {
      if (!has_value) {
        if (i + 1 >= args.size())
          return absl::InvalidArgumentError(absl::StrCat(name, " needs a value"));
        value = args[++i];
      }
      parsed.flags[name].push_back(value);
      continue;
    }
    return absl::InvalidArgumentError(absl::StrCat("unknown flag '", a, "'"));
  }
  return parsed;
}

// Streams the file at `path` after `header` into `writer`, with a progress
// line on stderr when it is a terminal.
template <typename Request, typename Header>
absl::Status SendFile(grpc::ClientWriter<Request>* writer, const Header& header,
                      const std::string& path) {
  Request first;
  *first.mutable_header() = header;
  if (!writer->Write(first)) return absl::UnavailableError("server closed the stream");
  if (checkpoint::IsCheckpointSetPath(path)) {
    // A directory or index file: every file of the set in one bundle (set_bundle.h).
    Request piece;
    absl::Status streamed =
        checkpoint::StreamSetBundle(path, kChunkBytes, [&](std::string_view bytes) {
          piece.set_chunk(bytes.data(), bytes.size());
          return writer->Write(piece);
        });
    writer->WritesDone();
    return streamed;
  }
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return absl::NotFoundError(absl::StrCat("cannot open ", path));
  bool tty = ::isatty(2);
  uint64_t total = static_cast<uint64_t>(std::max<int64_t>(header.total_bytes(), 1));
  uint64_t sent = 0;
  auto start = std::chrono::steady_clock::now();
  auto last = start;
  std::string buffer(kChunkBytes, '\0');
  Request chunk;
  absl::Status status = absl::OkStatus();
  for (;;) {
    ssize_t n = ::read(fd, buffer.data(), buffer.size());
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      status = absl::InternalError(absl::StrCat("read ", path));
      break;
    }
    if (n == 0) break;
    chunk.set_chunk(buffer.data(), static_cast<size_t>(n));
    if (!writer->Write(chunk)) break;  // the server ended the call; Finish() says why
    sent += static_cast<uint64_t>(n);
    auto now = std::chrono::steady_clock::now();
    if (tty && now - last > std::chrono::milliseconds(200)) {
      double secs = std::chrono::duration<double>(now - start).count();
      std::fprintf(stderr, "\r  uploading %5.1f%%  %s / %s  %s/s   ", 100.0 * sent / total,
                   HumanBytes(sent).c_str(), HumanBytes(total).c_str(),
                   HumanBytes(sent / std::max(secs, 1e-3)).c_str());
      last = now;
    }
  }
  ::close(fd);
  if (tty && sent > 0) std::fprintf(stderr, "\r  uploaded %s%30s\n", HumanBytes(sent).c_str(), "");
  writer->WritesDone();
  return status;
}

int64_t FileSize(const std::string& path) {
  if (checkpoint::IsCheckpointSetPath(path)) {
    absl::StatusOr<uint64_t> bundle = checkpoint::SetBundleSize(path);
    return bundle.ok() ? static_cast<int64_t>(*bundle) : -1;
  }
  struct stat st;
  return ::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode) ? st.st_size : -1;
}

}  // namespace

int UsageError(const std::string& command, const std::string& message) {
  std::cerr << "weightgate: " << command << ": " << message << "\n";
  return kExitUsage;
}

bool WantsHelp(const Args& args) {
  for (const std::string& a : args) {
    if (a == "--help" || a == "-h") return true;
  }
  return false;
}

int RunLs(const GlobalOptions& global, const Args& args) {
  if (WantsHelp(args)) {
    std::cout
        << "usage: weightgate ls [MODEL]\n  Lists registered models, or the versions of MODEL.\n";
    return kExitOk;
  }
  absl::StatusOr<Parsed> p = ParseArgs(args, {}, {});
  if (!p.ok()) return UsageError("ls", std::string(p.status().message()));
  if (p->positional.size() > 1) return UsageError("ls", "expected at most one MODEL");
  if (p->positional.size() == 1) {
    if (int rc = CheckModelId("ls", p->positional[0]); rc != kExitOk) return rc;
  }
  auto conn = Connection::Open(global);
  if (!conn) return kExitUsage;
  if (p->positional.empty()) {
    weightgate::v1::ListModelsResponse response;
    grpc::Status s = conn->registry().ListModels(conn->NewContext().get(), {}, &response);
    if (!s.ok()) return ReportRpcError("ls", s);
    if (global.json) {
      std::cout << ToJson(response) << "\n";
      return kExitOk;
    }
    if (response.models().empty()) {
      std::cout << "no models registered (weightgate register MODEL --from FILE)\n";
      return kExitOk;
    }
    std::cout << absl::StrFormat("%-32s %8s %9s  %-28s %s\n", "MODEL", "TENSORS", "VERSIONS",
                                 "ALIASES", "UPDATED");
    for (const Model& m : response.models()) {
      std::vector<std::string> aliases;
      for (const auto& [name, v] : m.aliases()) aliases.push_back(absl::StrCat(name, "=", v));
      std::sort(aliases.begin(), aliases.end());
      std::cout << absl::StrFormat("%-32s %8d %9d  %-28s %s\n", m.model_id(),
                                   m.spec().tensors_size(), m.version_count(),
                                   aliases.empty() ? "-" : absl::StrJoin(aliases, ","),
                                   FormatTime(std::max(m.updated_unix_ms(), m.created_unix_ms())));
    }
    return kExitOk;
  }
  weightgate::v1::ListVersionsRequest request;
  request.set_model_id(p->positional[0]);
  weightgate::v1::ListVersionsResponse response;
  grpc::Status s = conn->registry().ListVersions(conn->NewContext().get(), request, &response);
  if (!s.ok()) return ReportRpcError("ls", s);
  if (global.json) {
    std::cout << ToJson(response) << "\n";
    return kExitOk;
  }
  if (response.versions().empty()) {
    std::cout << "model " << request.model_id() << " has no versions yet (weightgate upload)\n";
    return kExitOk;
  }
  std::cout << absl::StrFormat("%-8s %10s  %-14s %-20s %s\n", "VERSION", "SIZE", "SHA256",
                               "ALIASES", "CREATED");
  for (const auto& v : response.versions()) {
    std::cout << absl::StrFormat("%-8d %10s  %-14s %-20s %s\n", v.version(),
                                 HumanBytes(v.size_bytes()), v.blob_sha256().substr(0, 12),
                                 v.aliases().empty() ? "-" : absl::StrJoin(v.aliases(), ","),
                                 FormatTime(v.created_unix_ms()));
  }
  return kExitOk;
}

int RunShow(const GlobalOptions& global, const Args& args) {
  if (WantsHelp(args)) {
    std::cout << "usage: weightgate show MODEL\n  Prints the model's expected tensors, policy and "
                 "aliases.\n";
    return kExitOk;
  }
  absl::StatusOr<Parsed> p = ParseArgs(args, {}, {});
  if (!p.ok()) return UsageError("show", std::string(p.status().message()));
  if (p->positional.size() != 1) return UsageError("show", "expected MODEL");
  if (int rc = CheckModelId("show", p->positional[0]); rc != kExitOk) return rc;
  auto conn = Connection::Open(global);
  if (!conn) return kExitUsage;
  weightgate::v1::GetModelRequest request;
  request.set_model_id(p->positional[0]);
  Model model;
  grpc::Status s = conn->registry().GetModel(conn->NewContext().get(), request, &model);
  if (!s.ok()) return ReportRpcError("show", s);
  if (global.json) {
    std::cout << ToJson(model) << "\n";
    return kExitOk;
  }
  std::cout << "model:    " << model.model_id() << "\n"
            << "source:   " << model.spec().source_format()
            << " sha256:" << model.spec().source_sha256().substr(0, 16) << "\n"
            << "versions: " << model.version_count() << "\n";
  for (const auto& [alias, v] : model.aliases())
    std::cout << "alias:    " << alias << " -> " << v << "\n";
  std::cout << "policy:   " << ToJson(model.policy());
  std::cout << absl::StrFormat("%-56s %-5s %s\n", "TENSOR", "DTYPE", "SHAPE");
  for (const auto& t : model.spec().tensors()) {
    std::cout << absl::StrFormat("%-56s %-5s [%s]\n", t.name(), t.dtype(),
                                 absl::StrJoin(t.shape(), ", "));
  }
  return kExitOk;
}

int RunRegister(const GlobalOptions& global, const Args& raw) {
  if (WantsHelp(raw)) {
    std::cout
        << "usage: weightgate register MODEL --from FILE [--example_input SHAPE[:DTYPE]]...\n"
           "                           [--description TEXT] [--replace] [policy flags]\n"
           "  FILE: a reference state_dict (torch.save, safetensors), a TorchScript archive\n"
           "  (torch.jit.script(model).save) or a JSON spec {\"tensors\": {name: {dtype, "
           "shape}}}.\n"
           "  --example_input 1x3x32x32 (TorchScript only) enables a forward-pass smoke test.\n"
        << PolicyFlagsHelp();
    return kExitOk;
  }
  Args args = raw;
  weightgate::v1::RegisterModelHeader header;
  if (absl::Status s = ParsePolicyArgs(args, header.mutable_policy(), nullptr); !s.ok()) {
    return UsageError("register", std::string(s.message()));
  }
  absl::StatusOr<Parsed> p =
      ParseArgs(args, {"--from", "--example_input", "--description"}, {"--replace"});
  if (!p.ok()) return UsageError("register", std::string(p.status().message()));
  if (p->positional.size() != 1) return UsageError("register", "expected MODEL (and --from FILE)");
  if (!p->has("--from")) return UsageError("register", "--from FILE is required");
  if (int rc = CheckModelId("register", p->positional[0]); rc != kExitOk) return rc;
  std::string file = p->get("--from");
  int64_t size = FileSize(file);
  if (size < 0) return UsageError("register", absl::StrCat("cannot read ", file));
  header.set_model_id(p->positional[0]);
  header.set_description(p->get("--description"));
  header.set_replace(p->has("--replace"));
  header.set_total_bytes(size);
  if (p->has("--example_input")) {
    for (const std::string& spec : p->flags.at("--example_input")) {
      std::vector<std::string> parts = absl::StrSplit(spec, ':');
      auto* input = header.add_example_inputs();
      for (absl::string_view dim : absl::StrSplit(parts[0], 'x')) {
        int64_t d = 0;
        if (!absl::SimpleAtoi(dim, &d) || d < 0) {
          return UsageError("register", absl::StrCat("bad --example_input '", spec,
                                                     "' (want e.g. 1x3x224x224[:F32])"));
        }
        input->add_shape(d);
      }
      input->set_dtype(parts.size() > 1 ? parts[1] : "F32");
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
  if (!sent.ok()) return UsageError("register", std::string(sent.message()));
  if (global.json) {
    std::cout << ToJson(model) << "\n";
  } else {
    std::cout << "registered " << model.model_id() << ": " << model.spec().tensors_size()
              << " tensors from " << model.spec().source_format() << "\n";
  }
  return kExitOk;
}

// Shared by validate and upload: header from args, then stream the file.
static int ParseUploadArgs(const std::string& command, Args args, bool allow_alias,
                           weightgate::v1::UploadHeader* header, std::string* file) {
  bool any = false;
  if (absl::Status s = ParsePolicyArgs(args, header->mutable_policy_override(), &any); !s.ok()) {
    return UsageError(command, std::string(s.message()));
  }
  if (!any) header->clear_policy_override();
  std::vector<std::string> value_flags;
  if (allow_alias) value_flags.push_back("--alias");
  absl::StatusOr<Parsed> p = ParseArgs(args, value_flags, {});
  if (!p.ok()) return UsageError(command, std::string(p.status().message()));
  if (p->positional.size() != 2) return UsageError(command, "expected MODEL FILE");
  if (int rc = CheckModelId(command, p->positional[0]); rc != kExitOk) return rc;
  *file = p->positional[1];
  int64_t size = FileSize(*file);
  if (size < 0) return UsageError(command, absl::StrCat("cannot read ", *file));
  header->set_model_id(p->positional[0]);
  header->set_total_bytes(size);
  header->set_filename(
      file->substr(file->rfind('/') == std::string::npos ? 0 : file->rfind('/') + 1));
  if (allow_alias) header->set_alias(p->get("--alias"));
  return kExitOk;
}

int RunValidate(const GlobalOptions& global, const Args& args) {
  if (WantsHelp(args)) {
    std::cout
        << "usage: weightgate validate MODEL FILE [policy flags]\n"
           "  Dry run: reads, repairs and checks FILE against MODEL's spec; stores nothing.\n"
           "  Exit 0 when VALID or NORMALIZED, 1 when INVALID (also unreadable or unsafe files),\n"
           "  2 on usage or connection errors. Policy flags override the model's policy.\n"
        << PolicyFlagsHelp();
    return kExitOk;
  }
  weightgate::v1::UploadHeader header;
  std::string file;
  if (int rc = ParseUploadArgs("validate", args, false, &header, &file); rc != kExitOk) return rc;
  auto conn = Connection::Open(global);
  if (!conn) return kExitUsage;
  ValidationReport report;
  auto ctx = conn->NewContext();
  auto writer = conn->registry().ValidateCheckpoint(ctx.get(), &report);
  absl::Status sent = SendFile(writer.get(), header, file);
  grpc::Status s = writer->Finish();
  if (!s.ok()) return ReportRpcError("validate", s);
  if (!sent.ok()) return UsageError("validate", std::string(sent.message()));
  std::cout << (global.json ? ToJson(report) + "\n" : FormatReport(report));
  return report.verdict() == weightgate::v1::INVALID ? kExitInvalid : kExitOk;
}

int RunUpload(const GlobalOptions& global, const Args& args) {
  if (WantsHelp(args)) {
    std::cout << "usage: weightgate upload MODEL FILE [--alias NAME] [policy flags]\n"
                 "  Validates and repairs FILE, stores the fixed weights as MODEL's next version\n"
                 "  (moving `latest`, and NAME if given) and prints the version.\n"
                 "  Exit 1 when the checkpoint is INVALID (nothing is stored).\n"
              << PolicyFlagsHelp();
    return kExitOk;
  }
  weightgate::v1::UploadHeader header;
  std::string file;
  if (int rc = ParseUploadArgs("upload", args, true, &header, &file); rc != kExitOk) return rc;
  if (!header.alias().empty()) {
    if (absl::Status s = common::ValidateModelId(header.alias()); !s.ok()) {
      return UsageError("upload", absl::StrCat("invalid alias '", header.alias(), "'"));
    }
  }
  auto conn = Connection::Open(global);
  if (!conn) return kExitUsage;
  weightgate::v1::UploadResponse response;
  auto ctx = conn->NewContext();
  auto writer = conn->registry().UploadCheckpoint(ctx.get(), &response);
  absl::Status sent = SendFile(writer.get(), header, file);
  grpc::Status s = writer->Finish();
  if (s.error_code() == grpc::StatusCode::FAILED_PRECONDITION && !s.error_details().empty()) {
    ValidationReport report;
    if (report.ParseFromString(s.error_details())) {
      std::cout << (global.json ? ToJson(report) + "\n" : FormatReport(report));
      std::cerr << "weightgate: upload: " << s.error_message() << "; nothing stored\n";
      return kExitInvalid;
    }
  }
  if (!s.ok()) return ReportRpcError("upload", s);
  if (!sent.ok()) return UsageError("upload", std::string(sent.message()));
  if (global.json) {
    std::cout << ToJson(response) << "\n";
  } else {
    std::cout << FormatReport(response.report());
    std::cout << "stored " << response.version().model_id() << "@" << response.version().version()
              << " (" << HumanBytes(response.version().size_bytes()) << ", sha256 "
              << response.version().blob_sha256().substr(0, 16) << ")";
    if (!response.version().aliases().empty()) {
      std::cout << " aliases " << absl::StrJoin(response.version().aliases(), ",");
    }
    std::cout << "\n";
  }
  return kExitOk;
}

int RunAlias(const GlobalOptions& global, const Args& args) {
  if (WantsHelp(args)) {
    std::cout << "usage: weightgate alias MODEL VERSION NAME\n  Points alias NAME (e.g. prod) at "
                 "VERSION.\n";
    return kExitOk;
  }
  absl::StatusOr<Parsed> p = ParseArgs(args, {}, {});
  if (!p.ok()) return UsageError("alias", std::string(p.status().message()));
  if (p->positional.size() != 3) return UsageError("alias", "expected MODEL VERSION NAME");
  if (int rc = CheckModelId("alias", p->positional[0]); rc != kExitOk) return rc;
  int64_t version = 0;
  if (!absl::SimpleAtoi(p->positional[1], &version) || version <= 0) {
    return UsageError(
        "alias", absl::StrCat("VERSION must be a positive number, not '", p->positional[1], "'"));
  }
  auto conn = Connection::Open(global);
  if (!conn) return kExitUsage;
  weightgate::v1::SetAliasRequest request;
  request.set_model_id(p->positional[0]);
  request.set_version(version);
  request.set_alias(p->positional[2]);
  weightgate::v1::SetAliasResponse response;
  grpc::Status s = conn->registry().SetAlias(conn->NewContext().get(), request, &response);
  if (!s.ok()) return ReportRpcError("alias", s);
  if (global.json) {
    std::cout << ToJson(response) << "\n";
  } else {
    std::cout << request.model_id() << "@" << request.alias() << " -> " << version;
    if (response.previous_version() > 0)
      std::cout << " (was " << response.previous_version() << ")";
    std::cout << "\n";
  }
  return kExitOk;
}

int RunDelete(const GlobalOptions& global, const Args& args) {
  if (WantsHelp(args)) {
    std::cout << "usage: weightgate delete MODEL[@VERSION]\n  Deletes a model (all versions) or "
                 "one version.\n";
    return kExitOk;
  }
  absl::StatusOr<Parsed> p = ParseArgs(args, {}, {});
  if (!p.ok()) return UsageError("delete", std::string(p.status().message()));
  if (p->positional.size() != 1) return UsageError("delete", "expected MODEL or MODEL@VERSION");
  absl::StatusOr<common::ParsedRef> ref = common::ParseRef(p->positional[0]);
  if (!ref.ok()) return UsageError("delete", std::string(ref.status().message()));
  bool whole = p->positional[0].find('@') == std::string::npos;
  if (!whole && ref->version == 0)
    return UsageError("delete", "only MODEL or MODEL@VERSION (a number)");
  auto conn = Connection::Open(global);
  if (!conn) return kExitUsage;
  grpc::Status s;
  if (whole) {
    weightgate::v1::DeleteModelRequest request;
    request.set_model_id(ref->model_id);
    weightgate::v1::DeleteModelResponse response;
    s = conn->registry().DeleteModel(conn->NewContext().get(), request, &response);
  } else {
    weightgate::v1::DeleteVersionRequest request;
    request.set_model_id(ref->model_id);
    request.set_version(ref->version);
    weightgate::v1::DeleteVersionResponse response;
    s = conn->registry().DeleteVersion(conn->NewContext().get(), request, &response);
  }
  if (!s.ok()) return ReportRpcError("delete", s);
  if (!global.json) std::cout << "deleted " << p->positional[0] << "\n";
  return kExitOk;
}

int RunFetch(const GlobalOptions& global, const Args& args) {
  if (WantsHelp(args)) {
    std::cout
        << "usage: weightgate fetch REF -o OUT [--format safetensors|pt] [--tensor NAME]...\n"
           "  REF is MODEL, MODEL@VERSION or MODEL@ALIAS (MODEL = MODEL@latest).\n"
           "  Every chunk is CRC32C-checked and the whole file sha256-checked. An interrupted\n"
           "  fetch leaves OUT.part; running the same command again resumes it.\n"
           "  --format pt writes a torch.save archive: torch.load(OUT, weights_only=True).\n";
    return kExitOk;
  }
  absl::StatusOr<Parsed> p = ParseArgs(args, {"-o", "--output", "--format"}, {});
  if (!p.ok()) return UsageError("fetch", std::string(p.status().message()));
  if (p->positional.size() != 1) return UsageError("fetch", "expected REF");
  std::string out = p->get("-o", p->get("--output"));
  if (out.empty()) return UsageError("fetch", "-o OUT is required");
  std::string format = p->get("--format", "safetensors");
  if (format != "safetensors" && format != "pt")
    return UsageError("fetch", "--format must be safetensors or pt");
  absl::StatusOr<common::ParsedRef> ref = common::ParseRef(p->positional[0]);
  if (!ref.ok()) return UsageError("fetch", std::string(ref.status().message()));
  auto conn = Connection::Open(global);
  if (!conn) return kExitUsage;

  std::string part = out + ".part";
  int64_t have = std::max<int64_t>(FileSize(part), 0);
  weightgate::v1::FetchRequest request;
  request.set_ref(p->positional[0]);
  request.set_start_offset(static_cast<uint64_t>(have));
  auto ctx = conn->NewContext();
  auto reader = conn->stream().FetchWeights(ctx.get(), request);
  weightgate::v1::FetchResponse response;
  weightgate::v1::Manifest manifest;
  bool have_manifest = false;
  int fd = -1;
  uint64_t received = 0;
  std::string error;
  while (error.empty() && reader->Read(&response)) {
    if (response.has_manifest()) {
      manifest = response.manifest();
      have_manifest = true;
      fd = ::open(part.c_str(), O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
      if (fd < 0) error = absl::StrCat("cannot write ", part);
      continue;
    }
    const auto& chunk = response.chunk();
    if (!have_manifest) {
      error = "server sent data before the manifest";
    } else if (common::Crc32c(chunk.data()) != chunk.crc32c()) {
      error = absl::StrCat("checksum mismatch in chunk at offset ", chunk.offset());
    } else if (::pwrite(fd, chunk.data().data(), chunk.data().size(),
                        static_cast<off_t>(chunk.offset())) !=
               static_cast<ssize_t>(chunk.data().size())) {
      error = absl::StrCat("write ", part, ": ", std::strerror(errno));
    }
    received += chunk.data().size();
  }
  if (!error.empty()) ctx->TryCancel();
  grpc::Status s = reader->Finish();
  if (fd >= 0) {
    ::fsync(fd);
    ::close(fd);
  }
  if (!error.empty()) return UsageError("fetch", error + " (run again to resume)");
  if (!s.ok()) return ReportRpcError("fetch", s);
  // Whole-file check: the blob is named by its sha256.
  absl::StatusOr<std::string> sha = common::Sha256File(part);
  if (!sha.ok()) return UsageError("fetch", std::string(sha.status().message()));
  if (*sha != manifest.blob_sha256()) {
    ::unlink(part.c_str());
    return UsageError("fetch", absl::StrCat("sha256 mismatch (got ", sha->substr(0, 16), ", want ",
                                            manifest.blob_sha256().substr(0, 16),
                                            "); partial file removed, run again"));
  }
  if (format == "pt") {
    absl::Status converted = SafetensorsToTorch(part, out);
    ::unlink(part.c_str());
    if (!converted.ok()) return UsageError("fetch", std::string(converted.message()));
  } else if (::rename(part.c_str(), out.c_str()) != 0) {
    return UsageError("fetch",
                      absl::StrCat("rename ", part, " -> ", out, ": ", std::strerror(errno)));
  }
  if (global.json) {
    std::cout << ToJson(manifest) << "\n";
  } else {
    std::cout << "fetched " << manifest.model_id() << "@" << manifest.version() << ": "
              << manifest.tensors_size() << " tensors, "
              << HumanBytes(static_cast<double>(manifest.total_bytes()))
              << (have > 0 ? absl::StrCat(" (resumed at ", have, ")") : std::string()) << " -> "
              << out << "\n";
  }
  return kExitOk;
}

int RunWatch(const GlobalOptions& global, const Args& args) {
  if (WantsHelp(args)) {
    std::cout
        << "usage: weightgate watch REF\n  Prints an event whenever the alias in REF moves.\n";
    return kExitOk;
  }
  absl::StatusOr<Parsed> p = ParseArgs(args, {}, {});
  if (!p.ok()) return UsageError("watch", std::string(p.status().message()));
  if (p->positional.size() != 1) return UsageError("watch", "expected REF");
  absl::StatusOr<common::ParsedRef> ref = common::ParseRef(p->positional[0]);
  if (!ref.ok()) return UsageError("watch", std::string(ref.status().message()));
  auto conn = Connection::Open(global);
  if (!conn) return kExitUsage;
  weightgate::v1::WatchRequest request;
  request.set_ref(p->positional[0]);
  auto ctx = conn->NewContext();
  auto reader = conn->stream().WatchModel(ctx.get(), request);
  weightgate::v1::WatchEvent event;
  while (reader->Read(&event)) {
    if (global.json) {
      std::cout << ToJson(event) << std::endl;
    } else {
      std::cout << FormatTime(event.unix_ms()) << " " << event.model_id() << "@" << event.alias()
                << " -> " << event.version() << std::endl;
    }
  }
  return ReportRpcError("watch", reader->Finish());
}

int RunNormalize(const GlobalOptions& global, const Args& args, const char* argv0) {
  // The helper sits beside this binary; it alone loads libtorch.
  std::string self(4096, '\0');
  ssize_t n = ::readlink("/proc/self/exe", self.data(), self.size() - 1);
  std::string dir = n > 0 ? self.substr(0, static_cast<size_t>(n)) : std::string(argv0);
  dir = dir.substr(0, dir.rfind('/') == std::string::npos ? 0 : dir.rfind('/'));
  std::string helper = (dir.empty() ? std::string(".") : dir) + "/weightgate-normalize";
  std::vector<std::string> argv_strings = {helper};
  argv_strings.insert(argv_strings.end(), args.begin(), args.end());
  if (global.json) argv_strings.push_back("--json");
  std::vector<char*> argv;
  for (std::string& s : argv_strings) argv.push_back(s.data());
  argv.push_back(nullptr);
  ::execv(helper.c_str(), argv.data());
  return UsageError("normalize", absl::StrCat("cannot run ", helper, ": ", std::strerror(errno)));
}

}  // namespace weightgate::cli
