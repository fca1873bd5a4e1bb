// The restricted pickle machine behind Unpickle (pickle_reader.h): its
// stack, memo and value construction (pickle_reader.cc), and what calling a
// global means (pickle_rebuild.cc: torch rebuild functions, containers,
// opaque objects). Internal to server/checkpoint.
#ifndef WEIGHTGATE_SERVER_CHECKPOINT_PICKLE_MACHINE_H_
#define WEIGHTGATE_SERVER_CHECKPOINT_PICKLE_MACHINE_H_

#include <bitset>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/str_util.h"
#include "server/checkpoint/pickle_globals.h"
#include "server/checkpoint/pickle_literals.h"
#include "server/checkpoint/pickle_reader.h"
#include "server/checkpoint/read_budget.h"
#include "server/checkpoint/value.h"

namespace weightgate::checkpoint::pickle_internal {

using common::AbslView;
using common::Cat;
using common::StdView;

using Kind = Value::Kind;

// Recorded global names per list; beyond this the list is already damning.
constexpr size_t kMaxRecordedGlobals = 1024;
// Calls nested through _rebuild_from_type_v2.
constexpr int kMaxCallDepth = 8;

// What one arena node costs the budget: the Value and its share of the
// deque's blocks.
inline constexpr uint64_t kValueBytes = sizeof(Value) + 16;
// What one pointer in a container, the stack or the scratch copy costs.
inline constexpr uint64_t kItemBytes = sizeof(Value*);
// One memo entry (hash slot, control byte, growth slack).
inline constexpr uint64_t kMemoEntryBytes = 32;

inline absl::Status Invalid(std::string_view reason) {
  return absl::InvalidArgumentError(Cat("pickle: ", reason));
}

class Machine final {
 public:
  Machine(std::string_view data, const PickleContext& ctx)
      : data_(data),
        ctx_(ctx),
        own_budget_(ReadBudget::LimitFor(ctx.limits.budget_fixed_bytes,
                                         ctx.limits.budget_per_input_byte, data.size())),
        budget_(ctx.budget != nullptr ? ctx.budget : &own_budget_),
        base_limit_(budget_->limit()) {}

  absl::StatusOr<Value*> Run(size_t* consumed);

 private:
  absl::Status Truncated() const { return Invalid(Cat("truncated at offset ", off_)); }
  absl::Status Bad(std::string_view what) const {
    return Invalid(Cat(what, " at offset ", op_off_));
  }

  // Budget. Small allocations (a node, a string, a memo slot) are counted
  // with Note(), which never fails on the spot: Run checks the budget before
  // every opcode, and one opcode allocates little. Copies that grow with
  // the input (container items copied by a call, bytes copied by bytes())
  // are charged with Charge() before they happen.
  void Note(uint64_t bytes, std::string_view what) { budget_->Charge(bytes, what).IgnoreError(); }
  absl::Status Charge(uint64_t bytes, std::string_view what) {
    if (!budget_->Charge(bytes, what).ok()) return OverBudget();
    return absl::OkStatus();
  }
  absl::Status OverBudget() const {
    return absl::Status(
        budget_->status().code(),
        AbslView(Cat("pickle: ", StdView(budget_->status().message()), " at offset ", op_off_)));
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

  Value* New(Kind kind) {
    Note(kValueBytes, "values");
    return ctx_.arena->New(kind);
  }

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
    if (stack_.size() > stack_high_) {
      // The stack and the scratch copy PopMark may make of it.
      stack_high_ = stack_.size();
      Note(2 * kItemBytes, "the stack");
    }
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
    if (absl::Status s = Charge(kItemBytes, "container items"); !s.ok()) return s;
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
    Note(twos.size(), "strings");
    v->str.assign(twos);
    return v;
  }
  Value* MakeStr(Kind kind, std::string_view s) {
    Value* v = New(kind);
    Note(s.size(), "strings");
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
    if (memo_.insert_or_assign(index, v).second) Note(kMemoEntryBytes, "the memo");
    return absl::OkStatus();
  }
  absl::Status Recall(uint64_t index) {
    auto it = memo_.find(index);
    if (it == memo_.end()) return Bad(Cat("memo key ", index, " not set"));
    return Push(it->second);
  }

  absl::StatusOr<Value*> Global(std::string_view module, std::string_view name);
  void Record(std::vector<std::string>* list, const std::string& name);
  // Records `callee` in called_globals when calling it runs unknown code.
  void RecordCall(const Value* callee);
  absl::StatusOr<Value*> Call(Value* callee, Value* args, int call_depth);
  absl::StatusOr<Value*> Opaque(const Value* callee, Value* args);
  // Copies `src`'s items into `dst` (a call that copies a container),
  // charged to the budget first.
  absl::Status CopyItems(Value* dst, const Value* src, const Value* callee);
  absl::StatusOr<Value*> RebuildTensor(GlobalId id, const Value* args);
  absl::Status AddToDict(Value* dict, const std::vector<Value*>& kv);
  absl::Status AddToList(Value* list, const std::vector<Value*>& items);
  // Appends to a `kind` container (turning an empty opaque subclass instance
  // into one); `misuse` starts the error for any other target.
  absl::Status AddToContainer(Value* container, const std::vector<Value*>& items, Kind kind,
                              const char* misuse);

  std::string_view data_;
  const PickleContext& ctx_;
  ReadBudget own_budget_;  // used when the context brings none
  ReadBudget* budget_;
  uint64_t base_limit_;  // budget_'s limit when this pickle started
  size_t stack_high_ = 0;
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
  std::bitset<256> blocked_ops_;               // opcodes already in weights_only_blockers
};

}  // namespace weightgate::checkpoint::pickle_internal

#endif  // WEIGHTGATE_SERVER_CHECKPOINT_PICKLE_MACHINE_H_
