// Unpickle runs a restricted pickle machine (protocols 0 to 5) over untrusted
// bytes and builds a Value tree. Nothing is imported, constructed or called:
// globals are looked up in a fixed allow-list table (tensor and parameter
// rebuild functions, storage classes, dtypes, OrderedDict, torch.Size, plain
// builtins). Any other global becomes a kGlobal placeholder and REDUCE /
// NEWOBJ / BUILD on it give kOpaque values that keep their arguments and
// state; known-dangerous globals (os.system, builtins.eval, ...) are recorded
// as unsafe and parsing continues, since nothing executes anyway.
// builtins.getattr is judged by use: getattr(UnknownClass, "PUBLIC_NAME") is
// how Python >= 3.11 pickles enum members and reads as an opaque value;
// any other getattr, or calling what it returned, is recorded as unsafe.
// Python 2 module names (__builtin__, copy_reg, commands, ...) are mapped to
// their Python 3 names first, as the CPython unpickler does. A global name
// that is an attribute path (torch + "os.system") is unsafe unless it is a
// path of class names (a nested class). Every other global the pickle calls
// is reported as called (PickleContext::called_globals) unless it only
// builds plain data (numpy scalars, datetime, pathlib, argparse.Namespace).
// The tables are in pickle_globals.cc.
//
// Every length, memo index, stack and mark depth, nesting depth and value
// count is checked against the caps before use, and every byte the machine
// allocates (nodes, container items, items a call copies, strings, memo,
// stack) is counted against a ReadBudget proportional to the input. Errors
// are InvalidArgument with a short reason starting with "pickle: "; a limit
// reached is ResourceExhausted ("pickle: resource limit read_budget: ...").
#ifndef WEIGHTGATE_SERVER_CHECKPOINT_PICKLE_READER_H_
#define WEIGHTGATE_SERVER_CHECKPOINT_PICKLE_READER_H_

#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "server/checkpoint/read_budget.h"
#include "server/checkpoint/value.h"

namespace weightgate::checkpoint {

// Caps for one pickle; ReadOptions carries the same numbers for whole files.
struct PickleLimits {
  uint32_t max_stack_depth = 1 << 20;       // stack entries plus open MARKs
  uint32_t max_nesting = 256;               // container nesting of the built values
  uint64_t max_memo_entries = 1 << 24;      // also bounds memo indices
  uint64_t max_values = uint64_t{1} << 24;  // arena nodes (counted over the whole arena)
  uint32_t max_tensor_dims = 64;
  // Budget when the context brings none: fixed + per byte x pickle bytes.
  uint64_t budget_fixed_bytes = uint64_t{64} << 20;
  uint32_t budget_per_input_byte = 256;
};

// How the allow-list classifies a global "module.name".
enum class GlobalClass {
  kAllowed,  // in the table: handled by the machine without calling anything
  kOpaque,   // unknown: kept as a placeholder and reported
  kUnsafe,   // known-dangerous: reported as unsafe (still never called)
};
GlobalClass ClassifyGlobal(std::string_view module, std::string_view name);

struct PickleContext {
  ValueArena* arena = nullptr;  // REQUIRED
  PickleLimits limits;

  // Counts what the machine allocates; shared by the pickles of one file.
  // Null: the machine budgets itself from `limits` and the pickle's size.
  ReadBudget* budget = nullptr;
  // When set, `budget`'s limit grows by this many bytes per pickle byte
  // consumed (for inputs whose pickle size is not known up front).
  uint32_t budget_per_consumed_byte = 0;

  // Storages created by `persistent_load`; tensor rebuilds check their
  // extent against `nbytes` of the record they name. May be null when the
  // pickle holds no tensors.
  const std::vector<StorageRecord>* storages = nullptr;

  // Receive deduplicated names (at most 1024 each); may be null.
  std::vector<std::string>* opaque_globals = nullptr;
  std::vector<std::string>* unsafe_globals = nullptr;
  // Globals the pickle calls (REDUCE, NEWOBJ, OBJ, INST, _reconstructor)
  // that are neither in the allow-list nor data-only callables: what plain
  // torch.load would execute. Calling an object returned by a call is
  // recorded as "NAME()".
  std::vector<std::string>* called_globals = nullptr;
  // What stops torch 1.13's torch.load(weights_only=True): globals outside
  // its allow-list ("module.name" as written) and "opcode NAME" for opcodes
  // it does not implement.
  std::vector<std::string>* weights_only_blockers = nullptr;

  // Resolves PERSID / BINPERSID ids (the torch formats return a kStorage
  // Value). Unset: persistent ids are an error.
  std::function<absl::StatusOr<Value*>(const Value& pid)> persistent_load;
};

// Runs the machine over `bytes` until STOP and returns the top of the stack.
// `consumed` (optional) receives the offset just past STOP, so that several
// pickles written back to back (the legacy torch format) can be read in turn.
absl::StatusOr<Value*> Unpickle(std::string_view bytes, const PickleContext& ctx,
                                size_t* consumed = nullptr);

// For persistent_load callbacks and format readers: stores the value of a
// kInt (or kBool, as 0/1) in *out; false for anything else.
bool ValueToInt(const Value* v, int64_t* out);

}  // namespace weightgate::checkpoint

#endif  // WEIGHTGATE_SERVER_CHECKPOINT_PICKLE_READER_H_
