#include "server/checkpoint/pickle_globals.h"

#include <cstring>
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

// Whole modules whose every attribute is dangerous (submodules included):
// they run code, load code, or touch files, processes or the network. The
// list follows the public history of pickle-scanner bypasses (picklescan,
// fickling, modelscan advisories): code runners (timeit, cProfile, pdb,
// trace, doctest, idlelib ...), package installers (pip, ensurepip, venv,
// setuptools), loaders of other pickles or archives, and torch's own code
// paths that compile or exec (torch.fx, torch._inductor, cpp_extension).
// clang-format off
constexpr std::string_view kUnsafeModules[] = {
    "os",        "posix",      "nt",      "subprocess", "sys",       "runpy",
    "importlib", "pickle",     "_pickle", "cPickle",    "marshal",   "socket",
    "shutil",    "code",       "codeop",  "ctypes",     "pty",       "webbrowser",
    "commands",  "multiprocessing", "_posixsubprocess", "posixpath", "ntpath",
    "asyncio",   "signal",     "_thread", "threading",  "types",     "imp",
    "zipimport", "dill",       "cloudpickle", "timeit",  "cProfile",  "profile",
    "pstats",    "pdb",        "bdb",     "trace",      "doctest",   "idlelib",
    "pydoc",     "lib2to3",    "site",    "pip",        "ensurepip", "venv",
    "distutils", "setuptools", "pkg_resources", "functools", "_functools",
    "tempfile",  "glob",       "fileinput", "zipfile",  "tarfile",   "shelve",
    "dbm",       "sqlite3",    "_sqlite3", "mmap",      "urllib",    "http",
    "ftplib",    "smtplib",    "telnetlib", "xmlrpc",   "socketserver", "ssl",
    "requests",  "aiohttp",    "tkinter", "_tkinter",   "turtle",    "concurrent",
    "_ctypes",   "cffi",       "joblib",  "yaml",       "logging.config",
    "torch.fx",  "torch._inductor", "torch._dynamo", "torch.utils.cpp_extension",
    "torch.utils.collect_env", "torch.package", "torch.hub", "torch.distributed.rpc",
    "numpy.f2py", "numpy.distutils", "numpy.testing", "numpy.ctypeslib", "pandas.io.pickle",
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
    {"_operator", "attrgetter"}, {"_operator", "methodcaller"}, {"builtins", "exit"},
    {"builtins", "quit"},       {"torch.jit", "load"},      {"pandas", "read_pickle"},
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

// Callables that build plain values when torch.load calls them: calling them
// is not reported as "calls NAME". Module, then names ("*" = any).
// clang-format off
constexpr std::pair<std::string_view, std::string_view> kDataOnlyCallables[] = {
    {"numpy", "dtype"},                       {"numpy", "ndarray"},
    {"numpy.core.multiarray", "scalar"},      {"numpy.core.multiarray", "_reconstruct"},
    {"numpy._core.multiarray", "scalar"},     {"numpy._core.multiarray", "_reconstruct"},
    {"numpy.dtypes", "*"},
    {"datetime", "datetime"},  {"datetime", "date"},     {"datetime", "time"},
    {"datetime", "timedelta"}, {"datetime", "timezone"},
    {"pathlib", "Path"},       {"pathlib", "PosixPath"}, {"pathlib", "WindowsPath"},
    {"pathlib", "PurePath"},   {"pathlib", "PurePosixPath"}, {"pathlib", "PureWindowsPath"},
    {"collections", "OrderedDict"}, {"collections", "defaultdict"}, {"collections", "deque"},
    {"collections", "Counter"},     {"collections", "ChainMap"},
    {"argparse", "Namespace"}, {"uuid", "UUID"},      {"decimal", "Decimal"},
    {"fractions", "Fraction"}, {"enum", "*"},
    {"builtins", "int"},   {"builtins", "float"}, {"builtins", "str"},   {"builtins", "bool"},
    {"builtins", "list"},  {"builtins", "dict"},  {"builtins", "tuple"}, {"builtins", "range"},
    {"builtins", "set"},   {"builtins", "frozenset"}, {"builtins", "bytes"},
    {"builtins", "bytearray"}, {"builtins", "complex"}, {"builtins", "slice"},
    {"builtins", "object"},
    {"torch", "device"},   {"torch", "Size"},     {"torch.serialization", "_get_layout"},
};
// clang-format on

// torch 1.13's torch.load(weights_only=True) allow-list
// (torch/_weights_only_unpickler.py, _get_allowed_globals), as "module.name".
// clang-format off
constexpr std::string_view kTorchWeightsOnlyGlobals[] = {
    "collections.OrderedDict",
    "torch.BFloat16Storage",
    "torch.BFloat16Tensor",
    "torch.BoolStorage",
    "torch.BoolTensor",
    "torch.ByteStorage",
    "torch.ByteTensor",
    "torch.CharStorage",
    "torch.CharTensor",
    "torch.ComplexDoubleStorage",
    "torch.ComplexFloatStorage",
    "torch.DoubleStorage",
    "torch.DoubleTensor",
    "torch.FloatStorage",
    "torch.FloatTensor",
    "torch.HalfStorage",
    "torch.HalfTensor",
    "torch.IntStorage",
    "torch.IntTensor",
    "torch.LongStorage",
    "torch.LongTensor",
    "torch.QInt32Storage",
    "torch.QInt8Storage",
    "torch.QUInt2x4Storage",
    "torch.QUInt4x2Storage",
    "torch.QUInt8Storage",
    "torch.ShortStorage",
    "torch.ShortTensor",
    "torch.Size",
    "torch.Tensor",
    "torch._utils._rebuild_meta_tensor_no_storage",
    "torch._utils._rebuild_parameter",
    "torch._utils._rebuild_sparse_csr_tensor",
    "torch._utils._rebuild_sparse_tensor",
    "torch._utils._rebuild_tensor",
    "torch._utils._rebuild_tensor_v2",
    "torch.complex128",
    "torch.complex32",
    "torch.complex64",
    "torch.cuda.BFloat16Storage",
    "torch.cuda.BFloat16Tensor",
    "torch.cuda.BoolStorage",
    "torch.cuda.BoolTensor",
    "torch.cuda.ByteStorage",
    "torch.cuda.ByteTensor",
    "torch.cuda.CharStorage",
    "torch.cuda.CharTensor",
    "torch.cuda.ComplexDoubleStorage",
    "torch.cuda.ComplexFloatStorage",
    "torch.cuda.DoubleStorage",
    "torch.cuda.DoubleTensor",
    "torch.cuda.FloatStorage",
    "torch.cuda.FloatTensor",
    "torch.cuda.HalfStorage",
    "torch.cuda.HalfTensor",
    "torch.cuda.IntStorage",
    "torch.cuda.IntTensor",
    "torch.cuda.LongStorage",
    "torch.cuda.LongTensor",
    "torch.cuda.ShortStorage",
    "torch.cuda.ShortTensor",
    "torch.cuda.sparse.BFloat16Tensor",
    "torch.cuda.sparse.ByteTensor",
    "torch.cuda.sparse.CharTensor",
    "torch.cuda.sparse.DoubleTensor",
    "torch.cuda.sparse.FloatTensor",
    "torch.cuda.sparse.HalfTensor",
    "torch.cuda.sparse.IntTensor",
    "torch.cuda.sparse.LongTensor",
    "torch.cuda.sparse.ShortTensor",
    "torch.float16",
    "torch.float32",
    "torch.float64",
    "torch.int16",
    "torch.int32",
    "torch.int64",
    "torch.int8",
    "torch.nn.parameter.Parameter",
    "torch.serialization._get_layout",
    "torch.sparse.BFloat16Tensor",
    "torch.sparse.ByteTensor",
    "torch.sparse.CharTensor",
    "torch.sparse.DoubleTensor",
    "torch.sparse.FloatTensor",
    "torch.sparse.HalfTensor",
    "torch.sparse.IntTensor",
    "torch.sparse.LongTensor",
    "torch.sparse.ShortTensor",
    "torch.storage.TypedStorage",
    "torch.storage.UntypedStorage",
};
// clang-format on

// The opcodes torch 1.13's weights-only unpickler implements.
constexpr std::string_view kTorchWeightsOnlyOpcodes =
    "abehJKMQqX})]c\x8a"
    "jr(\x89\x81\x88NR"
    "su"
    "U.t\x85\x86\x87\x80\x8f";

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

bool IsDataOnlyCallable(std::string_view raw_module, std::string_view name) {
  std::string_view module = CanonicalModule(raw_module);
  for (const auto& [m, n] : kDataOnlyCallables) {
    if (m == module && (n == name || (n == "*" && IsNestedClassPath(name)))) return true;
  }
  return false;
}

bool IsNestedClassPath(std::string_view name) {
  if (name.empty()) return false;
  size_t start = 0;
  while (true) {
    size_t dot = name.find('.', start);
    std::string_view part = name.substr(start, dot == std::string_view::npos ? dot : dot - start);
    if (part.empty() || part[0] < 'A' || part[0] > 'Z') return false;
    if (part.find("__") != std::string_view::npos) return false;
    if (dot == std::string_view::npos) return true;
    start = dot + 1;
  }
}

bool TorchWeightsOnlyAllows(std::string_view module, std::string_view name) {
  if (module.size() + 1 + name.size() > 64) return false;
  char buf[64];
  std::memcpy(buf, module.data(), module.size());
  buf[module.size()] = '.';
  std::memcpy(buf + module.size() + 1, name.data(), name.size());
  std::string_view full(buf, module.size() + 1 + name.size());
  for (std::string_view g : kTorchWeightsOnlyGlobals) {
    if (g == full) return true;
  }
  return false;
}

bool TorchWeightsOnlySupportsOpcode(unsigned char op) {
  return kTorchWeightsOnlyOpcodes.find(static_cast<char>(op)) != std::string_view::npos;
}

}  // namespace pickle_internal

using pickle_internal::CanonicalModule;
using pickle_internal::IsNestedClassPath;
using pickle_internal::IsStorageModule;
using pickle_internal::kNotAllowed;
using pickle_internal::kUnsafeModules;
using pickle_internal::kUnsafeNames;
using pickle_internal::LookupAllowed;
using pickle_internal::ModuleIn;

GlobalClass ClassifyGlobal(std::string_view raw_module, std::string_view name) {
  std::string_view module = CanonicalModule(raw_module);
  // An attribute path (protocol 4 resolves "a.b.c" by getattr, step by step)
  // reaches whatever a module imported: torch + "os.system" is os.system.
  // Only a path of class names (Outer.Inner, nested classes) is a class.
  if (name.find('.') != std::string_view::npos && !IsNestedClassPath(name)) {
    return GlobalClass::kUnsafe;
  }
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
