#include "server/checkpoint/pickle_globals.h"

#include <utility>

#include "server/checkpoint/dtype.h"
#include "server/checkpoint/pickle_reader.h"

namespace weightgate::checkpoint {
namespace pickle_internal {
namespace {

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

bool ModuleIn(std::string_view module, std::string_view root) {
  return module == root || (module.size() > root.size() && module.substr(0, root.size()) == root &&
                            module[root.size()] == '.');
}

}  // namespace

std::string_view CanonicalModule(std::string_view module) {
  for (const auto& [py2, py3] : kPy2Modules) {
    if (module == py2) return py3;
  }
  return module;
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

}  // namespace pickle_internal

using pickle_internal::CanonicalModule;
using pickle_internal::IsStorageModule;
using pickle_internal::kNotAllowed;
using pickle_internal::kUnsafeModules;
using pickle_internal::kUnsafeNames;
using pickle_internal::LookupAllowed;
using pickle_internal::ModuleIn;

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

}  // namespace weightgate::checkpoint
