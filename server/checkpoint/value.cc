#include "server/checkpoint/value.h"

#include <cmath>

#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "common/str_util.h"

namespace weightgate::checkpoint {

using common::Cat;

int64_t TensorRecord::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) {
    if (d == 0) return 0;
  }
  for (int64_t d : shape) {
    if (__builtin_mul_overflow(n, d, &n)) return 0;  // rejected at parse time
  }
  return n;
}

bool TensorRecord::is_contiguous() const {
  if (strides.size() != shape.size()) return false;
  int64_t expected = 1;
  for (size_t k = shape.size(); k-- > 0;) {
    if (shape[k] == 0) return true;
  }
  for (size_t k = shape.size(); k-- > 0;) {
    if (shape[k] != 1 && strides[k] != expected) return false;
    expected *= shape[k];
  }
  return true;
}

uint64_t TensorRecord::nbytes() const { return static_cast<uint64_t>(numel()) * ItemSize(dtype); }

const Value* Value::Get(std::string_view key) const {
  if (kind != Kind::kDict) return nullptr;
  for (size_t k = 0; k + 1 < items.size(); k += 2) {
    if (items[k]->kind == Kind::kString && items[k]->str == key) return items[k + 1];
  }
  return nullptr;
}

std::string_view KindName(Value::Kind kind) {
  switch (kind) {
    case Value::Kind::kNone: return "None";
    case Value::Kind::kBool: return "bool";
    case Value::Kind::kInt: return "int";
    case Value::Kind::kBigInt: return "int";
    case Value::Kind::kFloat: return "float";
    case Value::Kind::kString: return "str";
    case Value::Kind::kBytes: return "bytes";
    case Value::Kind::kTuple: return "tuple";
    case Value::Kind::kList: return "list";
    case Value::Kind::kDict: return "dict";
    case Value::Kind::kSet: return "set";
    case Value::Kind::kFrozenSet: return "frozenset";
    case Value::Kind::kTensor: return "tensor";
    case Value::Kind::kStorage: return "storage";
    case Value::Kind::kGlobal: return "global";
    case Value::Kind::kOpaque: return "object";
    case Value::Kind::kDtype: return "dtype";
  }
  return "?";
}

