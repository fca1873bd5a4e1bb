#include "server/checkpoint/pickle_reader.h"

#include <algorithm>
#include <cstring>
#include <limits>
#include <optional>
#include <utility>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/string_view.h"
#include "common/str_util.h"

namespace weightgate::checkpoint {

using common::AbslView;
using common::Cat;
using common::StdView;

namespace {

using Kind = Value::Kind;

// Python refuses to convert integers longer than this many decimal digits
// (sys.int_info.default_max_str_digits); the quadratic conversion below must
// not run on more either.
constexpr size_t kMaxDecimalDigits = 4300;
// Recorded global names per list; beyond this the list is already damning.
constexpr size_t kMaxRecordedGlobals = 1024;
// Calls nested through _rebuild_from_type_v2.
constexpr int kMaxCallDepth = 8;

// Allow-list entries. The machine implements each one itself.
enum GlobalId : int64_t {
  kNotAllowed = 0,
  kRebuildTensor,
  kRebuildTensorV2,
  kRebuildTensorV3,
  kRebuildParameter,
  kRebuildParameterWithState,
  kRebuildFromTypeV2,
  kParameterClass,
  kStorageClass,  // typed or untyped storage class; Value::dtype holds the element type
  kTorchSize,
  kOrderedDict,
  kDefaultDict,
  kBuiltinSet,
  kBuiltinFrozenSet,
  kBuiltinBytearray,
  kBuiltinBytes,
  kCodecsEncode,
  kBuiltinSlice,
  kBuiltinComplex,
  kBuiltinObject,
  kReconstructor,
  kFirstArg,       // torch.jit._pickle.build_*list / restore_type_tag: returns args[0]
  kGetattr,        // builtins.getattr: benign on (unknown class, public name), see Call
  kGetattrResult,  // marks the kOpaque a benign getattr returned (an enum member)
  kUnsupportedQuantized,
  kUnsupportedSparse,
  kUnsupportedSubclass,
  kUnsupportedMeta,
  kUnsupportedNumpy,
  kUnsupportedNested,
  kUnsupportedDevice,
};

struct AllowEntry {
  std::string_view module;
  std::string_view name;
  GlobalId id;
};

constexpr AllowEntry kAllowList[] = {
    {"torch._utils", "_rebuild_tensor", kRebuildTensor},
    {"torch._utils", "_rebuild_tensor_v2", kRebuildTensorV2},
    {"torch._utils", "_rebuild_tensor_v3", kRebuildTensorV3},
    {"torch._utils", "_rebuild_parameter", kRebuildParameter},
    {"torch._utils", "_rebuild_parameter_with_state", kRebuildParameterWithState},
    {"torch._utils", "_rebuild_from_type_v2", kRebuildFromTypeV2},
    {"torch._tensor", "_rebuild_from_type_v2", kRebuildFromTypeV2},
    {"torch.nn.parameter", "Parameter", kParameterClass},
    {"torch", "Size", kTorchSize},
    {"collections", "OrderedDict", kOrderedDict},
    {"collections", "defaultdict", kDefaultDict},
    {"builtins", "set", kBuiltinSet},
    {"builtins", "frozenset", kBuiltinFrozenSet},
    {"builtins", "bytearray", kBuiltinBytearray},
    {"builtins", "bytes", kBuiltinBytes},
    {"builtins", "slice", kBuiltinSlice},
    {"builtins", "complex", kBuiltinComplex},
    {"builtins", "object", kBuiltinObject},
    {"builtins", "getattr", kGetattr},
    {"_codecs", "encode", kCodecsEncode},
    {"copy_reg", "_reconstructor", kReconstructor},
    {"copyreg", "_reconstructor", kReconstructor},
    {"torch.jit._pickle", "build_intlist", kFirstArg},
    {"torch.jit._pickle", "build_tensorlist", kFirstArg},
    {"torch.jit._pickle", "build_doublelist", kFirstArg},
    {"torch.jit._pickle", "build_boollist", kFirstArg},
    {"torch.jit._pickle", "build_genericlist", kFirstArg},
    {"torch.jit._pickle", "restore_type_tag", kFirstArg},
    {"torch._utils", "_rebuild_qtensor", kUnsupportedQuantized},
    {"torch._utils", "_rebuild_sparse_tensor", kUnsupportedSparse},
    {"torch._utils", "_rebuild_sparse_csr_tensor", kUnsupportedSparse},
    {"torch._utils", "_rebuild_wrapper_subclass", kUnsupportedSubclass},
    {"torch._utils", "_rebuild_meta_tensor_no_storage", kUnsupportedMeta},
    {"torch._utils", "_rebuild_device_tensor_from_numpy", kUnsupportedNumpy},
    {"torch._utils", "_rebuild_nested_tensor", kUnsupportedNested},
    {"torch._utils", "_rebuild_xla_tensor", kUnsupportedDevice},
    {"torch._utils", "_rebuild_mlc_tensor", kUnsupportedDevice},
    {"torch._utils", "_rebuild_mps_tensor", kUnsupportedDevice},
};

// Whole modules whose every attribute is dangerous (submodules included).
// clang-format off
constexpr std::string_view kUnsafeModules[] = {
    "os",        "posix",      "nt",      "subprocess", "sys",       "runpy",
    "importlib", "pickle",     "_pickle", "cPickle",    "marshal",   "socket",
    "shutil",    "code",       "codeop",  "ctypes",     "pty",       "webbrowser",
    "commands",  "multiprocessing", "_posixsubprocess", "posixpath", "ntpath",
    "asyncio",   "signal",     "_thread", "threading",  "types",     "imp",
    "zipimport", "dill",       "cloudpickle",
};
// clang-format on

// Single dangerous attributes of otherwise harmless modules.
// clang-format off
constexpr std::pair<std::string_view, std::string_view> kUnsafeNames[] = {
    {"builtins", "eval"},       {"builtins", "exec"},       {"builtins", "compile"},
    {"builtins", "open"},       {"builtins", "__import__"},
    {"builtins", "setattr"},    {"builtins", "delattr"},    {"builtins", "globals"},
    {"builtins", "locals"},     {"builtins", "vars"},       {"builtins", "input"},
    {"builtins", "breakpoint"}, {"builtins", "execfile"},   {"builtins", "apply"},
    {"builtins", "file"},       {"builtins", "reload"},     {"builtins", "help"},
    {"pkgutil", "resolve_name"}, {"pkgutil", "get_loader"}, {"io", "open"},
    {"_io", "open"},            {"io", "FileIO"},           {"_io", "FileIO"},
    {"codecs", "open"},         {"operator", "attrgetter"}, {"operator", "methodcaller"},
    {"torch.storage", "_load_from_bytes"}, {"torch", "load"}, {"torch.serialization", "load"},
    {"torch.hub", "load"},      {"torch.hub", "load_state_dict_from_url"},
    {"numpy", "load"},          {"numpy.lib.npyio", "load"},
    {"numpy.testing._private.utils", "runstring"},
};
// clang-format on

// Python 2 module names that Python 3's unpickler maps (fix_imports,
// _compat_pickle.IMPORT_MAPPING); protocols < 3 write them for py2 readers.
// clang-format off
constexpr std::pair<std::string_view, std::string_view> kPy2Modules[] = {
    {"__builtin__", "builtins"}, {"exceptions", "builtins"}, {"copy_reg", "copyreg"},
    {"cPickle", "pickle"},       {"commands", "subprocess"}, {"thread", "_thread"},
    {"dummy_thread", "_dummy_thread"}, {"StringIO", "io"},   {"cStringIO", "io"},
    {"UserDict", "collections"}, {"UserList", "collections"}, {"UserString", "collections"},
    {"Queue", "queue"},          {"SocketServer", "socketserver"}, {"urlparse", "urllib.parse"},
    {"httplib", "http.client"},  {"urllib2", "urllib.request"},   {"cookielib", "http.cookiejar"},
};
// clang-format on

std::string_view CanonicalModule(std::string_view module) {
  for (const auto& [py2, py3] : kPy2Modules) {
    if (module == py2) return py3;
  }
  return module;
}

bool ModuleIn(std::string_view module, std::string_view root) {
  return module == root || (module.size() > root.size() && module.substr(0, root.size()) == root &&
                            module[root.size()] == '.');
}

GlobalId LookupAllowed(std::string_view module, std::string_view name) {
  for (const AllowEntry& e : kAllowList) {
    if (e.module == module && e.name == name) return e.id;
  }
  return kNotAllowed;
}

bool IsStorageModule(std::string_view module) {
  return module == "torch" || module == "torch.cuda";
}

absl::Status Invalid(std::string_view reason) {
  return absl::InvalidArgumentError(Cat("pickle: ", reason));
}

// Appends a UTF-8 encoding of `cp` (surrogates pass through, as Python's
// "surrogatepass" does).
void AppendUtf8(uint32_t cp, std::string* out) {
  if (cp < 0x80) {
    out->push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out->push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out->push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out->push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

// Decodes UTF-8 code points of `s` into latin-1 bytes; false when a code
// point does not fit a byte or the text is malformed.
bool Utf8ToLatin1(std::string_view s, std::string* out) {
  out->clear();
  out->reserve(s.size());
  for (size_t i = 0; i < s.size();) {
    unsigned char c = static_cast<unsigned char>(s[i]);
    if (c < 0x80) {
      out->push_back(static_cast<char>(c));
      ++i;
    } else if ((c & 0xE0) == 0xC0 && i + 1 < s.size()) {
      uint32_t cp = ((c & 0x1F) << 6) | (static_cast<unsigned char>(s[i + 1]) & 0x3F);
      if (cp > 0xFF) return false;
      out->push_back(static_cast<char>(cp));
      i += 2;
    } else {
      return false;
    }
  }
  return true;
}

// Decimal text -> minimal two's-complement little-endian bytes (pickle's
// encode_long). `digits` holds only [0-9]+.
std::string DecimalToTwosComplement(std::string_view digits, bool negative) {
  std::vector<uint32_t> limbs;  // little-endian base 2^32 magnitude
  for (char ch : digits) {
    uint64_t carry = static_cast<uint64_t>(ch - '0');
    for (uint32_t& limb : limbs) {
      uint64_t v = uint64_t{limb} * 10 + carry;
      limb = static_cast<uint32_t>(v);
      carry = v >> 32;
    }
    if (carry != 0) limbs.push_back(static_cast<uint32_t>(carry));
  }
  std::string bytes;
  for (uint32_t limb : limbs) {
    for (int k = 0; k < 4; ++k) bytes.push_back(static_cast<char>((limb >> (8 * k)) & 0xFF));
  }
  while (!bytes.empty() && bytes.back() == 0) bytes.pop_back();
  if (negative && !bytes.empty()) {
    // Two's complement: invert and add one.
    bool carry = true;
    for (char& b : bytes) {
      unsigned v = static_cast<unsigned char>(~static_cast<unsigned char>(b));
      if (carry) {
        v += 1;
        carry = v > 0xFF;
      }
      b = static_cast<char>(v & 0xFF);
    }
    if (!(static_cast<unsigned char>(bytes.back()) & 0x80))
      bytes.push_back(static_cast<char>(0xFF));
    // Minimal form: drop 0xFF bytes whose removal keeps the sign.
    while (bytes.size() > 1 && static_cast<unsigned char>(bytes.back()) == 0xFF &&
           (static_cast<unsigned char>(bytes[bytes.size() - 2]) & 0x80)) {
      bytes.pop_back();
    }
  } else if (!bytes.empty() && (static_cast<unsigned char>(bytes.back()) & 0x80)) {
    bytes.push_back('\0');
  }
  return bytes;
}

// Two's-complement little-endian -> int64 when it fits.
bool TwosComplementToInt64(std::string_view bytes, int64_t* out) {
  if (bytes.empty()) {
    *out = 0;
    return true;
  }
  if (bytes.size() > 8) return false;
  uint64_t v = 0;
  for (size_t k = 0; k < bytes.size(); ++k) {
    v |= uint64_t{static_cast<unsigned char>(bytes[k])} << (8 * k);
  }
  if (bytes.size() < 8 && (static_cast<unsigned char>(bytes.back()) & 0x80)) {
    v |= ~uint64_t{0} << (8 * bytes.size());
  }
  *out = static_cast<int64_t>(v);
  return true;
}

// Minimal two's-complement form (what CPython's LONG1 writes).
std::string_view TrimTwosComplement(std::string_view bytes) {
  while (bytes.size() > 1) {
    unsigned char last = static_cast<unsigned char>(bytes.back());
    unsigned char prev = static_cast<unsigned char>(bytes[bytes.size() - 2]);
    if ((last == 0x00 && !(prev & 0x80)) || (last == 0xFF && (prev & 0x80))) {
      bytes.remove_suffix(1);
    } else {
      break;
    }
  }
  if (bytes.size() == 1 && bytes[0] == 0) bytes.remove_suffix(1);
  return bytes;
}

class Machine final {
 public:
  Machine(std::string_view data, const PickleContext& ctx) : data_(data), ctx_(ctx) {}

  absl::StatusOr<Value*> Run(size_t* consumed);

 private:
  absl::Status Truncated() const { return Invalid(Cat("truncated at offset ", off_)); }
  absl::Status Bad(std::string_view what) const {
    return Invalid(Cat(what, " at offset ", op_off_));
  }

  // Bounded reads: each checks `n > size - off` before touching bytes.
  absl::Status Take(uint64_t n, std::string_view* out) {
    if (n > data_.size() - off_) return Truncated();
    *out = data_.substr(off_, static_cast<size_t>(n));
    off_ += static_cast<size_t>(n);
    return absl::OkStatus();
  }
  absl::Status TakeLine(std::string_view* out) {
    size_t nl = data_.find('\n', off_);
    if (nl == std::string_view::npos) return Truncated();
    *out = data_.substr(off_, nl - off_);
    off_ = nl + 1;
    return absl::OkStatus();
  }
  template <typename T>
  absl::Status TakeLE(T* out) {
    std::string_view b;
    if (absl::Status s = Take(sizeof(T), &b); !s.ok()) return s;
    uint64_t v = 0;
    for (size_t k = 0; k < sizeof(T); ++k) {
      v |= uint64_t{static_cast<unsigned char>(b[k])} << (8 * k);
    }
    *out = static_cast<T>(v);
    return absl::OkStatus();
  }

  Value* New(Kind kind) { return ctx_.arena->New(kind); }

  // None, True and False are immutable (no opcode mutates them), so a pickle
  // repeating them costs a stack slot, not a node each.
  Value* Singleton(Kind kind, bool b) {
    Value*& slot = kind == Kind::kNone ? none_ : b ? true_ : false_;
    if (slot == nullptr) {
      slot = New(kind);
      slot->b = b;
    }
    return slot;
  }

  absl::Status Push(Value* v) {
    if (stack_.size() + marks_.size() >= ctx_.limits.max_stack_depth) {
      return Bad(Cat("stack deeper than ", ctx_.limits.max_stack_depth));
    }
    stack_.push_back(v);
    return absl::OkStatus();
  }
  size_t Base() const { return marks_.empty() ? 0 : marks_.back(); }
  absl::Status Pop(Value** out) {
    if (stack_.size() <= Base()) return Bad("stack underflow");
    *out = stack_.back();
    stack_.pop_back();
    return absl::OkStatus();
  }
  absl::Status Top(Value** out) {
    if (stack_.size() <= Base()) return Bad("stack underflow");
    *out = stack_.back();
    return absl::OkStatus();
  }
  // Pops everything above the innermost MARK, and the MARK.
  absl::Status PopMark(std::vector<Value*>* items) {
    if (marks_.empty()) return Bad("no MARK");
    size_t base = marks_.back();
    marks_.pop_back();
    items->assign(stack_.begin() + static_cast<std::ptrdiff_t>(base), stack_.end());
    stack_.resize(base);
    return absl::OkStatus();
  }

  absl::Status Nest(Value* parent, const Value* child) {
    uint32_t d = child->depth + 1;
    if (d > parent->depth) {
      if (d > ctx_.limits.max_nesting) {
        return Bad(Cat("nesting deeper than ", ctx_.limits.max_nesting));
      }
      parent->depth = d;
    }
    return absl::OkStatus();
  }
  absl::Status AddItem(Value* parent, const Value* child) {
    if (absl::Status s = Nest(parent, child); !s.ok()) return s;
    parent->items.push_back(child);
    return absl::OkStatus();
  }
  absl::StatusOr<Value*> MakeSeq(Kind kind, const std::vector<Value*>& items) {
    Value* v = New(kind);
    v->items.reserve(items.size());
    for (Value* item : items) {
      if (absl::Status s = AddItem(v, item); !s.ok()) return s;
    }
    return v;
  }

  Value* MakeInt(int64_t i) {
    Value* v = New(Kind::kInt);
    v->i = i;
    return v;
  }
  Value* MakeLong(std::string_view twos) {
    twos = TrimTwosComplement(twos);
    int64_t i;
    if (TwosComplementToInt64(twos, &i)) return MakeInt(i);
    Value* v = New(Kind::kBigInt);
    v->str.assign(twos);
    return v;
  }
  Value* MakeStr(Kind kind, std::string_view s) {
    Value* v = New(kind);
    v->str.assign(s);
    return v;
  }

  absl::StatusOr<Value*> ParseDecimalInt(std::string_view text, bool long_suffix);
  absl::StatusOr<Value*> ParseRawUnicodeEscape(std::string_view text);
  absl::StatusOr<Value*> ParsePy2String(std::string_view text);

  absl::Status Memoize(uint64_t index, Value* v) {
    if (index >= ctx_.limits.max_memo_entries) {
      return Bad(Cat("memo index ", index, " over the cap"));
    }
    memo_[index] = v;
    return absl::OkStatus();
  }
  absl::Status Recall(uint64_t index) {
    auto it = memo_.find(index);
    if (it == memo_.end()) return Bad(Cat("memo key ", index, " not set"));
    return Push(it->second);
  }

  absl::StatusOr<Value*> Global(std::string_view module, std::string_view name);
  void Record(std::vector<std::string>* list, const std::string& name);
  absl::StatusOr<Value*> Call(Value* callee, Value* args, int call_depth);
  absl::StatusOr<Value*> Opaque(const Value* callee, Value* args);
  absl::StatusOr<Value*> RebuildTensor(GlobalId id, const Value* args);
  absl::Status AddToDict(Value* dict, const std::vector<Value*>& kv);
  absl::Status AddToList(Value* list, const std::vector<Value*>& items);
  // Appends to a `kind` container (turning an empty opaque subclass instance
  // into one); `misuse` starts the error for any other target.
  absl::Status AddToContainer(Value* container, const std::vector<Value*>& items, Kind kind,
                              const char* misuse);

  std::string_view data_;
  const PickleContext& ctx_;
  size_t off_ = 0;
  size_t op_off_ = 0;
  std::vector<Value*> stack_;
  std::vector<size_t> marks_;
  absl::flat_hash_map<uint64_t, Value*> memo_;
  std::vector<Value*> scratch_;
  Value* none_ = nullptr;
  Value* true_ = nullptr;
  Value* false_ = nullptr;
  absl::flat_hash_set<std::string> recorded_;  // names already in the global lists
};

absl::StatusOr<Value*> Machine::ParseDecimalInt(std::string_view text, bool long_suffix) {
  if (long_suffix && !text.empty() && (text.back() == 'L' || text.back() == 'l')) {
    text.remove_suffix(1);
  }
  text = StdView(absl::StripAsciiWhitespace(AbslView(text)));
  bool negative = false;
  if (!text.empty() && (text[0] == '-' || text[0] == '+')) {
    negative = text[0] == '-';
    text.remove_prefix(1);
  }
  if (text.empty() || text.size() > kMaxDecimalDigits) return Bad("bad integer literal");
  for (char c : text) {
    if (c < '0' || c > '9') return Bad("bad integer literal");
  }
  return MakeLong(DecimalToTwosComplement(text, negative));
}

absl::StatusOr<Value*> Machine::ParseRawUnicodeEscape(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  for (size_t i = 0; i < text.size();) {
    unsigned char c = static_cast<unsigned char>(text[i]);
    if (c == '\\' && i + 1 < text.size() && (text[i + 1] == 'u' || text[i + 1] == 'U')) {
      size_t n = text[i + 1] == 'u' ? 4 : 8;
      if (n > text.size() - (i + 2)) return Bad("bad \\u escape");
      uint32_t cp = 0;
      for (size_t k = 0; k < n; ++k) {
        char h = text[i + 2 + k];
        int d = (h >= '0' && h <= '9')   ? h - '0'
                : (h >= 'a' && h <= 'f') ? h - 'a' + 10
                : (h >= 'A' && h <= 'F') ? h - 'A' + 10
                                         : -1;
        if (d < 0) return Bad("bad \\u escape");
        cp = (cp << 4) | static_cast<uint32_t>(d);
      }
      if (cp > 0x10FFFF) return Bad("bad \\U escape");
      AppendUtf8(cp, &out);
      i += 2 + n;
    } else {
      AppendUtf8(c, &out);
      ++i;
    }
  }
  Value* v = New(Kind::kString);
  v->str = std::move(out);
  return v;
}

// Python 2 str literal as repr() writes it: '...' or "..." with escapes.
absl::StatusOr<Value*> Machine::ParsePy2String(std::string_view text) {
  if (text.size() < 2 || (text[0] != '\'' && text[0] != '"') || text.back() != text[0]) {
    return Bad("STRING not quoted");
  }
  text = text.substr(1, text.size() - 2);
  std::string out;
  for (size_t i = 0; i < text.size(); ++i) {
    char c = text[i];
    if (c != '\\') {
      out.push_back(c);
      continue;
    }
    if (++i >= text.size()) return Bad("bad STRING escape");
    char e = text[i];
    switch (e) {
      case 'n': out.push_back('\n'); break;
      case 't': out.push_back('\t'); break;
      case 'r': out.push_back('\r'); break;
      case 'a': out.push_back('\a'); break;
      case 'b': out.push_back('\b'); break;
      case 'f': out.push_back('\f'); break;
      case 'v': out.push_back('\v'); break;
      case '\\': out.push_back('\\'); break;
      case '\'': out.push_back('\''); break;
      case '"': out.push_back('"'); break;
      case 'x': {
        if (2 > text.size() - (i + 1)) return Bad("bad STRING escape");
        int v = 0;
        for (int k = 1; k <= 2; ++k) {
          char h = text[i + k];
          int d = (h >= '0' && h <= '9')   ? h - '0'
                  : (h >= 'a' && h <= 'f') ? h - 'a' + 10
                  : (h >= 'A' && h <= 'F') ? h - 'A' + 10
                                           : -1;
          if (d < 0) return Bad("bad STRING escape");
          v = v * 16 + d;
        }
        out.push_back(static_cast<char>(v));
        i += 2;
        break;
      }
      default:
        if (e >= '0' && e <= '7') {
          int v = 0;
          int k = 0;
          while (k < 3 && i < text.size() && text[i] >= '0' && text[i] <= '7') {
            v = v * 8 + (text[i] - '0');
            ++i;
            ++k;
          }
          --i;
          out.push_back(static_cast<char>(v & 0xFF));
        } else {
          out.push_back('\\');
          out.push_back(e);
        }
    }
  }
  Value* v = New(Kind::kString);
  v->str = std::move(out);
  return v;
}

void Machine::Record(std::vector<std::string>* list, const std::string& name) {
  if (list == nullptr || list->size() >= kMaxRecordedGlobals) return;
  std::string key = Cat(list == ctx_.unsafe_globals ? "u:" : "o:", name);
  if (!recorded_.insert(key).second) return;
  // The lists may already hold names from an earlier pickle (legacy format).
  if (std::find(list->begin(), list->end(), name) == list->end()) list->push_back(name);
}

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
  }
  return v;
}

absl::StatusOr<Value*> Machine::Opaque(const Value* callee, Value* args) {
  Value* v = New(Kind::kOpaque);
  if (callee->kind == Kind::kGlobal || callee->kind == Kind::kOpaque) {
    v->str = callee->str;
  } else {
    v->str = Cat("<", KindName(callee->kind), ">");
  }
  if (args != nullptr) {
    for (const Value* item : args->items) {
      if (absl::Status s = AddItem(v, item); !s.ok()) return s;
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
  if (callee->kind != Kind::kGlobal || callee->i == kNotAllowed) return Opaque(callee, args);
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
      v->items = a[0]->items;
      v->depth = a[0]->depth;
      return v;
    }
    case kOrderedDict: {
      Value* v = New(Kind::kDict);
      v->str = callee->str;
      if (!a.empty()) {
        const Value* src = a[0];
        if (src->kind == Kind::kDict) {
          v->items = src->items;
          v->depth = src->depth;
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
        v->items = a[0]->items;
        v->depth = a[0]->depth;
      }
      return v;
    }
    case kBuiltinBytes:
    case kBuiltinBytearray: {
      Value* v = New(Kind::kBytes);
      if (a.empty()) return v;
      if (a[0]->kind == Kind::kBytes) {
        v->str = a[0]->str;
        return v;
      }
      if (a[0]->kind == Kind::kString && a.size() == 2 && a[1]->kind == Kind::kString) {
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
          if (!Utf8ToLatin1(a[0]->str, &v->str)) return Bad("bytes text is not latin-1");
          return v;
        }
      }
      return Opaque(callee, args);
    }
    case kReconstructor: {
      // copyreg._reconstructor(cls, base, state): an instance of cls.
      if (!a.empty() && a[0]->kind == Kind::kGlobal) return Opaque(a[0], nullptr);
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

// Opcodes (pickletools names).
enum : unsigned char {
  kMark = '(',
  kStop = '.',
  kPop = '0',
  kPopMark = '1',
  kDup = '2',
  kFloat = 'F',
  kInt = 'I',
  kBinInt = 'J',
  kBinInt1 = 'K',
  kLong = 'L',
  kBinInt2 = 'M',
  kNone = 'N',
  kPersId = 'P',
  kBinPersId = 'Q',
  kReduce = 'R',
  kString = 'S',
  kBinString = 'T',
  kShortBinString = 'U',
  kUnicode = 'V',
  kBinUnicode = 'X',
  kAppend = 'a',
  kBuild = 'b',
  kGlobalOp = 'c',
  kDict = 'd',
  kEmptyDict = '}',
  kAppends = 'e',
  kGet = 'g',
  kBinGet = 'h',
  kInst = 'i',
  kLongBinGet = 'j',
  kList = 'l',
  kEmptyList = ']',
  kObj = 'o',
  kPut = 'p',
  kBinPut = 'q',
  kLongBinPut = 'r',
  kSetItem = 's',
  kTuple = 't',
  kEmptyTuple = ')',
  kSetItems = 'u',
  kBinFloat = 'G',
  kProto = 0x80,
  kNewObj = 0x81,
  kExt1 = 0x82,
  kExt2 = 0x83,
  kExt4 = 0x84,
  kTuple1 = 0x85,
  kTuple2 = 0x86,
  kTuple3 = 0x87,
  kNewTrue = 0x88,
  kNewFalse = 0x89,
  kLong1 = 0x8a,
  kLong4 = 0x8b,
  kBinBytes = 'B',
  kShortBinBytes = 'C',
  kShortBinUnicode = 0x8c,
  kBinUnicode8 = 0x8d,
  kBinBytes8 = 0x8e,
  kEmptySet = 0x8f,
  kAddItems = 0x90,
  kFrozenSetOp = 0x91,
  kNewObjEx = 0x92,
  kStackGlobal = 0x93,
  kMemoize = 0x94,
  kFrame = 0x95,
  kByteArray8 = 0x96,
  kNextBuffer = 0x97,
  kReadonlyBuffer = 0x98,
};

#define WG_RETURN_IF_ERROR(expr)              \
  do {                                        \
    if (absl::Status s_ = (expr); !s_.ok()) { \
      return s_;                              \
    }                                         \
  } while (0)

#define WG_ASSIGN_OR_RETURN(lhs, expr)          \
  auto lhs##_or = (expr);                       \
  if (!lhs##_or.ok()) return lhs##_or.status(); \
  lhs = *lhs##_or

absl::StatusOr<Value*> Machine::Run(size_t* consumed) {
  if (ctx_.arena == nullptr) return absl::InternalError("pickle: no arena");
  std::vector<Value*>& items = scratch_;
  while (true) {
    op_off_ = off_;
    if (off_ >= data_.size()) return Truncated();
    if (ctx_.arena->size() + 4 > ctx_.limits.max_values) {
      return Bad(Cat("more than ", ctx_.limits.max_values, " values"));
    }
    const unsigned char op = static_cast<unsigned char>(data_[off_++]);
    switch (op) {
      case kProto: {
        uint8_t proto;
        WG_RETURN_IF_ERROR(TakeLE(&proto));
        if (proto > 5) return Bad(Cat("unsupported protocol ", proto));
        break;
      }
      case kFrame: {
        uint64_t n;
        WG_RETURN_IF_ERROR(TakeLE(&n));
        if (n > data_.size() - off_) return Truncated();
        break;  // frames only group opcodes; the bytes follow inline
      }
      case kStop: {
        Value* top;
        WG_RETURN_IF_ERROR(Pop(&top));
        if (consumed != nullptr) *consumed = off_;
        return top;
      }
      case kMark:
        if (stack_.size() + marks_.size() >= ctx_.limits.max_stack_depth) {
          return Bad(Cat("stack deeper than ", ctx_.limits.max_stack_depth));
        }
        marks_.push_back(stack_.size());
        break;
      case kPop: {
        if (stack_.size() > Base()) {
          stack_.pop_back();
        } else {
          WG_RETURN_IF_ERROR(PopMark(&items));
        }
        break;
      }
      case kPopMark: WG_RETURN_IF_ERROR(PopMark(&items)); break;
      case kDup: {
        Value* top;
        WG_RETURN_IF_ERROR(Top(&top));
        WG_RETURN_IF_ERROR(Push(top));
        break;
      }
      // --- scalars
      case kNone: WG_RETURN_IF_ERROR(Push(Singleton(Kind::kNone, false))); break;
      case kNewTrue:
      case kNewFalse: WG_RETURN_IF_ERROR(Push(Singleton(Kind::kBool, op == kNewTrue))); break;
      case kInt: {
        std::string_view line;
        WG_RETURN_IF_ERROR(TakeLine(&line));
        if (line == "01" || line == "00") {
          WG_RETURN_IF_ERROR(Push(Singleton(Kind::kBool, line == "01")));
          break;
        }
        Value* v;
        WG_ASSIGN_OR_RETURN(v, ParseDecimalInt(line, /*long_suffix=*/false));
        WG_RETURN_IF_ERROR(Push(v));
        break;
      }
      case kLong: {
        std::string_view line;
        WG_RETURN_IF_ERROR(TakeLine(&line));
        Value* v;
        WG_ASSIGN_OR_RETURN(v, ParseDecimalInt(line, /*long_suffix=*/true));
        WG_RETURN_IF_ERROR(Push(v));
        break;
      }
      case kBinInt: {
        uint32_t u;
        WG_RETURN_IF_ERROR(TakeLE(&u));
        WG_RETURN_IF_ERROR(Push(MakeInt(static_cast<int32_t>(u))));
        break;
      }
      case kBinInt1: {
        uint8_t u;
        WG_RETURN_IF_ERROR(TakeLE(&u));
        WG_RETURN_IF_ERROR(Push(MakeInt(u)));
        break;
      }
      case kBinInt2: {
        uint16_t u;
        WG_RETURN_IF_ERROR(TakeLE(&u));
        WG_RETURN_IF_ERROR(Push(MakeInt(u)));
        break;
      }
      case kLong1:
      case kLong4: {
        uint64_t n;
        if (op == kLong1) {
          uint8_t n8;
          WG_RETURN_IF_ERROR(TakeLE(&n8));
          n = n8;
        } else {
          uint32_t n32;
          WG_RETURN_IF_ERROR(TakeLE(&n32));
          if (static_cast<int32_t>(n32) < 0) return Bad("LONG4 with negative length");
          n = n32;
        }
        std::string_view b;
        WG_RETURN_IF_ERROR(Take(n, &b));
        WG_RETURN_IF_ERROR(Push(MakeLong(b)));
        break;
      }
      case kFloat: {
        std::string_view line;
        WG_RETURN_IF_ERROR(TakeLine(&line));
        double d;
        if (!absl::SimpleAtod(AbslView(line), &d)) return Bad("bad float literal");
        Value* v = New(Kind::kFloat);
        v->f = d;
        WG_RETURN_IF_ERROR(Push(v));
        break;
      }
      case kBinFloat: {
        std::string_view b;
        WG_RETURN_IF_ERROR(Take(8, &b));
        uint64_t u = 0;
        for (int k = 0; k < 8; ++k) u = (u << 8) | static_cast<unsigned char>(b[k]);  // big-endian
        Value* v = New(Kind::kFloat);
        std::memcpy(&v->f, &u, sizeof(u));
        WG_RETURN_IF_ERROR(Push(v));
        break;
      }
      // --- strings and bytes
      case kShortBinUnicode:
      case kBinUnicode:
      case kBinUnicode8:
      case kShortBinBytes:
      case kBinBytes:
      case kBinBytes8:
      case kByteArray8:
      case kShortBinString:
      case kBinString: {
        uint64_t n;
        if (op == kShortBinUnicode || op == kShortBinBytes || op == kShortBinString) {
          uint8_t n8;
          WG_RETURN_IF_ERROR(TakeLE(&n8));
          n = n8;
        } else if (op == kBinUnicode || op == kBinBytes || op == kBinString) {
          uint32_t n32;
          WG_RETURN_IF_ERROR(TakeLE(&n32));
          if (op == kBinString && static_cast<int32_t>(n32) < 0) {
            return Bad("BINSTRING with negative length");
          }
          n = n32;
        } else {
          WG_RETURN_IF_ERROR(TakeLE(&n));
        }
        std::string_view b;
        WG_RETURN_IF_ERROR(Take(n, &b));
        Kind kind =
            (op == kShortBinBytes || op == kBinBytes || op == kBinBytes8 || op == kByteArray8)
                ? Kind::kBytes
                : Kind::kString;
        WG_RETURN_IF_ERROR(Push(MakeStr(kind, b)));
        break;
      }
      case kUnicode: {
        std::string_view line;
        WG_RETURN_IF_ERROR(TakeLine(&line));
        Value* v;
        WG_ASSIGN_OR_RETURN(v, ParseRawUnicodeEscape(line));
        WG_RETURN_IF_ERROR(Push(v));
        break;
      }
      case kString: {
        std::string_view line;
        WG_RETURN_IF_ERROR(TakeLine(&line));
        Value* v;
        WG_ASSIGN_OR_RETURN(v, ParsePy2String(line));
        WG_RETURN_IF_ERROR(Push(v));
        break;
      }
      case kNextBuffer:
      case kReadonlyBuffer: return Bad("out-of-band buffers are not supported");
      case kExt1:
      case kExt2:
      case kExt4: return Bad("extension codes are not supported");
      // --- containers
      case kEmptyTuple: WG_RETURN_IF_ERROR(Push(New(Kind::kTuple))); break;
      case kTuple1:
      case kTuple2:
      case kTuple3: {
        size_t n = op - kTuple1 + 1;
        if (stack_.size() < Base() + n) return Bad("stack underflow");
        items.assign(stack_.end() - static_cast<std::ptrdiff_t>(n), stack_.end());
        stack_.resize(stack_.size() - n);
        Value* v;
        WG_ASSIGN_OR_RETURN(v, MakeSeq(Kind::kTuple, items));
        WG_RETURN_IF_ERROR(Push(v));
        break;
      }
      case kTuple:
      case kList:
      case kFrozenSetOp: {
        WG_RETURN_IF_ERROR(PopMark(&items));
        Kind kind = op == kTuple ? Kind::kTuple : op == kList ? Kind::kList : Kind::kFrozenSet;
        Value* v;
        WG_ASSIGN_OR_RETURN(v, MakeSeq(kind, items));
        WG_RETURN_IF_ERROR(Push(v));
        break;
      }
      case kDict: {
        WG_RETURN_IF_ERROR(PopMark(&items));
        if (items.size() % 2 != 0) return Bad("odd number of dict items");
        Value* v;
        WG_ASSIGN_OR_RETURN(v, MakeSeq(Kind::kDict, items));
        WG_RETURN_IF_ERROR(Push(v));
        break;
      }
      case kEmptyList: WG_RETURN_IF_ERROR(Push(New(Kind::kList))); break;
      case kEmptyDict: WG_RETURN_IF_ERROR(Push(New(Kind::kDict))); break;
      case kEmptySet: WG_RETURN_IF_ERROR(Push(New(Kind::kSet))); break;
      case kAppend: {
        Value* v;
        Value* list;
        WG_RETURN_IF_ERROR(Pop(&v));
        WG_RETURN_IF_ERROR(Top(&list));
        items.assign(1, v);
        WG_RETURN_IF_ERROR(AddToList(list, items));
        break;
      }
      case kAppends: {
        WG_RETURN_IF_ERROR(PopMark(&items));
        Value* list;
        WG_RETURN_IF_ERROR(Top(&list));
        WG_RETURN_IF_ERROR(AddToList(list, items));
        break;
      }
      case kSetItem: {
        Value* k;
        Value* v;
        Value* dict;
        WG_RETURN_IF_ERROR(Pop(&v));
        WG_RETURN_IF_ERROR(Pop(&k));
        WG_RETURN_IF_ERROR(Top(&dict));
        items.assign({k, v});
        WG_RETURN_IF_ERROR(AddToDict(dict, items));
        break;
      }
      case kSetItems: {
        WG_RETURN_IF_ERROR(PopMark(&items));
        Value* dict;
        WG_RETURN_IF_ERROR(Top(&dict));
        WG_RETURN_IF_ERROR(AddToDict(dict, items));
        break;
      }
      case kAddItems: {
        WG_RETURN_IF_ERROR(PopMark(&items));
        Value* set;
        WG_RETURN_IF_ERROR(Top(&set));
        if (set->kind != Kind::kSet && set->kind != Kind::kOpaque) {
          return Bad(Cat("ADDITEMS to a ", KindName(set->kind)));
        }
        for (Value* v : items) WG_RETURN_IF_ERROR(AddItem(set, v));
        break;
      }
      // --- memo
      case kPut: {
        std::string_view line;
        WG_RETURN_IF_ERROR(TakeLine(&line));
        uint64_t idx;
        if (!absl::SimpleAtoi(AbslView(line), &idx)) return Bad("bad PUT index");
        Value* top;
        WG_RETURN_IF_ERROR(Top(&top));
        WG_RETURN_IF_ERROR(Memoize(idx, top));
        break;
      }
      case kBinPut:
      case kLongBinPut: {
        uint32_t idx;
        if (op == kBinPut) {
          uint8_t i8;
          WG_RETURN_IF_ERROR(TakeLE(&i8));
          idx = i8;
        } else {
          WG_RETURN_IF_ERROR(TakeLE(&idx));
        }
        Value* top;
        WG_RETURN_IF_ERROR(Top(&top));
        WG_RETURN_IF_ERROR(Memoize(idx, top));
        break;
      }
      case kMemoize: {
        Value* top;
        WG_RETURN_IF_ERROR(Top(&top));
        WG_RETURN_IF_ERROR(Memoize(memo_.size(), top));
        break;
      }
      case kGet: {
        std::string_view line;
        WG_RETURN_IF_ERROR(TakeLine(&line));
        uint64_t idx;
        if (!absl::SimpleAtoi(AbslView(line), &idx)) return Bad("bad GET index");
        WG_RETURN_IF_ERROR(Recall(idx));
        break;
      }
      case kBinGet: {
        uint8_t idx;
        WG_RETURN_IF_ERROR(TakeLE(&idx));
        WG_RETURN_IF_ERROR(Recall(idx));
        break;
      }
      case kLongBinGet: {
        uint32_t idx;
        WG_RETURN_IF_ERROR(TakeLE(&idx));
        WG_RETURN_IF_ERROR(Recall(idx));
        break;
      }
      // --- globals and object construction
      case kGlobalOp: {
        std::string_view module, name;
        WG_RETURN_IF_ERROR(TakeLine(&module));
        WG_RETURN_IF_ERROR(TakeLine(&name));
        Value* v;
        WG_ASSIGN_OR_RETURN(v, Global(module, name));
        WG_RETURN_IF_ERROR(Push(v));
        break;
      }
      case kStackGlobal: {
        Value* name;
        Value* module;
        WG_RETURN_IF_ERROR(Pop(&name));
        WG_RETURN_IF_ERROR(Pop(&module));
        if (module->kind != Kind::kString || name->kind != Kind::kString) {
          return Bad("STACK_GLOBAL of a non-string");
        }
        Value* v;
        WG_ASSIGN_OR_RETURN(v, Global(module->str, name->str));
        WG_RETURN_IF_ERROR(Push(v));
        break;
      }
      case kReduce:
      case kNewObj: {
        Value* args;
        Value* callee;
        WG_RETURN_IF_ERROR(Pop(&args));
        WG_RETURN_IF_ERROR(Pop(&callee));
        Value* v;
        WG_ASSIGN_OR_RETURN(v, Call(callee, args, 0));
        WG_RETURN_IF_ERROR(Push(v));
        break;
      }
      case kNewObjEx: {
        Value* kwargs;
        Value* args;
        Value* cls;
        WG_RETURN_IF_ERROR(Pop(&kwargs));
        WG_RETURN_IF_ERROR(Pop(&args));
        WG_RETURN_IF_ERROR(Pop(&cls));
        if (args->kind != Kind::kTuple) return Bad("NEWOBJ_EX arguments are not a tuple");
        Value* v;
        WG_ASSIGN_OR_RETURN(v, Opaque(cls, args));
        if (kwargs->kind == Kind::kDict && !kwargs->items.empty()) {
          WG_RETURN_IF_ERROR(AddItem(v, kwargs));
        }
        WG_RETURN_IF_ERROR(Push(v));
        break;
      }
      case kObj: {
        WG_RETURN_IF_ERROR(PopMark(&items));
        if (items.empty()) return Bad("OBJ without a class");
        Value* cls = items[0];
        items.erase(items.begin());
        Value* args;
        WG_ASSIGN_OR_RETURN(args, MakeSeq(Kind::kTuple, items));
        Value* v;
        WG_ASSIGN_OR_RETURN(v, Call(cls, args, 0));
        WG_RETURN_IF_ERROR(Push(v));
        break;
      }
      case kInst: {
        std::string_view module, name;
        WG_RETURN_IF_ERROR(TakeLine(&module));
        WG_RETURN_IF_ERROR(TakeLine(&name));
        Value* cls;
        WG_ASSIGN_OR_RETURN(cls, Global(module, name));
        WG_RETURN_IF_ERROR(PopMark(&items));
        Value* args;
        WG_ASSIGN_OR_RETURN(args, MakeSeq(Kind::kTuple, items));
        Value* v;
        WG_ASSIGN_OR_RETURN(v, Call(cls, args, 0));
        WG_RETURN_IF_ERROR(Push(v));
        break;
      }
      case kBuild: {
        Value* state;
        Value* inst;
        WG_RETURN_IF_ERROR(Pop(&state));
        WG_RETURN_IF_ERROR(Top(&inst));
        if (inst->kind == Kind::kOpaque || inst->kind == Kind::kDict) {
          WG_RETURN_IF_ERROR(Nest(inst, state));
          inst->state = state;
        }
        // Tensors (parameter state), lists and the rest: nothing to keep.
        break;
      }
      case kPersId:
      case kBinPersId: {
        Value* pid;
        if (op == kPersId) {
          std::string_view line;
          WG_RETURN_IF_ERROR(TakeLine(&line));
          pid = MakeStr(Kind::kString, line);
        } else {
          WG_RETURN_IF_ERROR(Pop(&pid));
        }
        if (!ctx_.persistent_load) return Bad("persistent id without a loader");
        absl::StatusOr<Value*> v = ctx_.persistent_load(*pid);
        if (!v.ok()) return v.status();
        if (*v == nullptr) return Bad("persistent id resolved to nothing");
        WG_RETURN_IF_ERROR(Push(*v));
        break;
      }
      default: return Bad(Cat("unknown opcode ", static_cast<int>(op)));
    }
  }
}

#undef WG_ASSIGN_OR_RETURN
#undef WG_RETURN_IF_ERROR

}  // namespace

GlobalClass ClassifyGlobal(std::string_view raw_module, std::string_view name) {
  std::string_view module = CanonicalModule(raw_module);
  for (std::string_view m : kUnsafeModules) {
    if (ModuleIn(module, m)) return GlobalClass::kUnsafe;
  }
  for (const auto& [m, n] : kUnsafeNames) {
    if (m == module && n == name) return GlobalClass::kUnsafe;
  }
  // Any dunder attribute reached through a global is a way around the table.
  if (name.find("__") != std::string_view::npos && name != "__newobj__") {
    if (module == "builtins" || module == "torch" || ModuleIn(module, "torch")) {
      return GlobalClass::kUnsafe;
    }
  }
  if (LookupAllowed(module, name) != kNotAllowed) return GlobalClass::kAllowed;
  if (module == "torch" && DTypeFromTorchName(name).has_value()) return GlobalClass::kAllowed;
  if (IsStorageModule(module) &&
      (name == "UntypedStorage" || DTypeFromTorchStorage(name).has_value())) {
    return GlobalClass::kAllowed;
  }
  return GlobalClass::kOpaque;
}

bool ValueToInt(const Value* v, int64_t* out) {
  if (v == nullptr) return false;
  if (v->kind == Value::Kind::kInt) {
    *out = v->i;
    return true;
  }
  if (v->kind == Value::Kind::kBool) {
    *out = v->b ? 1 : 0;
    return true;
  }
  return false;
}

absl::StatusOr<Value*> Unpickle(std::string_view bytes, const PickleContext& ctx,
                                size_t* consumed) {
  Machine machine(bytes, ctx);
  return machine.Run(consumed);
}

}  // namespace weightgate::checkpoint
