#include "server/checkpoint/zero_reader.h"

#include <algorithm>
#include <cstring>
#include <memory>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "common/str_util.h"
#include "server/checkpoint/checkpoint_set.h"
#include "server/checkpoint/pickle_reader.h"
#include "server/checkpoint/set_builder.h"

namespace weightgate::checkpoint {

using common::Cat;
namespace {

using Kind = Value::Kind;

absl::Status Bad(std::string_view what) { return absl::InvalidArgumentError(Cat("zero: ", what)); }

bool EndsWith(std::string_view s, std::string_view suffix) {
  return s.size() >= suffix.size() && s.substr(s.size() - suffix.size()) == suffix;
}

// DeepSpeed classes its checkpoints pickle that are plain data.
constexpr std::string_view kDataGlobals[] = {
    "deepspeed.runtime.fp16.loss_scaler.LossScaler",
    "deepspeed.runtime.fp16.loss_scaler.DynamicLossScaler",
    "deepspeed.runtime.zero.config.ZeroStageEnum",
    "deepspeed.utils.tensor_fragment.fragment_address",
};

bool IsDataGlobal(std::string_view name) {
  for (std::string_view g : kDataGlobals) {
    if (name == g ||
        (name.size() > g.size() && name.substr(0, g.size()) == g && name[g.size()] == '.')) {
      return true;
    }
  }
  return false;
}

// "zero_pp_rank_10_..." after "zero_pp_rank_2_...": digits compare as numbers.
bool NaturalLess(const std::string& a, const std::string& b) {
  size_t i = 0, j = 0;
  while (i < a.size() && j < b.size()) {
    if (std::isdigit(static_cast<unsigned char>(a[i])) &&
        std::isdigit(static_cast<unsigned char>(b[j]))) {
      size_t i0 = i, j0 = j;
      while (i < a.size() && a[i] == '0') ++i;
      while (j < b.size() && b[j] == '0') ++j;
      size_t si = i, sj = j;
      while (i < a.size() && std::isdigit(static_cast<unsigned char>(a[i]))) ++i;
      while (j < b.size() && std::isdigit(static_cast<unsigned char>(b[j]))) ++j;
      if (i - si != j - sj) return i - si < j - sj;
      int c = a.compare(si, i - si, b, sj, j - sj);
      if (c != 0) return c < 0;
      if (i - i0 != j - j0) return i - i0 < j - j0;
      continue;
    }
    if (a[i] != b[j]) return a[i] < b[j];
    ++i;
    ++j;
  }
  return a.size() - i < b.size() - j;
}

absl::StatusOr<Checkpoint> ReadPart(const std::string& path, const ReadOptions& options) {
  absl::StatusOr<std::shared_ptr<const common::MappedFile>> file = common::MappedFile::Open(path);
  if (!file.ok()) return file.status();
  absl::StatusOr<Checkpoint> part = ReadCheckpoint(*std::move(file), options);
  if (!part.ok()) return Bad(Cat(path, ": ", part.status().message()));
  std::vector<std::string> opaque;
  for (std::string& g : part->opaque_globals) {
    if (!IsDataGlobal(g)) opaque.push_back(std::move(g));
  }
  part->opaque_globals = std::move(opaque);
  if (part->root == nullptr || part->root->kind != Kind::kDict) {
    return Bad(Cat(path, ": not a dict"));
  }
  return part;
}

bool IntList(const Value* v, std::vector<int64_t>* out) {
  if (v == nullptr || (v->kind != Kind::kTuple && v->kind != Kind::kList)) return false;
  out->clear();
  for (const Value* item : v->items) {
    int64_t x;
    if (!ValueToInt(item, &x) || x < 0) return false;
    out->push_back(x);
  }
  return true;
}

int64_t Numel(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (int64_t d : shape) {
    if (d < 0 || __builtin_mul_overflow(n, d, &n)) return -1;
  }
  return n;
}

// zero_stage: an int, a ZeroStageEnum(n), or a ZeroStageEnum member by name.
bool ZeroStage(const Value* v, int64_t* stage) {
  if (ValueToInt(v, stage)) return true;
  if (v == nullptr || v->kind != Kind::kOpaque) return false;
  if (v->items.size() == 1 && ValueToInt(v->items[0], stage)) return true;
  static constexpr std::pair<std::string_view, int> kNames[] = {
      {".disabled", 0}, {".optimizer_states", 1}, {".gradients", 2}, {".weights", 3}};
  for (const auto& [suffix, n] : kNames) {
    if (EndsWith(v->str, suffix)) {
      *stage = n;
      return true;
    }
  }
  return false;
}

struct Param {
  std::string name;
  std::vector<int64_t> shape;
  int64_t numel = 0;
};

// Ordered {name: shape} dicts, one per param group.
absl::StatusOr<std::vector<std::vector<Param>>> ParamGroups(const Value* v) {
  std::vector<const Value*> dicts;
  if (v != nullptr && v->kind == Kind::kDict) {
    dicts.push_back(v);
  } else if (v != nullptr && v->kind == Kind::kList) {
    dicts.assign(v->items.begin(), v->items.end());
  } else {
    return Bad("model states have no param_shapes");
  }
  std::vector<std::vector<Param>> groups;
  for (const Value* d : dicts) {
    if (d == nullptr || d->kind != Kind::kDict) return Bad("bad param_shapes");
    std::vector<Param>& group = groups.emplace_back();
    for (size_t k = 0; k + 1 < d->items.size(); k += 2) {
      Param p;
      if (d->items[k] == nullptr || !d->items[k]->is_string() ||
          !IntList(d->items[k + 1], &p.shape) || (p.numel = Numel(p.shape)) < 0) {
        return Bad("bad param_shapes entry");
      }
      p.name = d->items[k]->str;
      group.push_back(std::move(p));
    }
  }
  return groups;
}

// A 1-D vector made of several flat tensors back to back, possibly in
// different files.
class FlatVector {
 public:
  absl::Status Add(const Checkpoint* ckpt, const Value* v, std::string_view what) {
    if (v == nullptr || v->kind != Kind::kTensor || v->tensor.shape.size() != 1 ||
        !v->tensor.is_contiguous()) {
      return Bad(Cat(what, " is not a flat tensor"));
    }
    if (segments_.empty()) {
      dtype_ = v->tensor.dtype;
    } else if (v->tensor.dtype != dtype_) {
      return Bad(Cat(what, ": partitions of different dtypes"));
    }
    std::string_view bytes = ckpt->TensorStorageBytes(v->tensor);
    if (bytes.size() < v->tensor.nbytes()) return Bad(Cat(what, ": bytes missing"));
    segments_.push_back({bytes.substr(0, v->tensor.nbytes()), v->tensor.shape[0]});
    numel_ += v->tensor.shape[0];
    return absl::OkStatus();
  }

