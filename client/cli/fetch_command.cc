// `weightgate fetch REF -o OUT [--format safetensors|pt] [--streams N] [--tensor NAME]...`:
// FetchWeights into OUT. The whole blob goes through the C++ client library
// (weightgate::Client::FetchToFile: concurrent byte-range streams written at
// their offsets into OUT.part, resumed on UNAVAILABLE, sha256-checked; an
// interrupted fetch leaves the received prefix in OUT.part for the next run);
// a --tensor subset is rewritten as a smaller safetensors file.
//
// Ties: the stored blob holds a tied tensor once and names the other member
// in a tie record (server/checkpoint/safetensors.h). Output gets every name a
// strict load_state_dict needs: --format safetensors writes the tied names'
// bytes again (ExpandTies), --format pt gives them one shared storage. A
// blob without ties goes to OUT as fetched.
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <iostream>
#include <map>
#include <set>
#include <utility>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "client/cli/command_line.h"
#include "client/cli/commands.h"
#include "client/cli/file_convert.h"
#include "client/common/report_format.h"
#include "common/crc32c.h"
#include "common/file_util.h"
#include "common/human_bytes.h"
#include "common/model_ref.h"
#include "server/checkpoint/dtype.h"
#include "server/checkpoint/safetensors.h"
#include "weightgate/client.h"

