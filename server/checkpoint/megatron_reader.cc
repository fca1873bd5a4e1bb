#include "server/checkpoint/megatron_reader.h"

#include <sys/stat.h>

#include <algorithm>
#include <memory>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
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

bool AllDigits(std::string_view s) {
  return !s.empty() && std::all_of(s.begin(), s.end(), [](char c) { return c >= '0' && c <= '9'; });
}

// `grid[stage][tp_rank]` names the rank directories, `mp_rank_XX` or, with
// pipeline stages, `mp_rank_XX_YYY` (XX the tensor-parallel rank, YYY the
// stage).
struct Layout {
  std::string iteration_dir;
  std::vector<std::vector<std::string>> grid;
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
    } else if (it.size() <= 7 && AllDigits(it)) {
      sub = Cat("iter_", std::string(7 - it.size(), '0'), it);
    } else {
      return Bad(Cat(kTracker, " holds \"", it, "\", not an iteration"));
    }
    layout.iteration_dir = JoinPath(dir, sub);
    if (!IsDir(layout.iteration_dir)) return Bad(Cat(kTracker, " names missing ", sub));
  }
  absl::StatusOr<std::vector<std::string>> names = ListDirectory(layout.iteration_dir, true);
  if (!names.ok()) return names.status();
  // (stage, rank) -> name; -1 stage: no pipeline suffix.
  std::vector<std::pair<std::pair<int, int>, std::string>> found;
  int max_rank = -1;
  int max_stage = -1;
  bool with_stage = false;
  bool without_stage = false;
  for (const std::string& n : *names) {
    if (n.rfind("mp_rank_", 0) != 0) continue;
    std::string_view rest = std::string_view(n).substr(8);
    size_t us = rest.find('_');
    std::string_view digits = rest.substr(0, us);
    std::string_view stage_digits =
        us == std::string_view::npos ? std::string_view() : rest.substr(us + 1);
    if (digits.size() > 4 || !AllDigits(digits) ||
        (us != std::string_view::npos && (stage_digits.size() > 4 || !AllDigits(stage_digits)))) {
      return Bad(Cat("bad rank directory ", n));
    }
    int rank = std::stoi(std::string(digits));
    int stage = us == std::string_view::npos ? 0 : std::stoi(std::string(stage_digits));
    (us == std::string_view::npos ? without_stage : with_stage) = true;
    max_rank = std::max(max_rank, rank);
    max_stage = std::max(max_stage, stage);
    found.push_back({{stage, rank}, n});
  }
  if (found.empty()) return Bad(Cat(layout.iteration_dir, ": no mp_rank_* directories"));
  if (with_stage && without_stage) {
    return Bad("inconsistent ranks: rank directories with and without a pipeline stage");
  }
  if (found.size() > static_cast<size_t>(kMaxRanks) || max_rank >= kMaxRanks ||
      max_stage >= kMaxRanks) {
    return Bad("too many ranks");
  }
  const size_t tp = static_cast<size_t>(max_rank) + 1;
  const size_t pp = static_cast<size_t>(max_stage) + 1;
  if (tp * pp > static_cast<size_t>(kMaxRanks)) return Bad("too many ranks");
  layout.grid.assign(pp, std::vector<std::string>(tp));
  for (auto& [at, name] : found) {
    std::string& slot = layout.grid[at.first][at.second];
    if (!slot.empty())
      return Bad(Cat("inconsistent ranks: ", slot, " and ", name, " are one rank"));
    slot = std::move(name);
  }
  for (size_t st = 0; st < pp; ++st) {
    size_t present = 0;
    for (size_t r = 0; r < tp; ++r) present += !layout.grid[st][r].empty();
    if (present == 0) {
      return Bad(Cat("inconsistent ranks: pipeline stage ", st, " of ", pp, " is missing"));
    }
    for (size_t r = 0; r < tp; ++r) {
      if (!layout.grid[st][r].empty()) continue;
      return Bad(with_stage ? Cat("inconsistent ranks: tensor-parallel rank ", r,
                                  " of pipeline stage ", st, " is missing")
                            : Cat("inconsistent ranks: rank ", r, " of ", tp, " is missing"));
    }
  }
  return layout;
}

