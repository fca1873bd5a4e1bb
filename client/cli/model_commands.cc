// `weightgate ls | show | alias | delete`: unary registry calls and their
// tables.
#include <algorithm>
#include <iostream>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "client/cli/command_line.h"
#include "client/cli/commands.h"
#include "client/common/report_format.h"
#include "common/human_bytes.h"
#include "common/model_ref.h"

namespace weightgate::cli {
namespace {

using client::CommandSpec;
using client::ParsedArgs;
using client::ProtoToJson;
using common::HumanBytes;
using weightgate::v1::Model;

// clang-format off
const CommandSpec kLsSpec = {
    .program = "weightgate ls", .synopsis = "[MODEL]",
    .description = "Lists registered models, or the versions of MODEL.",
    .min_args = 0, .max_args = 1, .args_error = "expected at most one MODEL"};
const CommandSpec kShowSpec = {
    .program = "weightgate show", .synopsis = "MODEL",
    .description = "Prints the model's expected tensors, policy and aliases.",
    .min_args = 1, .max_args = 1, .args_error = "expected MODEL"};
const CommandSpec kAliasSpec = {
    .program = "weightgate alias", .synopsis = "MODEL VERSION NAME",
    .description = "Points alias NAME (e.g. prod) at VERSION.",
    .min_args = 3, .max_args = 3, .args_error = "expected MODEL VERSION NAME"};
const CommandSpec kDeleteSpec = {
    .program = "weightgate delete", .synopsis = "MODEL[@VERSION]",
    .description = "Deletes a model (all versions) or one version.",
    .min_args = 1, .max_args = 1, .args_error = "expected MODEL or MODEL@VERSION"};
// clang-format on

int PrintModels(const weightgate::v1::ListModelsResponse& response) {
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
    std::cout << absl::StrFormat("%-32s %8d %9d  %-28s %s\n", m.model_id(), m.spec().tensors_size(),
                                 m.version_count(),
                                 aliases.empty() ? "-" : absl::StrJoin(aliases, ","),
                                 FormatTime(std::max(m.updated_unix_ms(), m.created_unix_ms())));
  }
  return kExitOk;
}

int PrintVersions(const std::string& model_id,
                  const weightgate::v1::ListVersionsResponse& response) {
  if (response.versions().empty()) {
    std::cout << "model " << model_id << " has no versions yet (weightgate upload)\n";
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

}  // namespace

int RunLs(const GlobalOptions& global, const Args& args) {
  ParsedArgs p;
  if (std::optional<int> rc = ParseOrExit(kLsSpec, "ls", args, &p)) return *rc;
  if (p.positional.size() == 1) {
    if (int rc = CheckModelId("ls", p.positional[0]); rc != kExitOk) return rc;
  }
  auto conn = Connection::Open(global);
  if (!conn) return kExitUsage;
  if (p.positional.empty()) {
    weightgate::v1::ListModelsResponse response;
    grpc::Status s = conn->registry().ListModels(conn->NewContext().get(), {}, &response);
    if (!s.ok()) return ReportRpcError("ls", s);
    if (global.json) {
      std::cout << ProtoToJson(response);
      return kExitOk;
    }
    return PrintModels(response);
  }
  weightgate::v1::ListVersionsRequest request;
  request.set_model_id(p.positional[0]);
  weightgate::v1::ListVersionsResponse response;
  grpc::Status s = conn->registry().ListVersions(conn->NewContext().get(), request, &response);
  if (!s.ok()) return ReportRpcError("ls", s);
  if (global.json) {
    std::cout << ProtoToJson(response);
    return kExitOk;
  }
  return PrintVersions(request.model_id(), response);
}

int RunShow(const GlobalOptions& global, const Args& args) {
  ParsedArgs p;
  if (std::optional<int> rc = ParseOrExit(kShowSpec, "show", args, &p)) return *rc;
  if (int rc = CheckModelId("show", p.positional[0]); rc != kExitOk) return rc;
  auto conn = Connection::Open(global);
  if (!conn) return kExitUsage;
  weightgate::v1::GetModelRequest request;
  request.set_model_id(p.positional[0]);
  Model model;
  grpc::Status s = conn->registry().GetModel(conn->NewContext().get(), request, &model);
  if (!s.ok()) return ReportRpcError("show", s);
  if (global.json) {
    std::cout << ProtoToJson(model);
    return kExitOk;
  }
  std::cout << "model:    " << model.model_id() << "\n"
            << "source:   " << model.spec().source_format()
            << " sha256:" << model.spec().source_sha256().substr(0, 16) << "\n"
            << "versions: " << model.version_count() << "\n";
  for (const auto& [alias, v] : model.aliases())
    std::cout << "alias:    " << alias << " -> " << v << "\n";
  std::cout << "policy:   " << ProtoToJson(model.policy());
  std::cout << absl::StrFormat("%-56s %-5s %s\n", "TENSOR", "DTYPE", "SHAPE");
  for (const auto& t : model.spec().tensors()) {
    std::cout << absl::StrFormat("%-56s %-5s [%s]\n", t.name(), t.dtype(),
                                 absl::StrJoin(t.shape(), ", "));
  }
  return kExitOk;
}

int RunAlias(const GlobalOptions& global, const Args& args) {
  ParsedArgs p;
  if (std::optional<int> rc = ParseOrExit(kAliasSpec, "alias", args, &p)) return *rc;
  if (int rc = CheckModelId("alias", p.positional[0]); rc != kExitOk) return rc;
  int64_t version = 0;
  if (!absl::SimpleAtoi(p.positional[1], &version) || version <= 0) {
    return UsageError(
        "alias", absl::StrCat("VERSION must be a positive number, not '", p.positional[1], "'"));
  }
  auto conn = Connection::Open(global);
  if (!conn) return kExitUsage;
  weightgate::v1::SetAliasRequest request;
  request.set_model_id(p.positional[0]);
  request.set_version(version);
  request.set_alias(p.positional[2]);
  weightgate::v1::SetAliasResponse response;
  grpc::Status s = conn->registry().SetAlias(conn->NewContext().get(), request, &response);
  if (!s.ok()) return ReportRpcError("alias", s);
  if (global.json) {
    std::cout << ProtoToJson(response);
  } else {
    std::cout << request.model_id() << "@" << request.alias() << " -> " << version;
    if (response.previous_version() > 0)
      std::cout << " (was " << response.previous_version() << ")";
    std::cout << "\n";
  }
  return kExitOk;
}

int RunDelete(const GlobalOptions& global, const Args& args) {
  ParsedArgs p;
  if (std::optional<int> rc = ParseOrExit(kDeleteSpec, "delete", args, &p)) return *rc;
  absl::StatusOr<common::ParsedRef> ref = common::ParseRef(p.positional[0]);
  if (!ref.ok()) return UsageError("delete", ref.status().message());
  bool whole = p.positional[0].find('@') == std::string::npos;
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
  if (!global.json) std::cout << "deleted " << p.positional[0] << "\n";
  return kExitOk;
}

}  // namespace weightgate::cli
