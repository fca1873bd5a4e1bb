#include "server/checkpoint/checkpoint_set.h"

#include <dirent.h>
#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <map>
#include <memory>
#include <tuple>
#include <utility>

#include "absl/status/status.h"
#include "common/sha256.h"
#include "common/str_util.h"
#include "server/checkpoint/dcp_reader.h"
#include "server/checkpoint/hf_sharded.h"
#include "server/checkpoint/megatron_reader.h"
#include "server/checkpoint/zero_reader.h"

namespace weightgate::checkpoint {

using common::Cat;
namespace {

absl::Status Invalid(std::string_view what) {
  return absl::InvalidArgumentError(std::string(what));
}

bool EndsWith(std::string_view s, std::string_view suffix) {
  return s.size() >= suffix.size() && s.substr(s.size() - suffix.size()) == suffix;
}

std::string BaseName(const std::string& path) {
  size_t slash = path.rfind('/');
  return slash == std::string::npos ? path : path.substr(slash + 1);
}

bool IsDirectory(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

constexpr std::string_view kCheckpointExtensions[] = {".safetensors", ".bin", ".pt", ".pth",
                                                      ".ckpt"};

bool IsCheckpointName(std::string_view name) {
  for (std::string_view ext : kCheckpointExtensions) {
    if (EndsWith(name, ext)) return true;
  }
  return false;
}

std::string JoinNames(const std::vector<std::string>& names) {
  std::string out;
  for (size_t i = 0; i < names.size() && i < 4; ++i) out += Cat(i == 0 ? "" : ", ", names[i]);
  if (names.size() > 4) out += ", ...";
  return out;
}

absl::StatusOr<Checkpoint> ReadDirectory(const std::string& dir, const ReadOptions& options) {
  absl::StatusOr<std::vector<std::string>> files = ListDirectory(dir);
  if (!files.ok()) return files.status();
  absl::StatusOr<std::vector<std::string>> all = ListDirectory(dir, /*with_dirs=*/true);
  if (!all.ok()) return all.status();
  auto has = [&](std::string_view name) {
    return std::binary_search(files->begin(), files->end(), std::string(name));
  };
  if (has(".metadata")) return ReadDcp(dir, options);

  // Layouts recognised but not read yet: say so instead of guessing.
  bool zero = has("latest") || has("zero_to_fp32.py");
  bool megatron = false;
  for (const std::string& name : *all) {
    if (EndsWith(name, "_model_states.pt") || EndsWith(name, "_optim_states.pt") ||
        name.rfind("global_step", 0) == 0) {
      zero = true;
    }
    if (name.rfind("mp_rank_", 0) == 0 || name.rfind("iter_", 0) == 0 || name == "release" ||
        name == "latest_checkpointed_iteration.txt") {
      megatron = true;
    }
  }
  if (zero) return ReadZero(dir, options);
  if (megatron) return ReadMegatron(dir, options);

  std::vector<std::string> indexes;
  for (const std::string& name : *files) {
    if (EndsWith(name, ".index.json")) indexes.push_back(name);
  }
  if (!indexes.empty()) {
    std::vector<std::string> safetensors;
    for (const std::string& name : indexes) {
      if (EndsWith(name, ".safetensors.index.json")) safetensors.push_back(name);
    }
    const std::vector<std::string>& pick = safetensors.empty() ? indexes : safetensors;
    if (pick.size() > 1) {
      return Invalid(Cat(dir, ": several shard indexes (", JoinNames(pick), "); name one"));
    }
    return ReadHfIndexed(JoinPath(dir, pick.front()), options);
  }

  std::map<std::tuple<std::string, int, std::string>, std::vector<std::string>> series;
  for (const std::string& name : *files) {
    ShardName s;
    if (ParseShardName(name, &s)) series[{s.stem, s.n, s.ext}].push_back(name);
  }
  if (!series.empty()) {
    std::vector<const std::vector<std::string>*> pick;
    for (const auto& [key, names] : series) {
      if (std::get<2>(key) == "safetensors") pick.push_back(&names);
    }
    if (pick.empty()) {
      for (const auto& [key, names] : series) pick.push_back(&names);
    }
    if (pick.size() > 1) {
      return Invalid(Cat(dir, ": several shard series (", pick[0]->front(), ", ", pick[1]->front(),
                         "); name an index or one file"));
    }
    return ReadHfShardSeries(dir, *pick.front(), options);
  }

  std::vector<std::string> candidates;
  for (const std::string& name : *files) {
    if (IsCheckpointName(name)) candidates.push_back(name);
  }
  if (candidates.size() == 1) {
    return ReadCheckpointFile(JoinPath(dir, candidates.front()), options);
  }
  if (candidates.empty()) return Invalid(Cat(dir, ": no checkpoint file in the directory"));
  return Invalid(
      Cat(dir, ": several checkpoint files (", JoinNames(candidates), "); name one of them"));
}

}  // namespace

bool IsPlainFileName(std::string_view name) {
  return !name.empty() && name != "." && name != ".." &&
         name.find_first_of(std::string_view("/\\\0", 3)) == std::string_view::npos;
}

std::string JoinPath(std::string_view dir, std::string_view name) {
  if (dir.empty()) return std::string(name);
  if (dir.back() == '/') return Cat(dir, name);
  return Cat(dir, "/", name);
}

absl::StatusOr<std::vector<std::string>> ListDirectory(const std::string& dir, bool with_dirs) {
  DIR* d = ::opendir(dir.c_str());
  if (d == nullptr) {
    return absl::InvalidArgumentError(Cat("cannot list ", dir, ": ", std::strerror(errno)));
  }
  std::vector<std::string> out;
  size_t seen = 0;
  while (struct dirent* e = ::readdir(d)) {
    std::string name = e->d_name;
    if (name == "." || name == "..") continue;
    if (++seen > kMaxSetDirectoryEntries) {
      ::closedir(d);
      return Invalid(Cat(dir, ": more than ", kMaxSetDirectoryEntries, " entries"));
    }
    struct stat st;
    if (::stat(JoinPath(dir, name).c_str(), &st) != 0) continue;
    if (S_ISREG(st.st_mode) || (with_dirs && S_ISDIR(st.st_mode))) out.push_back(std::move(name));
  }
  ::closedir(d);
  std::sort(out.begin(), out.end());
  return out;
}

bool IsCheckpointSetPath(const std::string& path) {
  if (IsDirectory(path)) return true;
  std::string base = BaseName(path);
  return EndsWith(base, ".index.json") || base == ".metadata";
}

absl::Status ListFilesBelow(const std::string& root, const std::string& rel, int depth,
                            std::vector<std::string>* out) {
  absl::StatusOr<std::vector<std::string>> names = ListDirectory(JoinPath(root, rel), true);
  if (!names.ok()) return names.status();
  for (const std::string& n : *names) {
    std::string child = rel.empty() ? n : JoinPath(rel, n);
    if (IsDirectory(JoinPath(root, child))) {
      if (depth > 0) {
        if (absl::Status s = ListFilesBelow(root, child, depth - 1, out); !s.ok()) return s;
      }
    } else {
      if (out->size() >= kMaxSetDirectoryEntries) return Invalid(Cat(root, ": too many files"));
      out->push_back(std::move(child));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<std::string> Sha256CheckpointSet(const std::string& path) {
  std::string dir = path;
  if (!IsDirectory(path)) {
    if (!IsCheckpointSetPath(path)) return common::Sha256File(path);
    size_t slash = path.rfind('/');
    dir = slash == std::string::npos ? "." : path.substr(0, slash);
  }
  std::vector<std::string> files;
  if (absl::Status s = ListFilesBelow(dir, "", 2, &files); !s.ok()) return s;
  std::sort(files.begin(), files.end());
  common::Sha256 manifest;
  for (const std::string& f : files) {
    absl::StatusOr<std::string> sha = common::Sha256File(JoinPath(dir, f));
    if (!sha.ok()) return sha.status();
    struct stat st;
    if (::stat(JoinPath(dir, f).c_str(), &st) != 0) return Invalid(Cat("cannot stat ", f));
    manifest.Update(Cat(f, std::string_view("\0", 1), static_cast<uint64_t>(st.st_size),
                        std::string_view("\0", 1), *sha, "\n"));
  }
  return manifest.HexDigest();
}

absl::StatusOr<Checkpoint> ReadCheckpointSet(const std::string& path, const ReadOptions& options) {
  if (IsDirectory(path)) return ReadDirectory(path, options);
  std::string base = BaseName(path);
  if (EndsWith(base, ".index.json")) return ReadHfIndexed(path, options);
  if (base == ".metadata") {
    size_t slash = path.rfind('/');
    return ReadDcp(slash == std::string::npos ? "." : path.substr(0, slash), options);
  }
  absl::StatusOr<std::shared_ptr<const common::MappedFile>> file = common::MappedFile::Open(path);
  if (!file.ok()) return file.status();
  return ReadCheckpoint(*std::move(file), options);
}

}  // namespace weightgate::checkpoint