namespace weightgate::cli {
namespace {

using client::CommandSpec;
using client::ParsedArgs;
using weightgate::v1::FetchResponse;
using weightgate::v1::Manifest;

// clang-format off
const CommandSpec kFetchSpec = {
    .program = "weightgate fetch", .synopsis = "REF",
    .description =
        "REF is MODEL, MODEL@VERSION or MODEL@ALIAS (MODEL = MODEL@latest).\n"
        "Every chunk is CRC32C-checked and the whole file sha256-checked. An interrupted\n"
        "fetch leaves OUT.part; running the same command again resumes it.\n"
        "--format pt writes a torch.save archive: torch.load(OUT, weights_only=True).\n"
        "Tied tensors, stored once, come out under every name (safetensors) or as one\n"
        "shared storage (pt), ready for load_state_dict(strict=True).\n"
        "--tensor writes only the named tensors (CRC32C-checked; not resumable, and not\n"
        "sha256-checked since the file is not the stored blob).",
    .flags = {
        {.name = "--output", .value_name = "OUT", .help = "file to write", .alias = "-o",
         .required = true},
        {.name = "--format", .value_name = "safetensors|pt",
         .help = "output format (default safetensors)", .choices = "safetensors|pt"},
        {.name = "--tensor", .value_name = "NAME", .help = "fetch only this tensor; repeatable",
         .repeatable = true},
        {.name = "--streams", .value_name = "N",
         .help = "concurrent byte-range streams (default: one per 64 MiB, at most one per two "
                 "cores and 8)"},
    },
    .min_args = 1, .max_args = 1, .args_error = "expected REF"};
// clang-format on

// The checks a chunk passes before its bytes are used.
absl::Status CheckChunk(const weightgate::v1::Chunk& chunk) {
  if (common::Crc32c(chunk.data()) != chunk.crc32c()) {
    return absl::DataLossError(
        absl::StrCat("checksum mismatch in chunk at offset ", chunk.offset()));
  }
  return absl::OkStatus();
}

// A stream's outcome: the manifest, a local error (bad chunk, write failure)
// or the RPC status.
struct Received {
  Manifest manifest;
  absl::Status local;
  grpc::Status rpc;
};

// name -> tied_to of the manifest's tied entries.
TieMap TiesOf(const Manifest& manifest) {
  TieMap ties;
  for (const auto& t : manifest.tensors()) {
    if (!t.tied_to().empty()) ties.emplace(t.name(), t.tied_to());
  }
  return ties;
}

// The requested tensors of `manifest` whose bytes the subset file holds, in
// blob order (the order the server sends their bytes in); `tie_records`
// gets the requested tensors that share a holder's byte range (a tied name
// requested with its partner), as (name, holder).
absl::StatusOr<std::vector<weightgate::v1::TensorEntry>> SelectTensors(
    const Manifest& manifest, const std::vector<std::string>& names,
    std::vector<std::pair<std::string, std::string>>* tie_records) {
  std::set<std::string> wanted(names.begin(), names.end());
  std::map<std::string, const weightgate::v1::TensorEntry*> requested;
  for (const auto& t : manifest.tensors()) {
    if (wanted.erase(t.name()) > 0) requested.emplace(t.name(), &t);
  }
  if (!wanted.empty()) {
    return absl::NotFoundError(absl::StrCat("no tensor '", *wanted.begin(), "' in the manifest"));
  }
  std::vector<weightgate::v1::TensorEntry> selected;
  for (const auto& [name, t] : requested) {
    auto partner = t->tied_to().empty() ? requested.end() : requested.find(t->tied_to());
    if (partner != requested.end() && partner->second->offset() == t->offset() &&
        partner->second->length() == t->length()) {
      tie_records->emplace_back(checkpoint::SafetensorsTieKey(name), partner->first);
    } else {
      selected.push_back(*t);
    }
  }
  std::sort(selected.begin(), selected.end(),
            [](const auto& a, const auto& b) { return a.offset() < b.offset(); });
  return selected;
}

absl::StatusOr<std::unique_ptr<checkpoint::SafetensorsWriter>> SubsetWriter(
    const std::string& path, const std::vector<weightgate::v1::TensorEntry>& selected,
    std::vector<std::pair<std::string, std::string>> tie_records) {
  std::vector<checkpoint::SafetensorsEntry> entries;
  for (const auto& t : selected) {
    std::optional<checkpoint::DType> dtype = checkpoint::DTypeFromName(t.dtype());
    if (!dtype) return absl::DataLossError(absl::StrCat("unknown dtype '", t.dtype(), "'"));
    entries.push_back({t.name(), *dtype, {t.shape().begin(), t.shape().end()}});
  }
  if (absl::Status s = checkpoint::ValidateSafetensorsLayout(entries, tie_records); !s.ok()) {
    return s;
  }
  return checkpoint::SafetensorsWriter::Create(path, std::move(entries), std::move(tie_records));
}

// Appends `chunk` after checking it continues the tensor being received:
// selected[*k] at byte *pos.
absl::Status AppendSubsetChunk(const weightgate::v1::Chunk& chunk,
                               const std::vector<weightgate::v1::TensorEntry>& selected, size_t* k,
                               uint64_t* pos, checkpoint::SafetensorsWriter* writer) {
  while (*k < selected.size() && *pos == selected[*k].length()) {
    ++*k;
    *pos = 0;
  }
  if (*k >= selected.size() || chunk.offset() != selected[*k].offset() + *pos ||
      chunk.data().size() > selected[*k].length() - *pos) {
    return absl::DataLossError(
        absl::StrCat("chunk at offset ", chunk.offset(), " is not the next requested byte range"));
  }
  *pos += chunk.data().size();
  return writer->Append(chunk.data());
}

// Only `names`: their bytes are rewritten, back to back, as the safetensors
// file `path` (a tied name requested with its partner as a tie record).
Received FetchSubset(Connection& conn, const std::string& ref,
                     const std::vector<std::string>& names, const std::string& path) {
  weightgate::v1::FetchRequest request;
  request.set_ref(ref);
  for (const std::string& name : names) request.add_tensor_names(name);
  auto ctx = conn.NewContext();
  auto reader = conn.stream().FetchWeights(ctx.get(), request);
  Received got;
  std::vector<weightgate::v1::TensorEntry> selected;
  std::unique_ptr<checkpoint::SafetensorsWriter> writer;
  size_t k = 0;
  uint64_t pos = 0;
  FetchResponse response;
  while (got.local.ok() && reader->Read(&response)) {
    if (response.has_manifest()) {
      got.manifest = response.manifest();
      std::vector<std::pair<std::string, std::string>> tie_records;
      absl::StatusOr<std::vector<weightgate::v1::TensorEntry>> s =
          SelectTensors(got.manifest, names, &tie_records);
      if (!s.ok()) {
        got.local = s.status();
        break;
      }
      selected = *std::move(s);
      absl::StatusOr<std::unique_ptr<checkpoint::SafetensorsWriter>> w =
          SubsetWriter(path, selected, std::move(tie_records));
      if (w.ok()) writer = *std::move(w);
      got.local = w.status();
    } else if (writer == nullptr) {
      got.local = absl::DataLossError("server sent data before the manifest");
    } else if (got.local = CheckChunk(response.chunk()); got.local.ok()) {
      got.local = AppendSubsetChunk(response.chunk(), selected, &k, &pos, writer.get());
    }
  }
  if (!got.local.ok()) ctx->TryCancel();
  got.rpc = reader->Finish();
  if (got.local.ok() && got.rpc.ok()) {
    got.local = writer != nullptr ? writer->Finish() : absl::DataLossError("no manifest received");
  }
  return got;
}

// Moves the checked safetensors file `from` to `out`, converting it for pt
// (`ties`: the manifest's) and writing tied names out for safetensors.
absl::Status Deliver(const std::string& from, const std::string& out, const std::string& format,
                     const TieMap& ties) {
  if (format == "pt") {
    absl::Status converted = SafetensorsToTorch(from, out, ties);
    ::unlink(from.c_str());
    return converted;
  }
  if (!ties.empty()) {
    absl::StatusOr<bool> tied = HasTieRecords(from);
    if (!tied.ok()) return tied.status();
    if (*tied) {
      absl::Status expanded = ExpandTies(from, out);
      if (from != out) ::unlink(from.c_str());
      return expanded;
    }
  }
  if (::rename(from.c_str(), out.c_str()) != 0) {
    return absl::InternalError(
        absl::StrCat("rename ", from, " -> ", out, ": ", std::strerror(errno)));
  }
  return absl::OkStatus();
}

// The whole blob through weightgate::Client. For --format pt the blob lands
// in OUT.blob first and is converted.
int FetchWhole(const GlobalOptions& global, const std::string& ref, const std::string& out,
               const std::string& format, int streams) {
  weightgate::ClientOptions options;
  options.server = global.server;
  options.token = global.token;
  options.tls_ca = global.tls_ca;
  options.tls_cert = global.tls_cert;
  options.tls_key = global.tls_key;
  options.streams = streams;
  options.resume_files = true;
  absl::StatusOr<std::unique_ptr<weightgate::Client>> client = weightgate::Client::Create(options);
  if (!client.ok()) return UsageError("fetch", client.status().message());
  const std::string blob = format == "pt" ? out + ".blob" : out;
  absl::StatusOr<weightgate::FetchInfo> info = (*client)->FetchToFile(ref, blob);
  if (!info.ok()) {
    std::string message(info.status().message());
    if (absl::IsDataLoss(info.status())) {
      message += " (run again)";
    } else if (absl::IsUnavailable(info.status())) {
      message += " (server unavailable; run again to resume)";
    }
    return UsageError("fetch", message);
  }
  // Tied names: the tie records of OUT become keys of their own (OUT is
  // rewritten in place; the blob itself passed the sha256 check).
  TieMap ties;
  for (const weightgate::TensorInfo& t : info->tensors) {
    if (!t.tied_to.empty()) ties.emplace(t.name, t.tied_to);
  }
  if (format == "pt" || !ties.empty()) {
    absl::Status s = Deliver(blob, out, format, ties);
    if (!s.ok()) {
      ::unlink(out.c_str());  // never leave a file that misses tensors
      return UsageError("fetch", s.message());
    }
  }
  if (global.json) {
    Manifest m;
    m.set_model_id(info->model_id);
    m.set_version(info->version);
    m.set_blob_sha256(info->sha256);
    m.set_total_bytes(info->total_bytes);
    for (const weightgate::TensorInfo& t : info->tensors) {
      auto* e = m.add_tensors();
      e->set_name(t.name);
      e->set_dtype(t.dtype);
      for (int64_t d : t.shape) e->add_shape(d);
      e->set_offset(t.offset);
      e->set_length(t.length);
      e->set_tied_to(t.tied_to);
    }
    std::cout << client::ProtoToJson(m);
    return kExitOk;
  }
  std::cout << "fetched " << info->model_id << "@" << info->version << ": " << info->tensors.size()
            << " tensors, " << common::HumanBytes(static_cast<double>(info->total_bytes))
            << (info->resumed_from > 0 ? absl::StrCat(" (resumed at ", info->resumed_from, ")")
                                       : std::string())
            << " -> " << out << "\n";
  return kExitOk;
}

}  // namespace

int RunFetch(const GlobalOptions& global, const Args& args) {
  ParsedArgs p;
  if (std::optional<int> rc = ParseOrExit(kFetchSpec, "fetch", args, &p)) return *rc;
  const std::string& ref = p.positional[0];
  std::string out = p.Get("--output");
  if (out.empty()) return UsageError("fetch", "-o OUT is required");
  std::string format = p.Get("--format", "safetensors");
  std::vector<std::string> tensors = p.All("--tensor");
  if (absl::StatusOr<common::ParsedRef> r = common::ParseRef(ref); !r.ok()) {
    return UsageError("fetch", r.status().message());
  }
  int streams = 0;
  if (p.Has("--streams") &&
      (!absl::SimpleAtoi(p.Get("--streams"), &streams) || streams < 1 || streams > 64)) {
    return UsageError("fetch", "--streams takes a number from 1 to 64");
  }
  auto conn = Connection::Open(global);
  if (!conn) return kExitUsage;
  if (tensors.empty()) return FetchWhole(global, ref, out, format, streams);

  // A --tensor subset: not the stored blob, so not resumable or sha256-checked.
  std::string part = out + ".tensors.tmp";
  Received got = FetchSubset(*conn, ref, tensors, part);
  if (!got.local.ok() || !got.rpc.ok()) ::unlink(part.c_str());
  if (!got.local.ok())
    return UsageError("fetch", absl::StrCat(got.local.message(), " (run again)"));
  if (!got.rpc.ok()) return ReportRpcError("fetch", got.rpc);
  if (absl::Status s = Deliver(part, out, format, TiesOf(got.manifest)); !s.ok()) {
    return UsageError("fetch", s.message());
  }
  const Manifest& m = got.manifest;
  if (global.json) {
    std::cout << client::ProtoToJson(m);
    return kExitOk;
  }
  std::cout << "fetched " << m.model_id() << "@" << m.version() << ": "
            << std::set<std::string>(tensors.begin(), tensors.end()).size() << " tensors, "
            << common::HumanBytes(static_cast<double>(common::RegularFileSize(out))) << " -> "
            << out << "\n";
  return kExitOk;
}

}  // namespace weightgate::cli
