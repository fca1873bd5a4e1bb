// Value is one node of the plain description a checkpoint parses into: the
// Python object graph of a pickle, with every object the reader does not
// know kept as an opaque record instead of being constructed or called.
// Tensor leaves are TensorRecords: metadata plus the position of their
// bytes in the file, never the bytes themselves.
//
// Values live in a ValueArena owned by the Checkpoint; pointers stay valid as
// long as the arena does. The graph may share nodes (pickle memo) and may
// even contain cycles; walkers must bound their depth.
#ifndef WEIGHTGATE_SERVER_CHECKPOINT_VALUE_H_
#define WEIGHTGATE_SERVER_CHECKPOINT_VALUE_H_

#include <cstdint>
#include <deque>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "server/checkpoint/dtype.h"
#include "server/checkpoint/read_budget.h"

namespace weightgate::checkpoint {

// Where a storage's bytes are: a byte range of the mapped file, or (for a
// deflated zip entry) bytes inflated into memory owned by the Checkpoint.
struct StorageRecord {
  DType dtype = DType::kF32;
  std::string key;           // torch.save storage key ("0", "1", ...) or safetensors name
  uint64_t file_offset = 0;  // offset of the first byte in the file
  uint64_t nbytes = 0;       // bytes present for this storage
  int inflated_index = -1;   // >= 0: index into Checkpoint::inflated instead of the file
  int file_index = 0;        // file sets: 0 = Checkpoint::file, k > 0 = more_files[k - 1]
};

// One tensor as torch would rebuild it: a strided view of a storage.
struct TensorRecord {
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
  std::vector<int64_t> strides;  // in elements
  int64_t storage_offset = 0;    // in elements
  int storage_index = -1;        // into Checkpoint::storages; -1 = schema only (JSON spec)
  bool requires_grad = false;
  bool is_parameter = false;  // rebuilt through torch._utils._rebuild_parameter

  int64_t numel() const;
  bool is_contiguous() const;  // row-major contiguous (torch's definition)
  uint64_t nbytes() const;     // numel * item size (checked at parse time)
};

struct Value {
  enum class Kind {
    kNone,
    kBool,
    kInt,     // fits int64: `i`
    kBigInt,  // does not: `str` holds the two's-complement little-endian bytes
    kFloat,
    kString,     // `str` (UTF-8)
    kBytes,      // `str` (raw)
    kTuple,      // `items`
    kList,       // `items`
    kDict,       // `items` as key, value, key, value ... (insertion order); `str` is
                 // empty, or the global of a dict subclass (OrderedDict, AttributeDict);
                 // `state` = BUILD state (OrderedDict `_metadata`)
    kSet,        // `items`
    kFrozenSet,  // `items`
    kTensor,     // `tensor`
    kStorage,    // `storage_index`; a bare storage (e.g. untyped storage in a list)
    kGlobal,     // `str` = "module.qualname"; a class or function reference, never
                 // resolved; `i` = the reader's allow-list entry (internal)
    kOpaque,     // instance of an unknown global: `str` = its global; `items` =
                 // constructor args (REDUCE/NEWOBJ); `state` = BUILD state. An
                 // enum member (getattr(EnumClass, "NAME")) has `str` =
                 // "module.EnumClass.NAME" and no items.
    kDtype,      // torch dtype object: `dtype`
  };

  Kind kind = Kind::kNone;
  bool b = false;
  int64_t i = 0;
  double f = 0;
  std::string str;
  std::vector<const Value*> items;
  const Value* state = nullptr;
  TensorRecord tensor;
  int storage_index = -1;
  DType dtype = DType::kF32;
  uint32_t depth = 0;  // container nesting below this node, as built (cycles aside)

  bool is_string() const { return kind == Kind::kString; }
  // For kDict: the value under string key `key`, or nullptr.
  const Value* Get(std::string_view key) const;
};

// Owns Values; stable addresses.
class ValueArena final {
 public:
  Value* New(Value::Kind kind) {
    Value& v = values_.emplace_back();
    v.kind = kind;
    return &v;
  }
  size_t size() const { return values_.size(); }

  // Calls f(const Value&) for every value, in creation order.
  template <typename F>
  void ForEach(F&& f) const {
    for (const Value& v : values_) f(v);
  }

 private:
  std::deque<Value> values_;
};

// A tensor found by walking a value tree, named by its path of dict keys
// joined with '.' (list/tuple elements by index; opaque objects through their
// BUILD state, so a TorchScript module's attributes read like a state_dict).
struct NamedTensor {
  std::string name;
  const TensorRecord* tensor = nullptr;
};

// Every tensor under `root`, in insertion order, with its dotted name relative
// to `root`. Visits each node at most once per path and stops at `max_depth`,
// after 4M node visits or 256 MiB of names (a tree that passed
// CheckTensorNames never gets there).
std::vector<NamedTensor> FlattenTensors(const Value* root, int max_depth = 64);

// Bounds on what FlattenTensors(root) would build. A pickle can share one
// sub-dict under many keys at every level, so that a small file unfolds into
// exponentially many names.
struct FlattenLimits {
  uint32_t max_key_bytes = 4096;            // one tensor name
  uint64_t max_names = uint64_t{1} << 22;   // tensor names, one per path
  uint64_t max_visits = uint64_t{1} << 22;  // node visits of the walk
  int max_depth = 64;                       // as FlattenTensors' default
  // Budget bytes charged per name byte: consumers (inspect, the matcher)
  // each build the names again, some of them more than once.
  uint32_t name_cost_factor = 4;
};

// Walks `root` as FlattenTensors(root) does without building any name and
// fails with a resource limit error (read_budget.h) naming the limit when a
// tensor name would be longer than max_key_bytes, there would be more than
// max_names names or the walk would take more than max_visits visits; the
// names' bytes are charged to `budget` (may be null).
absl::Status CheckTensorNames(const Value* root, const FlattenLimits& limits, ReadBudget* budget);

// A short Python-like rendering of `v` for messages and tests ("{'a': 1}",
// "<tensor F32[2, 3]>", "<opaque argparse.Namespace>"), bounded in depth and
// length.
std::string DebugString(const Value* v, int max_depth = 8);

// "bool", "int", "dict", ... for messages.
std::string_view KindName(Value::Kind kind);

}  // namespace weightgate::checkpoint

#endif  // WEIGHTGATE_SERVER_CHECKPOINT_VALUE_H_
