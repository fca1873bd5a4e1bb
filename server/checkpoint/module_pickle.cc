#include "server/checkpoint/module_pickle.h"

#include <string>
#include <vector>

#include "absl/container/flat_hash_set.h"
#include "common/str_util.h"

namespace weightgate::checkpoint {

using common::Cat;
namespace {

using Kind = Value::Kind;

// Bounds on the walk: a pickle can share subtrees so that a small file
// unfolds exponentially, and a module can (perversely) contain itself.
constexpr int kMaxModuleDepth = 64;
constexpr int64_t kMaxVisits = int64_t{1} << 22;

const Value* StateDict(const Value* v) {
  if (v == nullptr || v->kind != Kind::kOpaque || v->state == nullptr) return nullptr;
  return v->state->kind == Kind::kDict ? v->state : nullptr;
}

bool IsDict(const Value* v) { return v != nullptr && v->kind == Kind::kDict; }

bool KeyString(const Value* key, std::string* out) {
  if (key == nullptr || key->kind != Kind::kString) return false;
  *out = key->str;
  return true;
}

class Flattener {
 public:
  explicit Flattener(ValueArena* arena) : arena_(arena) {}

  // A new dict holding `module`'s state_dict.
  Value* Flatten(const Value* module) {
    Value* out = arena_->New(Kind::kDict);
    out->str = "collections.OrderedDict";
    std::vector<const Value*> path;
    Add(module, "", 0, &path, out);
    return out;
  }

  int64_t budget = kMaxVisits;

 private:
  void Put(Value* out, const std::string& name, const Value* tensor) {
    Value* key = arena_->New(Kind::kString);
    key->str = name;
    out->items.push_back(key);
    out->items.push_back(tensor);
  }

  void Add(const Value* module, const std::string& prefix, int depth,
           std::vector<const Value*>* path, Value* out) {
    if (depth > kMaxModuleDepth || --budget < 0) return;
    for (const Value* p : *path) {
      if (p == module) return;
    }
    const Value* state = StateDict(module);
    if (state == nullptr) return;
    path->push_back(module);
    std::string name;
    if (const Value* params = state->Get("_parameters"); IsDict(params)) {
      for (size_t k = 0; k + 1 < params->items.size(); k += 2) {
        const Value* t = params->items[k + 1];
        if (KeyString(params->items[k], &name) && t != nullptr && t->kind == Kind::kTensor) {
          Put(out, prefix + name, t);
        }
      }
    }
    absl::flat_hash_set<std::string> non_persistent;
    if (const Value* np = state->Get("_non_persistent_buffers_set"); np != nullptr) {
      for (const Value* item : np->items) {
        if (KeyString(item, &name)) non_persistent.insert(name);
      }
    }
    if (const Value* buffers = state->Get("_buffers"); IsDict(buffers)) {
      for (size_t k = 0; k + 1 < buffers->items.size(); k += 2) {
        const Value* t = buffers->items[k + 1];
        if (KeyString(buffers->items[k], &name) && !non_persistent.contains(name) && t != nullptr &&
            t->kind == Kind::kTensor) {
          Put(out, prefix + name, t);
        }
      }
    }
    if (const Value* modules = state->Get("_modules"); IsDict(modules)) {
      for (size_t k = 0; k + 1 < modules->items.size(); k += 2) {
        const Value* child = modules->items[k + 1];
        if (KeyString(modules->items[k], &name) && IsModuleObject(child)) {
          Add(child, Cat(prefix, name, "."), depth + 1, path, out);
        }
      }
    }
    path->pop_back();
  }

  ValueArena* arena_;
};

class Rewriter {
 public:
  explicit Rewriter(Checkpoint* ckpt) : ckpt_(ckpt), flattener_(ckpt->arena.get()) {}

  void Run() {
    if (IsModuleObject(ckpt_->root)) {
      ckpt_->root = flattener_.Flatten(ckpt_->root);
      Note("");
      return;
    }
    std::string prefix;
    Walk(const_cast<Value*>(ckpt_->root), &prefix, 0);
  }

  int rewritten = 0;

 private:
  void Note(const std::string& path) {
    ++rewritten;
    if (rewritten <= 16) ckpt_->metadata.push_back(Cat("module_pickle=", path));
  }

  // `v` is an arena node the reader built; the tree is the checkpoint's own.
  void Walk(Value* v, std::string* path, int depth) {
    if (v == nullptr || depth > kMaxModuleDepth || --flattener_.budget < 0) return;
    if (!seen_.insert(v).second) return;
    auto visit = [&](const Value*& slot, std::string_view name) {
      size_t old = path->size();
      if (!path->empty()) path->push_back('.');
      path->append(name);
      if (IsModuleObject(slot)) {
        slot = flattener_.Flatten(slot);
        Note(*path);
      } else {
        Walk(const_cast<Value*>(slot), path, depth + 1);
      }
      path->resize(old);
    };
    switch (v->kind) {
      case Kind::kDict:
        for (size_t k = 0; k + 1 < v->items.size(); k += 2) {
          std::string name;
          if (!KeyString(v->items[k], &name)) name = "?";
          visit(v->items[k + 1], name);
        }
        break;
      case Kind::kList:
      case Kind::kTuple:
        for (size_t k = 0; k < v->items.size(); ++k) visit(v->items[k], Cat(k));
        break;
      case Kind::kOpaque:
        if (v->state != nullptr) Walk(const_cast<Value*>(v->state), path, depth + 1);
        break;
      default: break;
    }
  }

  Checkpoint* ckpt_;
  Flattener flattener_;
  absl::flat_hash_set<const Value*> seen_;
};

}  // namespace

bool IsModuleObject(const Value* v) {
  const Value* state = StateDict(v);
  return state != nullptr && IsDict(state->Get("_parameters")) && IsDict(state->Get("_modules")) &&
         IsDict(state->Get("_buffers"));
}

int ReadModulesAsStateDicts(Checkpoint* checkpoint) {
  if (checkpoint == nullptr || checkpoint->root == nullptr ||
      checkpoint->format == Format::kTorchScript) {
    return 0;
  }
  Rewriter rewriter(checkpoint);
  rewriter.Run();
  return rewriter.rewritten;
}

}  // namespace weightgate::checkpoint