  // Copies elements [off, off + n) to dst. REQUIRES: n <= numel() - off.
  void Copy(int64_t off, int64_t n, char* dst) const {
    const size_t item = ItemSize(dtype_);
    int64_t base = 0;
    for (const Segment& s : segments_) {
      if (n == 0) return;
      if (off < base + s.numel) {
        int64_t from = off - base;
        int64_t take = std::min(n, s.numel - from);
        std::memcpy(dst, s.bytes.data() + from * item, static_cast<size_t>(take) * item);
        dst += take * item;
        off += take;
        n -= take;
      }
      base += s.numel;
    }
  }

  int64_t numel() const { return numel_; }
  DType dtype() const { return dtype_; }

 private:
  struct Segment {
    std::string_view bytes;
    int64_t numel;
  };
  std::vector<Segment> segments_;
  int64_t numel_ = 0;
  DType dtype_ = DType::kF32;
};

std::string ReadTag(const std::string& dir) {
  absl::StatusOr<std::shared_ptr<const common::MappedFile>> latest =
      common::MappedFile::Open(JoinPath(dir, "latest"));
  if (!latest.ok() || (*latest)->size() > 4096) return "";
  std::string tag((*latest)->data());
  while (!tag.empty() && (tag.back() == '\n' || tag.back() == '\r' || tag.back() == ' ')) {
    tag.pop_back();
  }
  return tag;
}

struct ZeroFiles {
  std::string dir;
  std::vector<std::string> model;  // natural order
  std::vector<std::string> optim;
};

absl::StatusOr<ZeroFiles> FindFiles(const std::string& path) {
  ZeroFiles f;
  f.dir = path;
  std::string tag = ReadTag(path);
  if (!tag.empty()) {
    if (!IsPlainFileName(tag)) return Bad(Cat("'latest' names a bad tag \"", tag, "\""));
    f.dir = JoinPath(path, tag);
  }
  absl::StatusOr<std::vector<std::string>> names = ListDirectory(f.dir);
  if (!names.ok()) return names.status();
  for (const std::string& n : *names) {
    if (EndsWith(n, "_model_states.pt")) f.model.push_back(n);
    if (EndsWith(n, "_optim_states.pt")) f.optim.push_back(n);
    if (n.find("mp_rank_") != std::string::npos && n.find("mp_rank_00") == std::string::npos) {
      return Bad(Cat(n, ": tensor-parallel ZeRO ranks are not merged"));
    }
  }
  std::sort(f.model.begin(), f.model.end(), NaturalLess);
  std::sort(f.optim.begin(), f.optim.end(), NaturalLess);
  return f;
}

class ZeroReader {
 public:
  ZeroReader(ZeroFiles files, const ReadOptions& options)
      : files_(std::move(files)), options_(options), builder_("deepspeed_zero") {}