namespace {

// Dict keys as path components: strings as they are, ints in decimal.
bool KeyName(const Value* key, std::string* out) {
  switch (key->kind) {
    case Value::Kind::kString: *out = key->str; return true;
    case Value::Kind::kInt: *out = Cat(key->i); return true;
    case Value::Kind::kBool: *out = key->b ? "True" : "False"; return true;
    default: return false;
  }
}

// Node visits per FlattenTensors call: a pickle can share nodes so that a
// small file unfolds into an exponential tree.
constexpr int64_t kMaxVisits = int64_t{1} << 22;
// Name bytes per FlattenTensors call, for trees nobody checked.
constexpr uint64_t kMaxNameBytes = uint64_t{256} << 20;

void Flatten(const Value* v, std::string& prefix, int depth, int max_depth,
             std::vector<const Value*>& path, int64_t& budget, uint64_t& name_bytes,
             std::vector<NamedTensor>* out) {
  if (v == nullptr || depth > max_depth || --budget < 0) return;
  if (v->kind == Value::Kind::kTensor) {
    if (prefix.size() > kMaxNameBytes - name_bytes) {
      budget = -1;
      return;
    }
    name_bytes += prefix.size();
    out->push_back({prefix, &v->tensor});
    return;
  }
  for (const Value* on_path : path) {
    if (on_path == v) return;  // a cycle
  }
  auto child = [&](const Value* c, std::string_view name) {
    size_t old = prefix.size();
    if (!prefix.empty()) prefix.push_back('.');
    prefix.append(name);
    Flatten(c, prefix, depth + 1, max_depth, path, budget, name_bytes, out);
    prefix.resize(old);
  };
  path.push_back(v);
  switch (v->kind) {
    case Value::Kind::kDict: {
      std::string name;
      for (size_t k = 0; k + 1 < v->items.size(); k += 2) {
        if (!KeyName(v->items[k], &name)) continue;
        child(v->items[k + 1], name);
      }
      break;
    }
    case Value::Kind::kList:
    case Value::Kind::kTuple:
      for (size_t k = 0; k < v->items.size(); ++k) child(v->items[k], Cat(k));
      break;
    case Value::Kind::kOpaque:
      // Objects read like their attributes (TorchScript modules, Lightning
      // wrappers); a dict state is the object's __dict__.
      if (v->state != nullptr) {
        size_t old = prefix.size();
        Flatten(v->state, prefix, depth + 1, max_depth, path, budget, name_bytes, out);
        prefix.resize(old);
      }
      break;
    default: break;
  }
  path.pop_back();
}

void Debug(const Value* v, int depth, std::string* out) {
  constexpr size_t kMaxLen = 4096;
  constexpr size_t kMaxItems = 32;
  if (out->size() > kMaxLen) return;
  if (v == nullptr) {
    out->append("<null>");
    return;
  }
  if (depth < 0) {
    out->append("...");
    return;
  }
  auto seq = [&](std::string_view open, std::string_view close, bool pairs) {
    out->append(open);
    size_t step = pairs ? 2 : 1;
    for (size_t k = 0; k + step - 1 < v->items.size(); k += step) {
      if (k > 0) out->append(", ");
      if (k / step >= kMaxItems) {
        out->append("...");
        break;
      }
      Debug(v->items[k], depth - 1, out);
      if (pairs) {
        out->append(": ");
        Debug(v->items[k + 1], depth - 1, out);
      }
    }
    if (!pairs && v->kind == Value::Kind::kTuple && v->items.size() == 1) out->append(",");
    out->append(close);
  };
  switch (v->kind) {
    case Value::Kind::kNone: out->append("None"); break;
    case Value::Kind::kBool: out->append(v->b ? "True" : "False"); break;
    case Value::Kind::kInt: out->append(Cat(v->i)); break;
    case Value::Kind::kBigInt: out->append(Cat("<int of ", v->str.size(), " bytes>")); break;
    case Value::Kind::kFloat: out->append(absl::StrFormat("%g", v->f)); break;
    case Value::Kind::kString:
      out->append(Cat("'", v->str.substr(0, 256), v->str.size() > 256 ? "..." : "", "'"));
      break;
    case Value::Kind::kBytes: out->append(Cat("<", v->str.size(), " bytes>")); break;
    case Value::Kind::kTuple: seq("(", ")", false); break;
    case Value::Kind::kList: seq("[", "]", false); break;
    case Value::Kind::kDict: seq("{", "}", true); break;
    case Value::Kind::kSet: seq("{", "}", false); break;
    case Value::Kind::kFrozenSet: seq("frozenset({", "})", false); break;
    case Value::Kind::kTensor:
      out->append(Cat("<tensor ", DTypeName(v->tensor.dtype), "[",
                      std::string(absl::StrJoin(v->tensor.shape, ", ")), "]>"));
      break;
    case Value::Kind::kStorage: out->append(Cat("<storage ", v->storage_index, ">")); break;
    case Value::Kind::kGlobal: out->append(Cat("<global ", v->str, ">")); break;
    case Value::Kind::kOpaque: out->append(Cat("<opaque ", v->str, ">")); break;
    case Value::Kind::kDtype: out->append(Cat("torch.", TorchDTypeName(v->dtype))); break;
  }
}

}  // namespace

std::vector<NamedTensor> FlattenTensors(const Value* root, int max_depth) {
  std::vector<NamedTensor> out;
  std::string prefix;
  std::vector<const Value*> path;
  int64_t budget = kMaxVisits;
  uint64_t name_bytes = 0;
  Flatten(root, prefix, 0, max_depth, path, budget, name_bytes, &out);
  return out;
}

