// What calling a global means to the machine: torch's tensor and parameter
// rebuild functions, the containers it knows (OrderedDict, set, torch.Size,
// ...), getattr as Python >= 3.11 uses it for enums, and opaque objects for
// everything else. Nothing is ever called.
#include <algorithm>
#include <optional>
#include <utility>

#include "absl/strings/ascii.h"
#include "server/checkpoint/pickle_machine.h"

namespace weightgate::checkpoint::pickle_internal {

absl::StatusOr<Value*> Machine::Global(std::string_view raw_module, std::string_view name) {
  if (raw_module.empty() || name.empty() || raw_module.size() > 1024 || name.size() > 1024) {
    return Bad("bad global name");
  }
  std::string_view module = CanonicalModule(raw_module);
  std::string full = Cat(module, ".", name);
  GlobalClass cls = ClassifyGlobal(module, name);
  if (cls == GlobalClass::kAllowed && module == "torch") {
    if (std::optional<DType> dt = DTypeFromTorchName(name); dt.has_value()) {
      Value* v = New(Kind::kDtype);
      v->dtype = *dt;
      return v;
    }
  }
  Value* v = New(Kind::kGlobal);
  Note(full.size(), "strings");
  v->str = std::move(full);
  if (cls == GlobalClass::kAllowed) {
    GlobalId id = LookupAllowed(module, name);
    if (id == kNotAllowed && IsStorageModule(module)) {
      if (name == "UntypedStorage" || name == "ByteStorage") {
        v->dtype = DType::kU8;
        id = kStorageClass;
      } else if (std::optional<DType> dt = DTypeFromTorchStorage(name); dt.has_value()) {
        v->dtype = *dt;
        id = kStorageClass;
      }
    }
    v->i = id;
  } else if (cls == GlobalClass::kUnsafe) {
    Record(ctx_.unsafe_globals, v->str);
  } else {
    Record(ctx_.opaque_globals, v->str);
    v->b = IsDataOnlyCallable(module, name);  // calling it builds plain data
  }
  if (!TorchWeightsOnlyAllows(raw_module, name)) {
    Record(ctx_.weights_only_blockers, Cat(raw_module, ".", name));
  }
  return v;
}

void Machine::RecordCall(const Value* callee) {
  if (callee->kind == Kind::kGlobal) {
    if (callee->i == kNotAllowed && !callee->b) Record(ctx_.called_globals, callee->str);
  } else if (callee->kind == Kind::kOpaque) {
    Record(ctx_.called_globals, Cat(callee->str.substr(0, 1024), "()"));
  }
}

absl::StatusOr<Value*> Machine::Opaque(const Value* callee, Value* args) {
  Value* v = New(Kind::kOpaque);
  if (callee->kind == Kind::kGlobal || callee->kind == Kind::kOpaque) {
    Note(callee->str.size(), "strings");
    v->str = callee->str;
  } else {
    v->str = Cat("<", KindName(callee->kind), ">");
    Note(v->str.size(), "strings");
  }
  if (args != nullptr) {
    if (absl::Status s = Charge(args->items.size() * kItemBytes,
                                Cat("items copied by a call of ", v->str.substr(0, 128)));
        !s.ok()) {
      return s;
    }
    v->items.reserve(args->items.size());
    for (const Value* item : args->items) {
      if (absl::Status s = Nest(v, item); !s.ok()) return s;
      v->items.push_back(item);
    }
  }
  return v;
}

absl::StatusOr<Value*> Machine::RebuildTensor(GlobalId id, const Value* args) {
  const std::vector<const Value*>& a = args->items;
  size_t min_args = id == kRebuildTensor ? 4 : id == kRebuildTensorV2 ? 6 : 7;
  if (a.size() < min_args) return Bad("tensor rebuild with too few arguments");
  const Value* storage = a[0];
  if (storage->kind != Kind::kStorage) return Bad("tensor rebuild without a storage");
  if (ctx_.storages == nullptr || storage->storage_index < 0 ||
      static_cast<size_t>(storage->storage_index) >= ctx_.storages->size()) {
    return Bad("tensor names an unknown storage");
  }
  const StorageRecord& record = (*ctx_.storages)[static_cast<size_t>(storage->storage_index)];
  TensorRecord t;
  t.dtype = record.dtype;
  if (id == kRebuildTensorV3) {
    if (a[6]->kind != Kind::kDtype) return Bad("tensor rebuild with a bad dtype");
    t.dtype = a[6]->dtype;
  }
  t.storage_index = storage->storage_index;
  if (!ValueToInt(a[1], &t.storage_offset) || t.storage_offset < 0) {
    return Bad("tensor storage offset is not a non-negative int");
  }
  const Value* size = a[2];
  const Value* stride = a[3];
  auto is_seq = [](const Value* v) { return v->kind == Kind::kTuple || v->kind == Kind::kList; };
  if (!is_seq(size) || !is_seq(stride)) return Bad("tensor size or stride is not a tuple");
  if (size->items.size() != stride->items.size())
    return Bad("tensor size and stride differ in rank");
  if (size->items.size() > ctx_.limits.max_tensor_dims) return Bad("tensor rank over the cap");
  Note(2 * sizeof(int64_t) * size->items.size(), "tensor shapes");
  t.shape.resize(size->items.size());
  t.strides.resize(size->items.size());
  bool empty = false;
  for (size_t d = 0; d < t.shape.size(); ++d) {
    if (!ValueToInt(size->items[d], &t.shape[d]) || t.shape[d] < 0) {
      return Bad("tensor dimension is not a non-negative int");
    }
    if (!ValueToInt(stride->items[d], &t.strides[d]) || t.strides[d] < 0) {
      return Bad("tensor stride is not a non-negative int");
    }
    if (t.shape[d] == 0) empty = true;
  }
  const int64_t item = static_cast<int64_t>(ItemSize(t.dtype));
  if (!empty) {
    int64_t numel = 1;
    int64_t last = t.storage_offset;  // index of the last addressed element
    for (size_t d = 0; d < t.shape.size(); ++d) {
      int64_t span;
      if (__builtin_mul_overflow(numel, t.shape[d], &numel) ||
          __builtin_mul_overflow(t.shape[d] - 1, t.strides[d], &span) ||
          __builtin_add_overflow(last, span, &last)) {
        return Bad("tensor size overflows");
      }
    }
    int64_t nbytes;
    int64_t end_bytes;
    if (__builtin_mul_overflow(numel, item, &nbytes) ||
        __builtin_add_overflow(last, int64_t{1}, &last) ||
        __builtin_mul_overflow(last, item, &end_bytes)) {
      return Bad("tensor size overflows");
    }
    if (static_cast<uint64_t>(end_bytes) > record.nbytes) {
      return Bad(Cat("tensor needs ", end_bytes, " bytes of storage '", record.key, "' which has ",
                     record.nbytes));
    }
  }
  if (id != kRebuildTensor) {
    const Value* rg = a[4];
    t.requires_grad = rg->kind == Kind::kBool ? rg->b : (rg->kind == Kind::kInt && rg->i != 0);
  }
  Value* v = New(Kind::kTensor);
  v->tensor = std::move(t);
  return v;
}

absl::Status Machine::CopyItems(Value* dst, const Value* src, const Value* callee) {
  if (absl::Status s = Charge(src->items.size() * kItemBytes,
                              Cat("items copied by a call of ", callee->str.substr(0, 128)));
      !s.ok()) {
    return s;
  }
  dst->items = src->items;
  dst->depth = src->depth;
  return absl::OkStatus();
}

absl::Status Machine::AddToDict(Value* dict, const std::vector<Value*>& kv) {
  if (kv.size() % 2 != 0) return Bad("odd number of dict items");
  return AddToContainer(dict, kv, Kind::kDict, "SETITEM on a ");
}

absl::Status Machine::AddToList(Value* list, const std::vector<Value*>& items) {
  return AddToContainer(list, items, Kind::kList, "APPEND to a ");
}

absl::Status Machine::AddToContainer(Value* container, const std::vector<Value*>& items, Kind kind,
                                     const char* misuse) {
  if (container->kind == Kind::kOpaque && container->items.empty() && container->state == nullptr) {
    // A dict or list subclass (AttributeDict, defaultdict, ...) built by NEWOBJ.
    container->kind = kind;
  }
  if (container->kind != kind && container->kind != Kind::kOpaque) {
    return Bad(Cat(misuse, KindName(container->kind)));
  }
  for (Value* v : items) {
    if (absl::Status s = AddItem(container, v); !s.ok()) return s;
  }
  return absl::OkStatus();
}

absl::StatusOr<Value*> Machine::Call(Value* callee, Value* args, int call_depth) {
  if (args->kind != Kind::kTuple) return Bad("call arguments are not a tuple");
  if (callee->kind == Kind::kOpaque && callee->i == kGetattrResult) {
    // Calling an attribute fetched by getattr (Path.unlink, ...) is what
    // torch.load would really execute.
    Record(ctx_.unsafe_globals, "builtins.getattr");
    return Opaque(callee, args);
  }
  if (callee->kind != Kind::kGlobal || callee->i == kNotAllowed) {
    RecordCall(callee);
    return Opaque(callee, args);
  }
  const std::vector<const Value*>& a = args->items;
  switch (static_cast<GlobalId>(callee->i)) {
    case kGetattr: {
      // Python >= 3.11 pickles enum members as getattr(EnumClass, "NAME"):
      // benign when the object is an unknown class (not a module function,
      // not an allowed or unsafe global) and the name is public. Anything
      // else is the classic way around a global allow-list.
      if (a.size() == 2 && a[0]->kind == Kind::kGlobal && a[0]->i == kNotAllowed &&
          a[1]->kind == Kind::kString && !a[1]->str.empty() && a[1]->str[0] != '_' &&
          a[1]->str.size() <= 256 &&
          ClassifyGlobal(a[0]->str.substr(0, a[0]->str.rfind('.')),
                         a[0]->str.substr(a[0]->str.rfind('.') + 1)) == GlobalClass::kOpaque) {
        Value* v = New(Kind::kOpaque);
        Note(a[0]->str.size() + a[1]->str.size() + 1, "strings");
        v->str = Cat(a[0]->str, ".", a[1]->str);
        v->i = kGetattrResult;
        return v;
      }
      Record(ctx_.unsafe_globals, "builtins.getattr");
      return Opaque(callee, args);
    }
    case kRebuildTensor:
    case kRebuildTensorV2:
    case kRebuildTensorV3: return RebuildTensor(static_cast<GlobalId>(callee->i), args);
    case kRebuildParameter:
    case kRebuildParameterWithState:
    case kParameterClass: {
      if (a.empty() || a[0]->kind != Kind::kTensor) return Bad("parameter without a tensor");
      Value* v = New(Kind::kTensor);
      Note(2 * sizeof(int64_t) * a[0]->tensor.shape.size(), "tensor shapes");
      v->tensor = a[0]->tensor;
      v->tensor.is_parameter = true;
      v->tensor.requires_grad = true;
      if (a.size() > 1) {
        v->tensor.requires_grad =
            a[1]->kind == Kind::kBool ? a[1]->b : (a[1]->kind == Kind::kInt && a[1]->i != 0);
      }
      return v;
    }
    case kRebuildFromTypeV2: {
      if (a.size() < 3 || a[2]->kind != Kind::kTuple) return Bad("bad _rebuild_from_type_v2");
      if (call_depth >= kMaxCallDepth) return Bad("calls nested too deeply");
      return Call(const_cast<Value*>(a[0]), const_cast<Value*>(a[2]), call_depth + 1);
    }
    case kTorchSize: {
      if (a.size() != 1 || (a[0]->kind != Kind::kTuple && a[0]->kind != Kind::kList)) {
        return Bad("bad torch.Size");
      }
      Value* v = New(Kind::kTuple);
      if (absl::Status s = CopyItems(v, a[0], callee); !s.ok()) return s;
      return v;
    }
    case kOrderedDict: {
      Value* v = New(Kind::kDict);
      v->str = callee->str;
      if (!a.empty()) {
        const Value* src = a[0];
        if (src->kind == Kind::kDict) {
          if (absl::Status s = CopyItems(v, src, callee); !s.ok()) return s;
        } else if (src->kind == Kind::kList || src->kind == Kind::kTuple) {
          for (const Value* pair : src->items) {
            if (pair->kind != Kind::kTuple && pair->kind != Kind::kList)
              return Bad("bad OrderedDict");
            if (pair->items.size() != 2) return Bad("bad OrderedDict");
            for (const Value* kv : pair->items) {
              if (absl::Status s = AddItem(v, kv); !s.ok()) return s;
            }
          }
        } else {
          return Bad("bad OrderedDict");
        }
      }
      return v;
    }
    case kDefaultDict: {
      // defaultdict(factory): a dict whose items SETITEMS adds; the factory
      // (a global, reported as such) is never called.
      Value* v = New(Kind::kDict);
      v->str = callee->str;
      return v;
    }
    case kBuiltinSet:
    case kBuiltinFrozenSet: {
      Value* v = New(callee->i == kBuiltinSet ? Kind::kSet : Kind::kFrozenSet);
      if (!a.empty()) {
        if (a[0]->kind != Kind::kList && a[0]->kind != Kind::kTuple && a[0]->kind != Kind::kSet &&
            a[0]->kind != Kind::kFrozenSet) {
          return Bad("bad set argument");
        }
        if (absl::Status s = CopyItems(v, a[0], callee); !s.ok()) return s;
      }
      return v;
    }
    case kBuiltinBytes:
    case kBuiltinBytearray: {
      Value* v = New(Kind::kBytes);
      if (a.empty()) return v;
      if (a[0]->kind == Kind::kBytes) {
        if (absl::Status s = Charge(a[0]->str.size(), "bytes copied by bytes()"); !s.ok()) return s;
        v->str = a[0]->str;
        return v;
      }
      if (a[0]->kind == Kind::kString && a.size() == 2 && a[1]->kind == Kind::kString) {
        if (absl::Status s = Charge(a[0]->str.size(), "bytes copied by bytes()"); !s.ok()) return s;
        if (!Utf8ToLatin1(a[0]->str, &v->str)) return Bad("bytes text is not latin-1");
        return v;
      }
      return Opaque(callee, args);
    }
    case kCodecsEncode: {
      if (a.size() == 2 && a[0]->kind == Kind::kString && a[1]->kind == Kind::kString) {
        std::string enc = absl::AsciiStrToLower(a[1]->str);
        if (enc == "latin1" || enc == "latin-1" || enc == "iso-8859-1") {
          Value* v = New(Kind::kBytes);
          if (absl::Status s = Charge(a[0]->str.size(), "bytes copied by encode()"); !s.ok()) {
            return s;
          }
          if (!Utf8ToLatin1(a[0]->str, &v->str)) return Bad("bytes text is not latin-1");
          return v;
        }
      }
      return Opaque(callee, args);
    }
    case kReconstructor: {
      // copyreg._reconstructor(cls, base, state): an instance of cls.
      if (!a.empty() && a[0]->kind == Kind::kGlobal) {
        RecordCall(a[0]);  // cls.__new__ runs, and base.__init__ when base is not object
        return Opaque(a[0], nullptr);
      }
      return Opaque(callee, args);
    }
    case kGetattrResult: break;
    case kFirstArg:
      if (a.empty()) return Bad("missing argument");
      return const_cast<Value*>(a[0]);
    case kUnsupportedQuantized: return Invalid("quantized tensors are not supported");
    case kUnsupportedSparse: return Invalid("sparse tensors are not supported");
    case kUnsupportedSubclass: return Invalid("tensor subclasses are not supported");
    case kUnsupportedMeta: return Invalid("meta tensors are not supported");
    case kUnsupportedNumpy: return Invalid("numpy-backed tensors are not supported");
    case kUnsupportedNested: return Invalid("nested tensors are not supported");
    case kUnsupportedDevice: return Invalid("device-specific tensors are not supported");
    case kStorageClass:
    case kBuiltinSlice:
    case kBuiltinComplex:
    case kBuiltinObject:
    case kNotAllowed: break;
  }
  return Opaque(callee, args);
}

}  // namespace weightgate::checkpoint::pickle_internal
