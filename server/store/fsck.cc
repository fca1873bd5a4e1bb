#include "server/store/fsck.h"

#include <dirent.h>
#include <sys/stat.h>

#include <algorithm>
#include <cctype>
#include <map>
#include <set>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/file_util.h"
#include "common/sha256.h"
#include "google/protobuf/util/json_util.h"
#include "weightgate/v1/registry.pb.h"

namespace weightgate::store {
namespace {

// Parses a metadata file; empty string on success, else the reason.
template <typename Message>
std::string ReadJson(const std::string& path, Message* message) {
  absl::StatusOr<std::string> text = common::ReadFile(path);
  if (!text.ok()) return "unreadable";
  google::protobuf::util::JsonParseOptions options;
  options.ignore_unknown_fields = true;
  auto status = google::protobuf::util::JsonStringToMessage(*text, message, options);
  return status.ok() ? "" : std::string(status.message());
}

}  // namespace

FsckResult Fsck(const std::string& root, std::ostream* progress) {
  FsckResult result;
  auto problem = [&](std::string line) { result.problems.push_back(std::move(line)); };
  struct stat st;
  for (const char* sub : {"blobs", "models"}) {
    if (::stat(absl::StrCat(root, "/", sub).c_str(), &st) != 0 || !S_ISDIR(st.st_mode)) {
      problem(absl::StrCat("missing directory ", root, "/", sub, " (is this a store?)"));
    }
  }
  if (!result.problems.empty()) return result;

  // Blobs: the name is the content's sha256.
  std::map<std::string, std::string> bad_blobs;  // sha -> why
  std::set<std::string> blobs;
  for (const std::string& name : common::ListDir(root + "/blobs")) {
    std::string path = absl::StrCat(root, "/blobs/", name);
    if (!common::IsSha256Hex(name)) {
      problem(absl::StrCat("stray file in blobs/: ", name));
      continue;
    }
    blobs.insert(name);
    ++result.blobs;
    if (::stat(path.c_str(), &st) == 0) result.blob_bytes += static_cast<uint64_t>(st.st_size);
    absl::StatusOr<std::string> sha = common::Sha256File(path);
    if (!sha.ok()) {
      bad_blobs[name] = absl::StrCat("unreadable (", sha.status().message(), ")");
    } else if (*sha != name) {
      bad_blobs[name] = absl::StrCat("content hashes to ", *sha);
    }
    if (progress != nullptr) {
      *progress << "blob " << name << (bad_blobs.count(name) ? " DAMAGED" : " ok") << "\n";
    }
  }

  // Metadata and references.
  std::map<std::string, std::vector<std::string>> users;  // sha -> refs using it
  for (const std::string& id : common::ListDir(root + "/models")) {
    std::string dir = absl::StrCat(root, "/models/", id);
    weightgate::v1::Model model;
    std::string why = ReadJson(dir + "/model.json", &model);
    if (!why.empty()) {
      problem(absl::StrCat("model ", id, ": model.json ", why));
      continue;
    }
    ++result.models;
    if (model.model_id() != id) {
      problem(absl::StrCat("model ", id, ": model.json names '", model.model_id(), "'"));
    }
    const std::string& ts = model.spec().torchscript_sha256();
    if (!ts.empty()) users[ts].push_back(absl::StrCat(id, " (TorchScript reference)"));
    std::set<int64_t> versions;
    for (const std::string& name : common::ListDir(dir + "/versions")) {
      int64_t n = 0;
      if (!absl::EndsWith(name, ".json") ||
          !absl::SimpleAtoi(name.substr(0, name.size() - 5), &n) || n <= 0) {
        problem(absl::StrCat("model ", id, ": stray file versions/", name));
        continue;
      }
      weightgate::v1::Version version;
      why = ReadJson(absl::StrCat(dir, "/versions/", name), &version);
      if (!why.empty()) {
        problem(absl::StrCat("version ", id, "@", n, ": ", why));
        continue;
      }
      ++result.versions;
      versions.insert(n);
      if (version.version() != n || version.model_id() != id) {
        problem(absl::StrCat("version ", id, "@", n, ": record says ", version.model_id(), "@",
                             version.version()));
      }
      users[version.blob_sha256()].push_back(absl::StrCat(id, "@", n));
    }
    for (const auto& [alias, target] : model.aliases()) {
      if (!versions.count(target)) {
        problem(absl::StrCat("alias ", id, "@", alias, " points at missing version ", target));
      }
    }
  }
  for (const auto& [sha, refs] : users) {
    std::string used_by = absl::StrJoin(refs, ", ");
    if (!blobs.count(sha)) {
      problem(absl::StrCat("missing blob ", sha, " (used by ", used_by, ")"));
    } else if (auto it = bad_blobs.find(sha); it != bad_blobs.end()) {
      problem(absl::StrCat("damaged blob ", sha, ": ", it->second, " (used by ", used_by, ")"));
    }
  }
  for (const auto& [sha, why] : bad_blobs) {
    if (!users.count(sha)) problem(absl::StrCat("damaged blob ", sha, ": ", why, " (unused)"));
  }
  return result;
}

}  // namespace weightgate::store
