#include "server/checkpoint/megatron_reader.h"

#include <sys/stat.h>

#include <algorithm>
#include <memory>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "common/str_util.h"
#include "server/checkpoint/checkpoint_set.h"
#include "server/checkpoint/set_builder.h"

namespace weightgate::checkpoint {

using common::Cat;
namespace {

using Kind = Value::Kind;

absl::Status Bad(std::string_view what) {
  return absl::InvalidArgumentError(Cat("megatron: ", what));
}

constexpr std::string_view kTracker = "latest_checkpointed_iteration.txt";
constexpr std::string_view kRankFile = "model_optim_rng.pt";
constexpr int kMaxRanks = 4096;

bool EndsWith(std::string_view s, std::string_view suffix) {
  return s.size() >= suffix.size() && s.substr(s.size() - suffix.size()) == suffix;
}

bool IsDir(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

// True when `name` ends with the dotted components `suffix`.
bool DottedSuffix(std::string_view name, std::string_view suffix) {
  return EndsWith(name, suffix) &&
         (name.size() == suffix.size() || name[name.size() - suffix.size() - 1] == '.');
}

// Megatron's parallel layers: the dim each splits (legacy and core names).
int ConventionDim(std::string_view name) {
  // clang-format off
  static constexpr std::pair<std::string_view, int> kRules[] = {
      {"word_embeddings.weight", 0},       {"output_layer.weight", 0},
      {"lm_head.weight", 0},               {"query_key_value.weight", 0},
      {"query_key_value.bias", 0},         {"dense_h_to_4h.weight", 0},
      {"dense_h_to_4h.bias", 0},           {"linear_qkv.weight", 0},
      {"linear_qkv.bias", 0},              {"linear_fc1.weight", 0},
      {"linear_fc1.bias", 0},              {"attention.dense.weight", 1},
      {"dense_4h_to_h.weight", 1},         {"linear_proj.weight", 1},
      {"linear_fc2.weight", 1},            {"self_attention.dense.weight", 1},
  };
  // clang-format on
  for (const auto& [suffix, dim] : kRules) {
    if (DottedSuffix(name, suffix)) return dim;
  }
  return -2;  // no rule
}

std::string Dims(const std::vector<int64_t>& d) {
  std::string out = "[";
  for (size_t i = 0; i < d.size(); ++i) out += Cat(i == 0 ? "" : ", ", d[i]);
  return out + "]";
}

std::string Contiguous(const Checkpoint& ckpt, const TensorRecord& t) {
  std::string out(t.nbytes(), '\0');
  std::vector<int64_t> zeros(t.shape.size(), 0);
  if (!out.empty()) CopyStridedInto(t, ckpt.TensorStorageBytes(t), zeros, t.shape, out.data());
  return out;
}

struct Layout {
  std::string iteration_dir;
  std::vector<std::string> ranks;  // mp_rank_XX, in rank order
};

absl::StatusOr<Layout> FindLayout(const std::string& dir) {
  Layout layout;
  layout.iteration_dir = dir;
  absl::StatusOr<std::shared_ptr<const common::MappedFile>> tracker =
      common::MappedFile::Open(JoinPath(dir, kTracker));
  if (tracker.ok() && (*tracker)->size() <= 64) {
    std::string it((*tracker)->data());
    while (!it.empty() && (it.back() == '\n' || it.back() == ' ' || it.back() == '\r'))
      it.pop_back();
    std::string sub;
    if (it == "release") {
      sub = "release";
    } else if (!it.empty() && it.size() <= 7 &&
               std::all_of(it.begin(), it.end(), [](char c) { return c >= '0' && c <= '9'; })) {
      sub = Cat("iter_", std::string(7 - it.size(), '0'), it);
    } else {
      return Bad(Cat(kTracker, " holds \"", it, "\", not an iteration"));
    }
    layout.iteration_dir = JoinPath(dir, sub);
    if (!IsDir(layout.iteration_dir)) return Bad(Cat(kTracker, " names missing ", sub));
  }
  absl::StatusOr<std::vector<std::string>> names = ListDirectory(layout.iteration_dir, true);
  if (!names.ok()) return names.status();
  std::vector<std::pair<int, std::string>> ranks;
  for (const std::string& n : *names) {
    if (n.rfind("mp_rank_", 0) != 0) continue;
    std::string_view rest = std::string_view(n).substr(8);
    size_t us = rest.find('_');
    if (us != std::string_view::npos && rest.substr(us + 1) != "000") {
      return Bad(Cat(n, ": pipeline-parallel stages are not merged"));
    }
    std::string_view digits = rest.substr(0, us);
    if (digits.empty() || digits.size() > 4 ||
        !std::all_of(digits.begin(), digits.end(), [](char c) { return c >= '0' && c <= '9'; })) {
      return Bad(Cat("bad rank directory ", n));
    }
    ranks.emplace_back(std::stoi(std::string(digits)), n);
  }
  if (ranks.empty()) return Bad(Cat(layout.iteration_dir, ": no mp_rank_* directories"));
  if (ranks.size() > static_cast<size_t>(kMaxRanks)) return Bad("too many ranks");
  std::sort(ranks.begin(), ranks.end());
  for (size_t i = 0; i < ranks.size(); ++i) {
    if (ranks[i].first != static_cast<int>(i)) {
      return Bad(Cat("inconsistent ranks: rank ", i, " of ", ranks.size(), " is missing"));
    }
    layout.ranks.push_back(ranks[i].second);
  }
  return layout;
}

}  // namespace

bool LooksLikeMegatronDirectory(const std::string& dir) {
  absl::StatusOr<std::vector<std::string>> names = ListDirectory(dir, true);
  if (!names.ok()) return false;
  for (const std::string& n : *names) {
    if (n == kTracker || n.rfind("mp_rank_", 0) == 0) return true;
  }
  return false;
}

std::function<std::optional<std::vector<int64_t>>(std::string_view)> MakeSpecShapeLookup(
    std::vector<std::pair<std::string, std::vector<int64_t>>> spec) {
  return [spec = std::move(spec)](std::string_view name) -> std::optional<std::vector<int64_t>> {
    const std::vector<int64_t>* best = nullptr;
    size_t best_len = 0;
    bool tie = false;
    for (const auto& [n, shape] : spec) {
      if (n == name) return shape;
      size_t len = 0;
      if (DottedSuffix(name, n)) len = n.size();
      if (DottedSuffix(n, name)) len = name.size();
      if (len == 0) continue;
      if (len > best_len) {
        best = &shape;
        best_len = len;
        tie = false;
      } else if (len == best_len && *best != shape) {
        tie = true;
      }
    }
    if (best == nullptr || tie) return std::nullopt;
    return *best;
  };
}

absl::StatusOr<Checkpoint> ReadMegatron(const std::string& dir, const ReadOptions& options) {
  absl::StatusOr<Layout> layout = FindLayout(dir);
  if (!layout.ok()) return layout.status();
  std::vector<Checkpoint> ranks;
  std::vector<std::vector<NamedTensor>> tensors;
  for (const std::string& r : layout->ranks) {
    std::string path = JoinPath(JoinPath(layout->iteration_dir, r), kRankFile);
    absl::StatusOr<std::shared_ptr<const common::MappedFile>> file = common::MappedFile::Open(path);
    if (!file.ok()) return Bad(Cat("inconsistent ranks: ", r, "/", kRankFile, " is missing"));
    absl::StatusOr<Checkpoint> part = ReadCheckpoint(*std::move(file), options);
    if (!part.ok()) return Bad(Cat(r, "/", kRankFile, ": ", part.status().message()));
    if (part->unsafe()) return std::move(*part);  // callers reject it
    const Value* model = part->root != nullptr ? part->root->Get("model") : nullptr;
    if (model == nullptr) {
      return Bad(Cat(r, "/", kRankFile, ": no 'model' (virtual pipeline stages are not merged)"));
    }
    tensors.push_back(FlattenTensors(model));
    ranks.push_back(*std::move(part));
  }
  const size_t n = ranks.size();
  std::vector<absl::flat_hash_map<std::string, const TensorRecord*>> by_name(n);
  for (size_t r = 0; r < n; ++r) {
    for (const NamedTensor& t : tensors[r]) by_name[r][t.name] = t.tensor;
    if (tensors[r].size() != tensors[0].size()) {
      return Bad(Cat("inconsistent ranks: ", layout->ranks[r], " holds ", tensors[r].size(),
                     " tensors, ", layout->ranks[0], " ", tensors[0].size()));
    }
  }
  absl::flat_hash_map<std::string, int> overrides(options.tp_merge_dims.begin(),
                                                  options.tp_merge_dims.end());

  SetBuilder builder("megatron_tp");
  builder.AddMetadata(Cat("tp_ranks=", n));
  std::vector<NamedTensor> replicated;  // taken from rank 0 as they are
  std::string buffer;
  int by_convention = 0;
  for (const NamedTensor& t0 : tensors[0]) {
    const std::string& name = t0.name;
    std::vector<const TensorRecord*> parts;
    for (size_t r = 0; r < n; ++r) {
      auto it = by_name[r].find(name);
      if (it == by_name[r].end()) {
        return Bad(Cat("inconsistent ranks: ", name, " is missing from ", layout->ranks[r]));
      }
      if (it->second->dtype != t0.tensor->dtype ||
          it->second->shape.size() != t0.tensor->shape.size()) {
        return Bad(Cat("inconsistent ranks: ", name, " differs in dtype or rank between ",
                       layout->ranks[0], " and ", layout->ranks[r]));
      }
      parts.push_back(it->second);
    }
    const size_t nd = t0.tensor->shape.size();
    bool same_shapes = true;
    for (const TensorRecord* p : parts) same_shapes = same_shapes && p->shape == t0.tensor->shape;

    auto bytes_equal = [&] {
      std::string first = Contiguous(ranks[0], *parts[0]);
      for (size_t r = 1; r < n; ++r) {
        if (Contiguous(ranks[r], *parts[r]) != first) return false;
      }
      return true;
    };
    int dim = -2;  // -1 replicated, >= 0 merge dim, -2 unknown
    std::optional<std::vector<int64_t>> spec;
    if (auto o = overrides.find(name); o != overrides.end()) {
      dim = o->second;
    } else if (n == 1) {
      dim = -1;
    } else if (options.expected_shape && (spec = options.expected_shape(name)).has_value()) {
      if (*spec == t0.tensor->shape && same_shapes) {
        if (!bytes_equal()) {
          return Bad(Cat("inconsistent ranks: ", name,
                         " has the spec's shape on every rank "
                         "(replicated) but its values differ"));
        }
        dim = -1;
      } else {
        std::vector<int> candidates;
        for (size_t d = 0; d < nd && spec->size() == nd; ++d) {
          int64_t sum = 0;
          bool fits = true;
          for (const TensorRecord* p : parts) {
            sum += p->shape[d];
            for (size_t k = 0; k < nd; ++k) fits = fits && (k == d || p->shape[k] == (*spec)[k]);
          }
          if (fits && sum == (*spec)[d]) candidates.push_back(static_cast<int>(d));
        }
        if (candidates.size() != 1) {
          return Bad(Cat(name, ": rank shapes ", Dims(t0.tensor->shape), " x ", n,
                         candidates.empty() ? " do not add up to the spec's " : " fit the spec's ",
                         Dims(*spec), candidates.empty() ? " along any dim" : " along several dims",
                         "; pass tp_merge_dim ", name, "=DIM"));
        }
        dim = candidates[0];
      }
    } else if (int c = ConventionDim(name); c >= 0 && static_cast<size_t>(c) < nd) {
      dim = c;
      ++by_convention;
    } else if (same_shapes && bytes_equal()) {
      dim = -1;
    } else {
      return Bad(Cat(name, ": cannot tell how ", n, " ranks of shape ", Dims(t0.tensor->shape),
                     " merge without the spec; pass tp_merge_dim ", name,
                     "=DIM (-1 = replicated)"));
    }
    if (dim == -1) {
      replicated.push_back(t0);
      continue;
    }
    if (dim < 0 || static_cast<size_t>(dim) >= nd) return Bad(Cat(name, ": bad merge dim ", dim));
    std::vector<int64_t> full = t0.tensor->shape;
    full[dim] = 0;
    for (const TensorRecord* p : parts) {
      for (size_t k = 0; k < nd; ++k) {
        if (static_cast<int>(k) != dim && p->shape[k] != full[k]) {
          return Bad(Cat("inconsistent ranks: ", name, " shapes differ outside merge dim ", dim));
        }
      }
      full[dim] += p->shape[dim];
    }
    int64_t numel = 1;
    for (int64_t d : full) {
      if (__builtin_mul_overflow(numel, d, &numel))
        return Bad(Cat(name, ": merged shape overflows"));
    }
    buffer.assign(static_cast<size_t>(numel) * ItemSize(t0.tensor->dtype), '\0');
    std::vector<int64_t> offsets(nd, 0);
    for (size_t r = 0; r < n; ++r) {
      CopyStridedInto(*parts[r], ranks[r].TensorStorageBytes(*parts[r]), offsets, full,
                      buffer.data());
      offsets[dim] += parts[r]->shape[dim];
    }
    if (absl::Status s = builder.AddAssembled(name, t0.tensor->dtype, full, buffer, "merged ranks");
        !s.ok()) {
      return s;
    }
  }
  if (by_convention > 0) builder.AddMetadata(Cat("tp_merged_by_layer_names=", by_convention));
  for (size_t r = 1; r < n; ++r) builder.AddGlobals(ranks[r]);
  std::string origin = layout->ranks[0];
  if (absl::Status s = builder.AddPart(std::move(ranks[0]), replicated, origin); !s.ok()) return s;
  return builder.Finish();
}

}  // namespace weightgate::checkpoint