namespace {

size_t DecimalLength(uint64_t v) {
  size_t n = 1;
  while (v >= 10) {
    v /= 10;
    ++n;
  }
  return n;
}

// Length of KeyName's output, or false when the key names nothing.
bool KeyLength(const Value* key, uint64_t* out) {
  switch (key->kind) {
    case Value::Kind::kString: *out = key->str.size(); return true;
    case Value::Kind::kInt:
      *out = key->i < 0 ? 1 + DecimalLength(0 - static_cast<uint64_t>(key->i))
                        : DecimalLength(static_cast<uint64_t>(key->i));
      return true;
    case Value::Kind::kBool: *out = key->b ? 4 : 5; return true;
    default: return false;
  }
}

// Flatten's walk, counting instead of building.
class NameCheck final {
 public:
  NameCheck(const FlattenLimits& limits, ReadBudget* budget) : limits_(limits), budget_(budget) {}

  absl::Status Walk(const Value* v, uint64_t name_length, int depth) {
    if (v == nullptr || depth > limits_.max_depth) return absl::OkStatus();
    if (++visits_ > limits_.max_visits) {
      return ResourceLimitError("tensor names: ", "max_flatten_visits",
                                Cat("walking the object tree takes more than ", limits_.max_visits,
                                    " node visits (shared sub-trees unfold once per path)"));
    }
    if (v->kind == Value::Kind::kTensor) {
      if (name_length > limits_.max_key_bytes) {
        return ResourceLimitError(
            "tensor names: ", "max_tensor_key_bytes",
            Cat("a tensor key of ", name_length, " bytes (cap ", limits_.max_key_bytes, ")"));
      }
      if (++names_ > limits_.max_names) {
        return ResourceLimitError("tensor names: ", "max_tensor_names",
                                  Cat("more than ", limits_.max_names,
                                      " tensor names (shared sub-dicts unfold once per path)"));
      }
      if (budget_ != nullptr) {
        if (absl::Status s = budget_->Charge(
                (name_length + sizeof(NamedTensor)) * limits_.name_cost_factor, "tensor names");
            !s.ok()) {
          return WithPrefix(s, "tensor names: ");
        }
      }
      return absl::OkStatus();
    }
    for (const Value* on_path : path_) {
      if (on_path == v) return absl::OkStatus();  // a cycle
    }
    auto child = [&](const Value* c, uint64_t key_length) {
      uint64_t length = name_length + (name_length > 0 ? 1 : 0) + key_length;
      return Walk(c, length, depth + 1);
    };
    path_.push_back(v);
    absl::Status status;
    switch (v->kind) {
      case Value::Kind::kDict:
        for (size_t k = 0; k + 1 < v->items.size() && status.ok(); k += 2) {
          uint64_t key_length;
          if (!KeyLength(v->items[k], &key_length)) continue;
          status = child(v->items[k + 1], key_length);
        }
        break;
      case Value::Kind::kList:
      case Value::Kind::kTuple:
        for (size_t k = 0; k < v->items.size() && status.ok(); ++k) {
          status = child(v->items[k], DecimalLength(k));
        }
        break;
      case Value::Kind::kOpaque:
        if (v->state != nullptr) status = Walk(v->state, name_length, depth + 1);
        break;
      default: break;
    }
    path_.pop_back();
    return status;
  }

 private:
  const FlattenLimits& limits_;
  ReadBudget* budget_;
  uint64_t visits_ = 0;
  uint64_t names_ = 0;
  std::vector<const Value*> path_;
};

}  // namespace

absl::Status CheckTensorNames(const Value* root, const FlattenLimits& limits, ReadBudget* budget) {
  NameCheck check(limits, budget);
  return check.Walk(root, 0, 0);
}

std::string DebugString(const Value* v, int max_depth) {
  std::string out;
  Debug(v, max_depth, &out);
  return out;
}

}  // namespace weightgate::checkpoint
