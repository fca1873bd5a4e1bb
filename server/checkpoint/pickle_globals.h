// The global tables of the restricted pickle machine: what a security review
// of the reader audits. A global "module.name" is never imported; it is
// looked up here and is either
//  - allowed: an entry the machine implements itself (tensor and parameter
//    rebuilds, storage classes, dtypes, OrderedDict, torch.Size, a few
//    builtins), see GlobalId;
//  - unsafe: a module or attribute that can run code or touch the system
//    under a real unpickler (kUnsafeModules, kUnsafeNames);
//  - opaque: anything else, kept as a placeholder and reported.
// Python 2 module names are mapped to their Python 3 names first, as the
// CPython unpickler does.
#ifndef WEIGHTGATE_SERVER_CHECKPOINT_PICKLE_GLOBALS_H_
#define WEIGHTGATE_SERVER_CHECKPOINT_PICKLE_GLOBALS_H_

#include <cstdint>
#include <string_view>

namespace weightgate::checkpoint::pickle_internal {

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

// The allow-list entry for "module.name" (after CanonicalModule), or
// kNotAllowed. Storage classes and dtypes are recognised by the caller.
GlobalId LookupAllowed(std::string_view module, std::string_view name);

// The Python 3 name of a Python 2 module ("__builtin__" -> "builtins").
std::string_view CanonicalModule(std::string_view module);

// "torch" or "torch.cuda": the modules storage classes live in.
bool IsStorageModule(std::string_view module);

// True for names made only of class names ("Outer.Inner"): a nested class,
// not an attribute path through modules or functions.
bool IsNestedClassPath(std::string_view name);

// Callables that only build plain values when a real unpickler calls them
// (numpy scalars, dtypes and _reconstruct, datetime, pathlib paths,
// collections types, enums, argparse.Namespace, builtins types,
// torch.device): a call of one is not reported as "calls NAME".
bool IsDataOnlyCallable(std::string_view module, std::string_view name);

// torch 1.13's torch.load(weights_only=True): the globals its unpickler
// allows ("module.name" exactly as the GLOBAL opcode writes it) and the
// opcodes it implements. Anything else makes that load fail.
bool TorchWeightsOnlyAllows(std::string_view module, std::string_view name);
bool TorchWeightsOnlySupportsOpcode(unsigned char op);

}  // namespace weightgate::checkpoint::pickle_internal

#endif  // WEIGHTGATE_SERVER_CHECKPOINT_PICKLE_GLOBALS_H_
