#include "server/checkpoint/pickle_reader.h"

#include <algorithm>
#include <cstring>
#include <optional>
#include <utility>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "absl/strings/numbers.h"
#include "absl/strings/string_view.h"
#include "common/str_util.h"
#include "server/checkpoint/pickle_machine.h"

namespace weightgate::checkpoint {
namespace pickle_internal {

using common::AbslView;
using common::Cat;
using common::StdView;

absl::StatusOr<Value*> Machine::ParseDecimalInt(std::string_view text, bool long_suffix) {
  std::string twos;
  if (!DecimalLiteral(text, long_suffix, &twos)) return Bad("bad integer literal");
  return MakeLong(twos);
}

absl::StatusOr<Value*> Machine::ParseRawUnicodeEscape(std::string_view text) {
  Value* v = New(Kind::kString);
  if (absl::Status s = DecodeRawUnicodeEscape(text, &v->str); !s.ok()) {
    return Bad(StdView(s.message()));
  }
  Note(v->str.size(), "strings");
  return v;
}

absl::StatusOr<Value*> Machine::ParsePy2String(std::string_view text) {
  Value* v = New(Kind::kString);
  if (absl::Status s = DecodePy2String(text, &v->str); !s.ok()) return Bad(StdView(s.message()));
  Note(v->str.size(), "strings");
  return v;
}

void Machine::Record(std::vector<std::string>* list, const std::string& name) {
  if (list == nullptr || list->size() >= kMaxRecordedGlobals) return;
  std::string key = Cat(reinterpret_cast<uintptr_t>(list), ":", name);
  if (!recorded_.insert(key).second) return;
  // The lists may already hold names from an earlier pickle (legacy format).
  if (std::find(list->begin(), list->end(), name) == list->end()) list->push_back(name);
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

// pickletools' name of an opcode, for messages.
std::string OpcodeName(unsigned char op) {
  switch (op) {
    case kMark: return "MARK";
    case kStop: return "STOP";
    case kPop: return "POP";
    case kPopMark: return "POP_MARK";
    case kDup: return "DUP";
    case kFloat: return "FLOAT";
    case kInt: return "INT";
    case kBinInt: return "BININT";
    case kBinInt1: return "BININT1";
    case kLong: return "LONG";
    case kBinInt2: return "BININT2";
    case kNone: return "NONE";
    case kPersId: return "PERSID";
    case kBinPersId: return "BINPERSID";
    case kReduce: return "REDUCE";
    case kString: return "STRING";
    case kBinString: return "BINSTRING";
    case kShortBinString: return "SHORT_BINSTRING";
    case kUnicode: return "UNICODE";
    case kBinUnicode: return "BINUNICODE";
    case kAppend: return "APPEND";
    case kBuild: return "BUILD";
    case kGlobalOp: return "GLOBAL";
    case kDict: return "DICT";
    case kEmptyDict: return "EMPTY_DICT";
    case kAppends: return "APPENDS";
    case kGet: return "GET";
    case kBinGet: return "BINGET";
    case kInst: return "INST";
    case kLongBinGet: return "LONG_BINGET";
    case kList: return "LIST";
    case kEmptyList: return "EMPTY_LIST";
    case kObj: return "OBJ";
    case kPut: return "PUT";
    case kBinPut: return "BINPUT";
    case kLongBinPut: return "LONG_BINPUT";
    case kSetItem: return "SETITEM";
    case kTuple: return "TUPLE";
    case kEmptyTuple: return "EMPTY_TUPLE";
    case kSetItems: return "SETITEMS";
    case kBinFloat: return "BINFLOAT";
    case kProto: return "PROTO";
    case kNewObj: return "NEWOBJ";
    case kExt1: return "EXT1";
    case kExt2: return "EXT2";
    case kExt4: return "EXT4";
    case kTuple1: return "TUPLE1";
    case kTuple2: return "TUPLE2";
    case kTuple3: return "TUPLE3";
    case kNewTrue: return "NEWTRUE";
    case kNewFalse: return "NEWFALSE";
    case kLong1: return "LONG1";
    case kLong4: return "LONG4";
    case kBinBytes: return "BINBYTES";
    case kShortBinBytes: return "SHORT_BINBYTES";
    case kShortBinUnicode: return "SHORT_BINUNICODE";
    case kBinUnicode8: return "BINUNICODE8";
    case kBinBytes8: return "BINBYTES8";
    case kEmptySet: return "EMPTY_SET";
    case kAddItems: return "ADDITEMS";
    case kFrozenSetOp: return "FROZENSET";
    case kNewObjEx: return "NEWOBJ_EX";
    case kStackGlobal: return "STACK_GLOBAL";
    case kMemoize: return "MEMOIZE";
    case kFrame: return "FRAME";
    case kByteArray8: return "BYTEARRAY8";
    case kNextBuffer: return "NEXT_BUFFER";
    case kReadonlyBuffer: return "READONLY_BUFFER";
    default: return Cat("byte ", static_cast<int>(op));
  }
}

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
    if (ctx_.budget_per_consumed_byte > 0) {
      budget_->RaiseTo(ReadBudget::LimitFor(base_limit_, ctx_.budget_per_consumed_byte, off_));
    }
    if (budget_->exhausted()) return OverBudget();
    const unsigned char op = static_cast<unsigned char>(data_[off_++]);
    if (!TorchWeightsOnlySupportsOpcode(op) && !blocked_ops_[op]) {
      blocked_ops_[op] = true;
      Record(ctx_.weights_only_blockers, Cat("opcode ", OpcodeName(op)));
    }
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
        Value* top = nullptr;
        WG_RETURN_IF_ERROR(Pop(&top));
        if (consumed != nullptr) *consumed = off_;
        return top;
      }
      case kMark:
        if (stack_.size() + marks_.size() >= ctx_.limits.max_stack_depth) {
          return Bad(Cat("stack deeper than ", ctx_.limits.max_stack_depth));
        }
        marks_.push_back(stack_.size());
        if (stack_.size() + marks_.size() > stack_high_) {
          stack_high_ = stack_.size() + marks_.size();
          Note(2 * kItemBytes, "the stack");
        }
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
        Value* top = nullptr;
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
        Value* v = nullptr;
        WG_ASSIGN_OR_RETURN(v, ParseDecimalInt(line, /*long_suffix=*/false));
        WG_RETURN_IF_ERROR(Push(v));
        break;
      }
      case kLong: {
        std::string_view line;
        WG_RETURN_IF_ERROR(TakeLine(&line));
        Value* v = nullptr;
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
        Value* v = nullptr;
        WG_ASSIGN_OR_RETURN(v, ParseRawUnicodeEscape(line));
        WG_RETURN_IF_ERROR(Push(v));
        break;
      }
      case kString: {
        std::string_view line;
        WG_RETURN_IF_ERROR(TakeLine(&line));
        Value* v = nullptr;
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
        Value* v = nullptr;
        WG_ASSIGN_OR_RETURN(v, MakeSeq(Kind::kTuple, items));
        WG_RETURN_IF_ERROR(Push(v));
        break;
      }
      case kTuple:
      case kList:
      case kFrozenSetOp: {
        WG_RETURN_IF_ERROR(PopMark(&items));
        Kind kind = op == kTuple ? Kind::kTuple : op == kList ? Kind::kList : Kind::kFrozenSet;
        Value* v = nullptr;
        WG_ASSIGN_OR_RETURN(v, MakeSeq(kind, items));
        WG_RETURN_IF_ERROR(Push(v));
        break;
      }
      case kDict: {
        WG_RETURN_IF_ERROR(PopMark(&items));
        if (items.size() % 2 != 0) return Bad("odd number of dict items");
        Value* v = nullptr;
        WG_ASSIGN_OR_RETURN(v, MakeSeq(Kind::kDict, items));
        WG_RETURN_IF_ERROR(Push(v));
        break;
      }
      case kEmptyList: WG_RETURN_IF_ERROR(Push(New(Kind::kList))); break;
      case kEmptyDict: WG_RETURN_IF_ERROR(Push(New(Kind::kDict))); break;
      case kEmptySet: WG_RETURN_IF_ERROR(Push(New(Kind::kSet))); break;
      case kAppend: {
        Value* v = nullptr;
        Value* list = nullptr;
        WG_RETURN_IF_ERROR(Pop(&v));
        WG_RETURN_IF_ERROR(Top(&list));
        items.assign(1, v);
        WG_RETURN_IF_ERROR(AddToList(list, items));
        break;
      }
      case kAppends: {
        WG_RETURN_IF_ERROR(PopMark(&items));
        Value* list = nullptr;
        WG_RETURN_IF_ERROR(Top(&list));
        WG_RETURN_IF_ERROR(AddToList(list, items));
        break;
      }
      case kSetItem: {
        Value* k = nullptr;
        Value* v = nullptr;
        Value* dict = nullptr;
        WG_RETURN_IF_ERROR(Pop(&v));
        WG_RETURN_IF_ERROR(Pop(&k));
        WG_RETURN_IF_ERROR(Top(&dict));
        items.assign({k, v});
        WG_RETURN_IF_ERROR(AddToDict(dict, items));
        break;
      }
      case kSetItems: {
        WG_RETURN_IF_ERROR(PopMark(&items));
        Value* dict = nullptr;
        WG_RETURN_IF_ERROR(Top(&dict));
        WG_RETURN_IF_ERROR(AddToDict(dict, items));
        break;
      }
      case kAddItems: {
        WG_RETURN_IF_ERROR(PopMark(&items));
        Value* set = nullptr;
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
        Value* top = nullptr;
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
        Value* top = nullptr;
        WG_RETURN_IF_ERROR(Top(&top));
        WG_RETURN_IF_ERROR(Memoize(idx, top));
        break;
      }
      case kMemoize: {
        Value* top = nullptr;
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
        Value* v = nullptr;
        WG_ASSIGN_OR_RETURN(v, Global(module, name));
        WG_RETURN_IF_ERROR(Push(v));
        break;
      }
      case kStackGlobal: {
        Value* name = nullptr;
        Value* module = nullptr;
        WG_RETURN_IF_ERROR(Pop(&name));
        WG_RETURN_IF_ERROR(Pop(&module));
        if (module->kind != Kind::kString || name->kind != Kind::kString) {
          return Bad("STACK_GLOBAL of a non-string");
        }
        Value* v = nullptr;
        WG_ASSIGN_OR_RETURN(v, Global(module->str, name->str));
        WG_RETURN_IF_ERROR(Push(v));
        break;
      }
      case kReduce:
      case kNewObj: {
        Value* args = nullptr;
        Value* callee = nullptr;
        WG_RETURN_IF_ERROR(Pop(&args));
        WG_RETURN_IF_ERROR(Pop(&callee));
        Value* v = nullptr;
        WG_ASSIGN_OR_RETURN(v, Call(callee, args, 0));
        WG_RETURN_IF_ERROR(Push(v));
        break;
      }
      case kNewObjEx: {
        Value* kwargs = nullptr;
        Value* args = nullptr;
        Value* cls = nullptr;
        WG_RETURN_IF_ERROR(Pop(&kwargs));
        WG_RETURN_IF_ERROR(Pop(&args));
        WG_RETURN_IF_ERROR(Pop(&cls));
        if (args->kind != Kind::kTuple) return Bad("NEWOBJ_EX arguments are not a tuple");
        RecordCall(cls);
        Value* v = nullptr;
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
        Value* args = nullptr;
        WG_ASSIGN_OR_RETURN(args, MakeSeq(Kind::kTuple, items));
        Value* v = nullptr;
        WG_ASSIGN_OR_RETURN(v, Call(cls, args, 0));
        WG_RETURN_IF_ERROR(Push(v));
        break;
      }
      case kInst: {
        std::string_view module, name;
        WG_RETURN_IF_ERROR(TakeLine(&module));
        WG_RETURN_IF_ERROR(TakeLine(&name));
        Value* cls = nullptr;
        WG_ASSIGN_OR_RETURN(cls, Global(module, name));
        WG_RETURN_IF_ERROR(PopMark(&items));
        Value* args = nullptr;
        WG_ASSIGN_OR_RETURN(args, MakeSeq(Kind::kTuple, items));
        Value* v = nullptr;
        WG_ASSIGN_OR_RETURN(v, Call(cls, args, 0));
        WG_RETURN_IF_ERROR(Push(v));
        break;
      }
      case kBuild: {
        Value* state = nullptr;
        Value* inst = nullptr;
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
        Value* pid = nullptr;
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
        Note(kValueBytes, "values");
        WG_RETURN_IF_ERROR(Push(*v));
        break;
      }
      default: return Bad(Cat("unknown opcode ", static_cast<int>(op)));
    }
  }
}

#undef WG_ASSIGN_OR_RETURN
#undef WG_RETURN_IF_ERROR

}  // namespace pickle_internal

using pickle_internal::Machine;

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