// Where a transformer layer's index sits in a tensor name: the component
// after a "layers" component ("language_model.encoder.layers.3.mlp...",
// "decoder.layers.3...."). npos when the name is not in a layer.
struct LayerRef {
  size_t pos = std::string::npos;
  size_t len = 0;
  int64_t index = -1;
};

LayerRef FindLayer(std::string_view name) {
  size_t start = 0;
  while (start < name.size()) {
    size_t dot = name.find('.', start);
    if (dot == std::string_view::npos) break;
    std::string_view part = name.substr(start, dot - start);
    if (part == "layers") {
      size_t end = name.find('.', dot + 1);
      if (end == std::string_view::npos) end = name.size();
      std::string_view idx = name.substr(dot + 1, end - dot - 1);
      if (AllDigits(idx) && idx.size() <= 6) {
        return {dot + 1, idx.size(), std::stoll(std::string(idx))};
      }
    }
    start = dot + 1;
  }
  return {};
}

// One rank file, read, and its tensors.
struct RankPart {
  std::string dir;  // mp_rank_XX[_YYY]
  Checkpoint ckpt;
  std::vector<NamedTensor> tensors;
};

// The names of one stage's tensors in the merged checkpoint: layer indices
// shifted by the layers of earlier stages.
using Renamed = absl::flat_hash_map<std::string, std::string>;