  absl::StatusOr<Checkpoint> Read();

 private:
  std::string Path(const std::string& name) const { return JoinPath(files_.dir, name); }
  absl::Status ReadModule();
  absl::Status RebuildStage12(const std::vector<std::vector<Param>>& groups);
  absl::Status RebuildStage3(const std::vector<std::vector<Param>>& groups);
  absl::Status Assemble(const Param& p, DType dtype, const std::string& bytes);

  ZeroFiles files_;
  const ReadOptions& options_;
  SetBuilder builder_;
  std::vector<Checkpoint> optim_;
  std::vector<Checkpoint> model_;
  int64_t stage_ = -1;
  int64_t world_ = 0;
};

absl::Status ZeroReader::Assemble(const Param& p, DType dtype, const std::string& bytes) {
  return builder_.AddAssembled(p.name, dtype, p.shape, bytes, "zero fp32 partitions");
}

absl::Status ZeroReader::RebuildStage12(const std::vector<std::vector<Param>>& groups) {
  std::vector<FlatVector> flat(groups.size());
  for (size_t r = 0; r < optim_.size(); ++r) {
    const Value* osd = optim_[r].root->Get("optimizer_state_dict");
    const Value* parts = osd->Get("single_partition_of_fp32_groups");
    if (parts == nullptr || parts->kind != Kind::kList || parts->items.size() != groups.size()) {
      return Bad(Cat(files_.optim[r], ": single_partition_of_fp32_groups has ",
                     parts == nullptr ? 0 : parts->items.size(), " groups, param_shapes ",
                     groups.size()));
    }
    for (size_t g = 0; g < groups.size(); ++g) {
      if (absl::Status s = flat[g].Add(&optim_[r], parts->items[g], files_.optim[r]); !s.ok()) {
        return s;
      }
    }
  }
  const int64_t align = 2 * world_;
  auto aligned = [&](int64_t x) { return (x + align - 1) / align * align; };
  std::string buffer;
  for (size_t g = 0; g < groups.size(); ++g) {
    int64_t offset = 0;
    const size_t item = ItemSize(flat[g].dtype());
    for (const Param& p : groups[g]) {
      if (p.numel > flat[g].numel() - offset) {
        return Bad(Cat("param group ", g, " needs more elements than its partitions hold (",
                       flat[g].numel(), ") at ", p.name));
      }
      buffer.assign(static_cast<size_t>(p.numel) * item, '\0');
      flat[g].Copy(offset, p.numel, buffer.data());
      offset += p.numel;
      if (absl::Status s = Assemble(p, flat[g].dtype(), buffer); !s.ok()) return s;
    }
    if (aligned(offset) != aligned(flat[g].numel())) {
      return Bad(Cat("param group ", g, " uses ", offset, " of ", flat[g].numel(),
                     " partition elements: the partitions do not match param_shapes"));
    }
  }
  return absl::OkStatus();
}

absl::Status ZeroReader::RebuildStage3(const std::vector<std::vector<Param>>& groups) {
  std::vector<FlatVector> flat(optim_.size());
  for (size_t r = 0; r < optim_.size(); ++r) {
    const Value* parts = optim_[r].root->Get("optimizer_state_dict")->Get("fp32_flat_groups");
    if (parts == nullptr || parts->kind != Kind::kList || parts->items.empty()) {
      return Bad(Cat(files_.optim[r], ": no fp32_flat_groups"));
    }
    for (const Value* t : parts->items) {
      if (absl::Status s = flat[r].Add(&optim_[r], t, files_.optim[r]); !s.ok()) return s;
    }
    if (flat[r].numel() != flat[0].numel() || flat[r].dtype() != flat[0].dtype()) {
      return Bad(Cat(files_.optim[r], ": its partition differs in length from rank 0's"));
    }
  }
  const size_t item = ItemSize(flat[0].dtype());
  int64_t offset = 0;
  std::string buffer;
  for (const std::vector<Param>& group : groups) {
    for (const Param& p : group) {
      int64_t part = (p.numel + world_ - 1) / world_;
      if (part > flat[0].numel() - offset) {
        return Bad(Cat("param_shapes need more elements than the partitions hold (",
                       flat[0].numel(), " per rank) at ", p.name));
      }
      buffer.assign(static_cast<size_t>(p.numel) * item, '\0');
      for (int64_t r = 0; r < world_; ++r) {
        int64_t begin = r * part;
        if (begin >= p.numel) break;
        flat[r].Copy(offset, std::min(part, p.numel - begin), buffer.data() + begin * item);
      }
      offset += part;
      if (absl::Status s = Assemble(p, flat[0].dtype(), buffer); !s.ok()) return s;
    }
  }
  if (offset != flat[0].numel()) {
    return Bad(Cat("param_shapes use ", offset, " of ", flat[0].numel(),
                   " elements per rank: the partitions do not match"));
  }
  return absl::OkStatus();
}

absl::StatusOr<Checkpoint> ZeroReader::Read() {
  if (files_.model.empty()) return Bad(Cat(files_.dir, ": no *_model_states.pt"));
  for (const std::string& name : files_.model) {
    absl::StatusOr<Checkpoint> part = ReadPart(Path(name), options_);
    if (!part.ok()) return part.status();
    if (part->unsafe()) return std::move(*part);  // callers reject it; nothing more is read
    model_.push_back(*std::move(part));
  }
  const Value* ms = model_[0].root;
  const Value* module = ms->Get("module");
  if (module == nullptr || module->kind != Kind::kDict) {
    return Bad(Cat(files_.model[0], ": no module state_dict"));
  }
  if (const Value* v = ms->Get("ds_version"); v != nullptr && v->is_string()) {
    builder_.AddMetadata(Cat("ds_version=", v->str));
  }

  if (options_.zero_weights == ZeroWeights::kModule) {
    if (model_.size() > 1) {
      return Bad("zero_weights=module needs a stage 1-2 set: stage 3 partitions module weights");
    }
    builder_.AddMetadata("zero_weights=module");
    std::vector<NamedTensor> tensors = FlattenTensors(module);
    if (absl::Status s = builder_.AddPart(std::move(model_[0]), tensors, files_.model[0]);
        !s.ok()) {
      return s;
    }
    return builder_.Finish();
  }

  if (files_.optim.empty()) {
    return Bad(Cat(files_.dir,
                   ": no *_optim_states.pt to rebuild fp32 weights from; "
                   "zero_weights=module takes the module weights"));
  }
  for (const std::string& name : files_.optim) {
    absl::StatusOr<Checkpoint> part = ReadPart(Path(name), options_);
    if (!part.ok()) return part.status();
    if (part->unsafe()) return std::move(*part);
    const Value* osd = part->root->Get("optimizer_state_dict");
    if (osd == nullptr || osd->kind != Kind::kDict) {
      return Bad(Cat(name, ": no optimizer_state_dict"));
    }
    int64_t stage;
    if (!ZeroStage(osd->Get("zero_stage"), &stage)) return Bad(Cat(name, ": no zero_stage"));
    int64_t world = 0;
    const Value* pc = osd->Get("partition_count");
    std::vector<int64_t> counts;
    if (!ValueToInt(pc, &world)) {
      if (!IntList(pc, &counts) || counts.empty()) return Bad(Cat(name, ": no partition_count"));
      world = *std::max_element(counts.begin(), counts.end());
    }
    if (optim_.empty()) {
      stage_ = stage;
      world_ = world;
    } else if (stage != stage_ || world != world_) {
      return Bad(Cat("inconsistent ranks: ", name, " says stage ", stage, " of ", world, " ranks, ",
                     files_.optim[0], " stage ", stage_, " of ", world_));
    }
    optim_.push_back(*std::move(part));
  }
  if (stage_ < 1 || stage_ > 3) return Bad(Cat("unknown zero stage ", stage_));
  if (world_ < 1 || static_cast<size_t>(world_) != optim_.size()) {
    return Bad(Cat("inconsistent ranks: partition_count is ", world_, " but ", optim_.size(),
                   " *_optim_states.pt files are present"));
  }
  if (stage_ == 3 && model_.size() != optim_.size()) {
    return Bad(Cat("inconsistent ranks: ", optim_.size(), " optimizer partitions but ",
                   model_.size(), " *_model_states.pt files"));
  }
  builder_.AddMetadata("zero_weights=fp32");
  builder_.AddMetadata(Cat("zero_stage=", stage_));
  builder_.AddMetadata(Cat("zero_world_size=", world_));
  for (const Checkpoint& c : optim_) builder_.AddGlobals(c);

  // Everything needed from rank 0's model states, before it moves into the set.
  absl::StatusOr<std::vector<std::vector<Param>>> groups = ParamGroups(ms->Get("param_shapes"));
  if (!groups.ok()) return groups.status();
  std::vector<std::pair<std::string, std::string>> shared;
  if (const Value* sp = ms->Get("shared_params"); sp != nullptr && sp->kind == Kind::kDict) {
    for (size_t k = 0; k + 1 < sp->items.size(); k += 2) {
      if (sp->items[k]->is_string() && sp->items[k + 1]->is_string()) {
        shared.emplace_back(sp->items[k]->str, sp->items[k + 1]->str);
      }
    }
  }
  std::vector<NamedTensor> from_rank0;
  if (const Value* names = ms->Get("buffer_names"); names != nullptr) {
    for (const Value* n : names->items) {
      const Value* t = n != nullptr && n->is_string() ? module->Get(n->str) : nullptr;
      if (t == nullptr || t->kind != Kind::kTensor) continue;
      from_rank0.push_back({n->str, &t->tensor});
    }
  }
  const Value* frozen_shapes = ms->Get("frozen_param_shapes");
  if (frozen_shapes != nullptr && frozen_shapes->kind == Kind::kDict) {
    absl::StatusOr<std::vector<std::vector<Param>>> frozen = ParamGroups(frozen_shapes);
    if (!frozen.ok()) return frozen.status();
    for (const Param& p : frozen->front()) {
      if (stage_ <= 2) {
        const Value* frags = ms->Get("frozen_param_fragments");
        const Value* t = frags != nullptr ? frags->Get(p.name) : nullptr;
        if (t == nullptr || t->kind != Kind::kTensor || t->tensor.shape != p.shape) {
          return Bad(Cat("frozen parameter ", p.name, " has no fragment of its shape"));
        }
        from_rank0.push_back({p.name, &t->tensor});
        continue;
      }
      FlatVector cat;
      for (size_t r = 0; r < model_.size(); ++r) {
        const Value* frags = model_[r].root->Get("frozen_param_fragments");
        const Value* t = frags != nullptr ? frags->Get(p.name) : nullptr;
        if (absl::Status s = cat.Add(&model_[r], t, Cat("frozen fragment of ", p.name)); !s.ok()) {
          return s;
        }
      }
      if (cat.numel() < p.numel)
        return Bad(Cat("frozen parameter ", p.name, ": fragments too short"));
      std::string buffer(static_cast<size_t>(p.numel) * ItemSize(cat.dtype()), '\0');
      cat.Copy(0, p.numel, buffer.data());
      if (absl::Status s = Assemble(p, cat.dtype(), buffer); !s.ok()) return s;
    }
  }

  absl::Status rebuilt = stage_ <= 2 ? RebuildStage12(*groups) : RebuildStage3(*groups);
  if (!rebuilt.ok()) return rebuilt;
  if (absl::Status s = builder_.AddPart(std::move(model_[0]), from_rank0, files_.model[0]);
      !s.ok()) {
    return s;
  }
  for (const auto& [name, partner] : shared) {
    if (builder_.Has(name) || !builder_.Has(partner)) continue;
    if (absl::Status s = builder_.AddAlias(name, partner, "shared_params"); !s.ok()) return s;
  }
  return builder_.Finish();
}

}  // namespace

bool LooksLikeZeroDirectory(const std::string& dir) {
  absl::StatusOr<ZeroFiles> files = FindFiles(dir);
  return files.ok() && (!files->model.empty() || !files->optim.empty());
}

absl::StatusOr<Checkpoint> ReadZero(const std::string& dir, const ReadOptions& options) {
  absl::StatusOr<ZeroFiles> files = FindFiles(dir);
  if (!files.ok()) return files.status();
  ZeroReader reader(*std::move(files), options);
  return reader.Read();
}

}  // namespace weightgate::checkpoint