// Merges the tensor-parallel ranks of one pipeline stage into `builder`;
// tensors in `skip` are left out.
absl::Status MergeStage(std::vector<RankPart>& ranks, const Renamed& global,
                        const absl::flat_hash_map<std::string, int>& overrides,
                        const absl::flat_hash_set<std::string>& skip, const ReadOptions& options,
                        SetBuilder& builder, int* by_convention) {
  const size_t n = ranks.size();
  std::vector<absl::flat_hash_map<std::string, const TensorRecord*>> by_name(n);
  for (size_t r = 0; r < n; ++r) {
    for (const NamedTensor& t : ranks[r].tensors) by_name[r][t.name] = t.tensor;
    if (ranks[r].tensors.size() != ranks[0].tensors.size()) {
      return Bad(Cat("inconsistent ranks: ", ranks[r].dir, " holds ", ranks[r].tensors.size(),
                     " tensors, ", ranks[0].dir, " ", ranks[0].tensors.size()));
    }
  }
  std::vector<NamedTensor> replicated;  // taken from rank 0 as they are
  std::string buffer;
  for (const NamedTensor& t0 : ranks[0].tensors) {
    if (skip.contains(t0.name)) continue;
    const std::string& name = global.at(t0.name);
    std::vector<const TensorRecord*> parts;
    for (size_t r = 0; r < n; ++r) {
      auto it = by_name[r].find(t0.name);
      if (it == by_name[r].end()) {
        return Bad(Cat("inconsistent ranks: ", t0.name, " is missing from ", ranks[r].dir));
      }
      if (it->second->dtype != t0.tensor->dtype ||
          it->second->shape.size() != t0.tensor->shape.size()) {
        return Bad(Cat("inconsistent ranks: ", t0.name, " differs in dtype or rank between ",
                       ranks[0].dir, " and ", ranks[r].dir));
      }
      parts.push_back(it->second);
    }
    const size_t nd = t0.tensor->shape.size();
    bool same_shapes = true;
    for (const TensorRecord* p : parts) same_shapes = same_shapes && p->shape == t0.tensor->shape;

    auto bytes_equal = [&] {
      std::string first = Contiguous(ranks[0].ckpt, *parts[0]);
      for (size_t r = 1; r < n; ++r) {
        if (Contiguous(ranks[r].ckpt, *parts[r]) != first) return false;
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
      ++*by_convention;
    } else if (same_shapes && bytes_equal()) {
      dim = -1;
    } else {
      return Bad(Cat(name, ": cannot tell how ", n, " ranks of shape ", Dims(t0.tensor->shape),
                     " merge without the spec; pass tp_merge_dim ", name,
                     "=DIM (-1 = replicated)"));
    }
    if (dim == -1) {
      replicated.push_back({name, t0.tensor});
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
      CopyStridedInto(*parts[r], ranks[r].ckpt.TensorStorageBytes(*parts[r]), offsets, full,
                      buffer.data());
      offsets[dim] += parts[r]->shape[dim];
    }
    if (absl::Status s = builder.AddAssembled(name, t0.tensor->dtype, full, buffer, "merged ranks");
        !s.ok()) {
      return s;
    }
  }
  for (size_t r = 1; r < n; ++r) builder.AddGlobals(ranks[r].ckpt);
  std::string origin = ranks[0].dir;
  return builder.AddPart(std::move(ranks[0].ckpt), replicated, origin);
}

// A stage's tensors named as in the whole model: its local layer indices
// (0..k-1, the same on every rank) shifted by `*offset` layers, which grows
// by k.
absl::StatusOr<Renamed> GlobalNames(const std::vector<RankPart>& ranks, size_t stage,
                                    bool pipelined, int64_t* offset, std::string* counts) {
  std::vector<std::vector<int64_t>> layers(ranks.size());
  for (size_t r = 0; r < ranks.size(); ++r) {
    for (const NamedTensor& t : ranks[r].tensors) {
      LayerRef ref = FindLayer(t.name);
      if (ref.pos != std::string::npos) layers[r].push_back(ref.index);
    }
    std::sort(layers[r].begin(), layers[r].end());
    layers[r].erase(std::unique(layers[r].begin(), layers[r].end()), layers[r].end());
    if (layers[r] != layers[0]) {
      return Bad(Cat("inconsistent layer counts: pipeline stage ", stage, ": ", ranks[r].dir,
                     " holds ", layers[r].size(), " layers, ", ranks[0].dir, " ",
                     layers[0].size()));
    }
  }
  const std::vector<int64_t>& local = layers[0];
  for (size_t i = 0; i < local.size() && pipelined; ++i) {
    if (local[i] != static_cast<int64_t>(i)) {
      return Bad(Cat("inconsistent layer counts: pipeline stage ", stage, " (", ranks[0].dir,
                     ") numbers its ", local.size(), " layers ", local.front(), "..", local.back(),
                     ", not from 0 (pipeline stages number their layers locally)"));
    }
  }
  Renamed out;
  for (const NamedTensor& t : ranks[0].tensors) {
    LayerRef ref = FindLayer(t.name);
    std::string name = t.name;
    if (ref.pos != std::string::npos && *offset > 0) {
      name = Cat(t.name.substr(0, ref.pos), ref.index + *offset, t.name.substr(ref.pos + ref.len));
    }
    out.emplace(t.name, std::move(name));
  }
  *counts += Cat(counts->empty() ? "" : ",", local.size());
  *offset += static_cast<int64_t>(local.size());
  return out;
}

// An integer of the saved training arguments (`args`, an argparse
// Namespace read as an opaque object), or -1.
int64_t ArgInt(const Checkpoint& ckpt, std::string_view name) {
  const Value* args = ckpt.root != nullptr ? ckpt.root->Get("args") : nullptr;
  const Value* state = args != nullptr ? args->state : nullptr;
  const Value* v = state != nullptr ? state->Get(name) : nullptr;
  return v != nullptr && v->kind == Kind::kInt ? v->i : -1;
}

// The name of the word embeddings in a stage's tensors ("" when absent).
std::string WordEmbeddings(const std::vector<NamedTensor>& tensors) {
  for (const NamedTensor& t : tensors) {
    if (DottedSuffix(t.name, "embedding.word_embeddings.weight")) return t.name;
  }
  return "";
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
  const size_t pp_ranks = layout->grid.size();
  const size_t tp = layout->grid[0].size();
  auto read_rank = [&](const std::string& r) -> absl::StatusOr<Checkpoint> {
    std::string path = JoinPath(JoinPath(layout->iteration_dir, r), kRankFile);
    absl::StatusOr<std::shared_ptr<const common::MappedFile>> file = common::MappedFile::Open(path);
    if (!file.ok()) return Bad(Cat("inconsistent ranks: ", r, "/", kRankFile, " is missing"));
    absl::StatusOr<Checkpoint> part = ReadCheckpoint(*std::move(file), options);
    if (!part.ok()) return Bad(Cat(r, "/", kRankFile, ": ", part.status().message()));
    return part;
  };
  // Virtual pipeline stages (the interleaved schedule): every rank file
  // holds model0..model{V-1}, and chunk v of pipeline rank p is chunk
  // v * pp + p of the model. Without them a rank file holds `model`.
  size_t vpp = 1;
  {
    absl::StatusOr<Checkpoint> part = read_rank(layout->grid[0][0]);
    if (!part.ok()) return part.status();
    if (part->unsafe()) return std::move(*part);  // callers reject it
    const Value* root = part->root;
    if (root == nullptr || root->Get("model") == nullptr) {
      vpp = 0;
      while (root != nullptr && vpp < kMaxRanks && root->Get(Cat("model", vpp)) != nullptr) ++vpp;
      if (vpp == 0) return Bad(Cat(layout->grid[0][0], "/", kRankFile, ": no 'model'"));
    }
  }
  // Model chunks in model order; each holds its tensor-parallel ranks. A
  // rank file with V chunks is read once per chunk.
  std::vector<std::vector<RankPart>> stages;
  std::vector<std::string> chunk_names;  // "mp_rank_XX_YYY" or "mp_rank_XX_YYY model1"
  for (size_t v = 0; v < vpp; ++v) {
    for (size_t p = 0; p < pp_ranks; ++p) {
      std::vector<RankPart> chunk;
      for (const std::string& r : layout->grid[p]) {
        absl::StatusOr<Checkpoint> part = read_rank(r);
        if (!part.ok()) return part.status();
        if (part->unsafe()) return std::move(*part);  // callers reject it
        const std::string key = vpp == 1 ? std::string("model") : Cat("model", v);
        const Value* model = part->root != nullptr ? part->root->Get(key) : nullptr;
        if (model == nullptr) {
          return Bad(Cat("inconsistent ranks: ", r, "/", kRankFile, " has no '", key, "'"));
        }
        if (vpp > 1 && part->root->Get(Cat("model", vpp)) != nullptr) {
          return Bad(Cat("inconsistent ranks: ", r, "/", kRankFile, " holds more than ", vpp,
                         " model chunks"));
        }
        RankPart rank{vpp == 1 ? r : Cat(r, " ", key), Checkpoint(), FlattenTensors(model)};
        rank.ckpt = *std::move(part);
        chunk.push_back(std::move(rank));
      }
      stages.push_back(std::move(chunk));
    }
  }
  const size_t pp = stages.size();

  // The saved arguments, when present, must describe what was found.
  const Checkpoint& first = stages[0][0].ckpt;
  if (int64_t want = ArgInt(first, "pipeline_model_parallel_size");
      want > 0 && static_cast<size_t>(want) != pp_ranks) {
    return Bad(Cat("inconsistent ranks: args.pipeline_model_parallel_size is ", want, " but ",
                   pp_ranks, " pipeline stage(s) are present"));
  }
  if (int64_t want = ArgInt(first, "virtual_pipeline_model_parallel_size");
      want > 0 && static_cast<size_t>(want) != vpp) {
    return Bad(Cat("inconsistent ranks: args.virtual_pipeline_model_parallel_size is ", want,
                   " but the rank files hold ", vpp, " model chunk(s)"));
  }
  if (int64_t want = ArgInt(first, "tensor_model_parallel_size");
      want > 0 && static_cast<size_t>(want) != tp) {
    return Bad(Cat("inconsistent ranks: args.tensor_model_parallel_size is ", want, " but ", tp,
                   " rank(s) are present"));
  }

  // Pipeline stages: global layer numbers, and each name in one stage only
  // (except a tied output layer's copy of the word embeddings, checked
  // equal to stage 0's and dropped).
  std::vector<Renamed> global(pp);
  std::vector<absl::flat_hash_set<std::string>> skip(pp);
  int64_t layers = 0;
  std::string counts;
  absl::flat_hash_map<std::string, size_t> stage_of;
  std::string tied_dropped;
  for (size_t st = 0; st < pp; ++st) {
    absl::StatusOr<Renamed> names = GlobalNames(stages[st], st, pp > 1, &layers, &counts);
    if (!names.ok()) return names.status();
    global[st] = *std::move(names);
    if (st > 0 && st + 1 == pp) {
      const std::string embeddings = WordEmbeddings(stages[0][0].tensors);
      for (const NamedTensor& t : stages[st][0].tensors) {
        // Legacy Megatron saves the last stage's copy as
        // word_embeddings_for_head; Megatron core as output_layer.weight,
        // which is a copy only when the spec has no output layer.
        bool legacy = DottedSuffix(t.name, "word_embeddings_for_head.weight");
        bool core = DottedSuffix(t.name, "output_layer.weight") && options.expected_shape &&
                    !options.expected_shape(global[st].at(t.name)).has_value();
        if (!legacy && !core) continue;
        if (embeddings.empty()) {
          if (!legacy) continue;
          return Bad(Cat(t.name, " in ", stages[st][0].dir,
                         " is a tied copy of the word embeddings, which stage 0 lacks"));
        }
        bool equal = true;
        for (size_t r = 0; r < tp && equal; ++r) {
          const TensorRecord* copy = nullptr;
          const TensorRecord* first = nullptr;
          for (const NamedTensor& x : stages[st][r].tensors) {
            if (x.name == t.name) copy = x.tensor;
          }
          for (const NamedTensor& x : stages[0][r].tensors) {
            if (x.name == embeddings) first = x.tensor;
          }
          equal = copy != nullptr && first != nullptr && copy->dtype == first->dtype &&
                  copy->shape == first->shape &&
                  Contiguous(stages[st][r].ckpt, *copy) == Contiguous(stages[0][r].ckpt, *first);
        }
        if (!equal) {
          if (!legacy) continue;  // an untied output layer after all
          return Bad(Cat("tied weights differ: ", t.name, " in ", stages[st][0].dir, " is not ",
                         embeddings, " of ", stages[0][0].dir));
        }
        skip[st].insert(t.name);
        tied_dropped = t.name;
      }
    }
    for (const NamedTensor& t : stages[st][0].tensors) {
      if (skip[st].contains(t.name)) continue;
      auto [it, fresh] = stage_of.emplace(global[st].at(t.name), st);
      if (!fresh) {
        return Bad(Cat("duplicate tensor ", it->first, " in pipeline stages ", it->second, " (",
                       stages[it->second][0].dir, ") and ", st, " (", stages[st][0].dir, ")"));
      }
    }
  }

  if (int64_t want = ArgInt(first, "num_layers"); pp > 1 && want > 0 && want != layers) {
    return Bad(Cat("inconsistent layer counts: the pipeline stages hold ", counts, " layers (",
                   layers, "), args.num_layers is ", want));
  }

  absl::flat_hash_map<std::string, int> overrides(options.tp_merge_dims.begin(),
                                                  options.tp_merge_dims.end());
  SetBuilder builder(pp > 1 ? "megatron_tp_pp" : "megatron_tp");
  builder.AddMetadata(Cat("tp_ranks=", tp));
  if (pp > 1) {
    builder.AddMetadata(Cat("pp_stages=", pp_ranks));
    if (vpp > 1) builder.AddMetadata(Cat("pp_virtual_stages=", vpp));
    builder.AddMetadata(Cat("set_pp_layers=", counts));
    if (!tied_dropped.empty()) {
      builder.AddMetadata(Cat("set_pp_tied_copy_dropped=", tied_dropped));
    }
  }
  int by_convention = 0;
  for (size_t st = 0; st < pp; ++st) {
    if (absl::Status s = MergeStage(stages[st], global[st], overrides, skip[st], options, builder,
                                    &by_convention);
        !s.ok()) {
      return s;
    }
  }
  if (by_convention > 0) builder.AddMetadata(Cat("tp_merged_by_layer_names=", by_convention));
  return builder.Finish();
}

}  // namespace weightgate::checkpoint
