#include "server/checkpoint/pickle_reader.h"

#include <algorithm>
#include <cstring>
#include <string>

#include "gtest/gtest.h"
#include "tests/checkpoint/checkpoint_test_util.h"

namespace weightgate::checkpoint {
namespace {

using Kind = Value::Kind;
using namespace std::string_literals;
using testing::FixtureDir;
using testing::ReadFileBytes;

std::string Hex(std::string_view s) {
  static const char* kHex = "0123456789abcdef";
  std::string out;
  for (unsigned char c : s) {
    out.push_back(kHex[c >> 4]);
    out.push_back(kHex[c & 15]);
  }
  return out;
}

// The generator's canon(): one string per value, equal iff the values are.
std::string Canon(const Value* v) {
  std::string out;
  auto join = [&](size_t from, size_t step, const char* open, const char* close) {
    out = open;
    for (size_t k = from; k < v->items.size(); k += step) {
      if (k > from) out += ",";
      out += Canon(v->items[k]);
      if (step == 2) {
        out += ":";
        out += Canon(v->items[k + 1]);
      }
    }
    out += close;
    return out;
  };
  switch (v->kind) {
    case Kind::kNone: return "N";
    case Kind::kBool: return v->b ? "T" : "F";
    case Kind::kInt: return std::string("i") + std::to_string(v->i);
    case Kind::kBigInt: return std::string("L") + Hex(v->str);
    case Kind::kFloat: {
      int64_t bits;
      std::memcpy(&bits, &v->f, sizeof(bits));
      return std::string("f") + std::to_string(bits);
    }
    case Kind::kString: return std::string("s") + Hex(v->str);
    case Kind::kBytes: return std::string("b") + Hex(v->str);
    case Kind::kTuple: return join(0, 1, "(", ")");
    case Kind::kList: return join(0, 1, "[", "]");
    case Kind::kDict: return join(0, 2, "{", "}");
    case Kind::kSet:
    case Kind::kFrozenSet: {
      std::vector<std::string> parts;
      for (const Value* item : v->items) parts.push_back(Canon(item));
      std::sort(parts.begin(), parts.end());
      out = v->kind == Kind::kSet ? "<" : "|<";
      for (size_t k = 0; k < parts.size(); ++k) {
        if (k > 0) out += ",";
        out += parts[k];
      }
      return out + ">";
    }
    default: return std::string("?") + std::string(KindName(v->kind));
  }
}

struct Parsed {
  ValueArena arena;
  std::vector<std::string> opaque, unsafe;
  std::vector<StorageRecord> storages;
  absl::StatusOr<Value*> root = absl::UnknownError("unset");
};

std::unique_ptr<Parsed> Parse(std::string_view bytes, PickleLimits limits = {}) {
  auto p = std::make_unique<Parsed>();
  PickleContext ctx;
  ctx.arena = &p->arena;
  ctx.limits = limits;
  ctx.opaque_globals = &p->opaque;
  ctx.unsafe_globals = &p->unsafe;
  ctx.storages = &p->storages;
  p->root = Unpickle(bytes, ctx);
  return p;
}

std::string Message(const absl::Status& s) { return std::string(s.message()); }

class PlainData : public ::testing::TestWithParam<int> {};

TEST_P(PlainData, DecodesLikePickleLoads) {
  const std::string base = FixtureDir() + "/data_p" + std::to_string(GetParam());
  std::string bytes = ReadFileBytes(base + ".pkl");
  std::string expected = ReadFileBytes(base + ".expected");
  ASSERT_FALSE(bytes.empty());
  ASSERT_FALSE(expected.empty());
  auto p = Parse(bytes);
  ASSERT_TRUE(p->root.ok()) << p->root.status();
  EXPECT_EQ(Canon(*p->root), expected);
  EXPECT_TRUE(p->opaque.empty()) << p->opaque.front();
  EXPECT_TRUE(p->unsafe.empty());
  // Memo sharing survives: both elements are the same node.
  const Value* shared = (*p->root)->Get("shared");
  ASSERT_NE(shared, nullptr);
  ASSERT_EQ(shared->items.size(), 2u);
  EXPECT_EQ(shared->items[0], shared->items[1]);
}

INSTANTIATE_TEST_SUITE_P(Protocols, PlainData, ::testing::Range(0, 6));

TEST(PickleReader, SelfReferencingListIsACycleNotARecursion) {
  auto p = Parse(ReadFileBytes(FixtureDir() + "/cycle.pkl"));
  ASSERT_TRUE(p->root.ok()) << p->root.status();
  ASSERT_EQ((*p->root)->kind, Kind::kList);
  ASSERT_EQ((*p->root)->items.size(), 1u);
  EXPECT_EQ((*p->root)->items[0], *p->root);
  EXPECT_TRUE(FlattenTensors(*p->root).empty());
  EXPECT_FALSE(DebugString(*p->root).empty());
}

TEST(PickleReader, TruncatedBinUnicode) {
  // BINUNICODE declares 100 bytes, 3 follow.
  std::string b(
      "\x80\x02X\x64\x00\x00\x00"
      "abc.",
      12);
  auto p = Parse(b);
  ASSERT_FALSE(p->root.ok());
  EXPECT_EQ(p->root.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(Message(p->root.status()).find("truncated"), std::string::npos) << p->root.status();
}

TEST(PickleReader, HugeBinBytes8LengthDoesNotWrap) {
  std::string b(
      "\x80\x04\x8e\xff\xff\xff\xff\xff\xff\xff\xff"
      "ab.",
      14);
  auto p = Parse(b);
  ASSERT_FALSE(p->root.ok());
  EXPECT_NE(Message(p->root.status()).find("truncated"), std::string::npos);
}

TEST(PickleReader, NegativeLong4Length) {
  std::string b("\x80\x02\x8b\xff\xff\xff\xff.", 8);
  auto p = Parse(b);
  ASSERT_FALSE(p->root.ok());
  EXPECT_NE(Message(p->root.status()).find("negative"), std::string::npos);
}

TEST(PickleReader, NegativeBinStringLength) {
  std::string b("T\xff\xff\xff\xff.", 6);
  EXPECT_FALSE(Parse(b)->root.ok());
}

TEST(PickleReader, GetOfUnsetMemoIndex) {
  auto p = Parse(std::string("\x80\x02h\x05.", 5));
  ASSERT_FALSE(p->root.ok());
  EXPECT_NE(Message(p->root.status()).find("memo key 5 not set"), std::string::npos);
}

TEST(PickleReader, MemoIndexOverCap) {
  PickleLimits limits;
  limits.max_memo_entries = 10;
  auto p = Parse("\x80\x02Nr\x00\x01\x00\x00."s, limits);
  ASSERT_FALSE(p->root.ok());
  EXPECT_NE(Message(p->root.status()).find("memo index"), std::string::npos);
}

TEST(PickleReader, StackUnderflow) {
  EXPECT_FALSE(Parse("\x80\x02.")->root.ok());
  EXPECT_FALSE(Parse("\x80\x02]a.")->root.ok());    // APPEND with one item
  EXPECT_FALSE(Parse("\x80\x02N(s.")->root.ok());   // SETITEM below a MARK
  EXPECT_FALSE(Parse("\x80\x02\x85.")->root.ok());  // TUPLE1 on empty stack
  EXPECT_FALSE(Parse("\x80\x02t.")->root.ok());     // TUPLE without MARK
}

TEST(PickleReader, StackDepthCap) {
  PickleLimits limits;
  limits.max_stack_depth = 100;
  std::string b = "\x80\x02" + std::string(200, 'N') + ".";
  auto p = Parse(b, limits);
  ASSERT_FALSE(p->root.ok());
  EXPECT_NE(Message(p->root.status()).find("stack deeper"), std::string::npos);
  std::string marks = "\x80\x02" + std::string(200, '(') + ".";
  EXPECT_FALSE(Parse(marks, limits)->root.ok());
}

TEST(PickleReader, NestingCap) {
  // [[[[...]]]] 1000 deep, built the way CPython writes nested lists.
  std::string b = "\x80\x02";
  for (int k = 0; k < 1000; ++k) b += "]";
  for (int k = 0; k < 999; ++k) b += "a";
  b += ".";
  auto p = Parse(b);
  ASSERT_FALSE(p->root.ok());
  EXPECT_NE(Message(p->root.status()).find("nesting"), std::string::npos);
  PickleLimits deep;
  deep.max_nesting = 2000;
  EXPECT_TRUE(Parse(b, deep)->root.ok());
}

TEST(PickleReader, ValueCountCap) {
  PickleLimits limits;
  limits.max_values = 50;
  std::string b = "\x80\x02(" + std::string(100, ']') + "l.";
  auto p = Parse(b, limits);
  ASSERT_FALSE(p->root.ok());
  EXPECT_NE(Message(p->root.status()).find("values"), std::string::npos);
  // None, True and False are shared: repeating them does not grow the arena.
  std::string nones = "\x80\x02(" + std::string(1000, 'N') + std::string(1000, '\x88') + "l.";
  auto q = Parse(nones, limits);
  ASSERT_TRUE(q->root.ok()) << q->root.status();
  EXPECT_EQ((*q->root)->items.size(), 2000u);
  EXPECT_EQ(q->arena.size(), 3u);
}

TEST(PickleReader, OutOfBandBuffersRejected) {
  EXPECT_NE(Message(Parse("\x80\x05\x97.")->root.status()).find("out-of-band"), std::string::npos);
  EXPECT_FALSE(Parse("\x80\x05N\x98.")->root.ok());
}

TEST(PickleReader, UnknownOpcodeAndProtocol) {
  EXPECT_NE(Message(Parse("\x80\x02\xff.")->root.status()).find("unknown opcode"),
            std::string::npos);
  EXPECT_NE(Message(Parse("\x80\x06N.")->root.status()).find("protocol"), std::string::npos);
  EXPECT_FALSE(Parse("\x80\x02\x82\x01.")->root.ok());  // EXT1
}

TEST(PickleReader, IntegerLiteralTooLongIsRejectedNotSlow) {
  std::string b = "L" + std::string(100000, '9') + "L\n.";
  auto p = Parse(b);
  ASSERT_FALSE(p->root.ok());
  EXPECT_NE(Message(p->root.status()).find("integer"), std::string::npos);
}

TEST(PickleReader, ConsumedStopsAtStop) {
  ValueArena arena;
  PickleContext ctx;
  ctx.arena = &arena;
  size_t used = 0;
  std::string b("\x80\x02K\x07.\x80\x02K\x08.", 10);
  absl::StatusOr<Value*> v = Unpickle(b, ctx, &used);
  ASSERT_TRUE(v.ok());
  EXPECT_EQ((*v)->i, 7);
  EXPECT_EQ(used, 5u);
  v = Unpickle(std::string_view(b).substr(used), ctx, &used);
  ASSERT_TRUE(v.ok());
  EXPECT_EQ((*v)->i, 8);
}

TEST(PickleReader, UnknownGlobalIsOpaqueWithArgsAndState) {
  // argparse.Namespace via NEWOBJ + BUILD, as protocol 2 writes it.
  std::string b =
      "\x80\x02"
      "cargparse\nNamespace\n"
      ")\x81"
      "}X\x02\x00\x00\x00lrG?\xb9\x99\x99\x99\x99\x99\x9a"s
      "s"
      "b.";
  auto p = Parse(b);
  ASSERT_TRUE(p->root.ok()) << p->root.status();
  const Value* ns = *p->root;
  EXPECT_EQ(ns->kind, Kind::kOpaque);
  EXPECT_EQ(ns->str, "argparse.Namespace");
  ASSERT_NE(ns->state, nullptr);
  ASSERT_NE(ns->state->Get("lr"), nullptr);
  EXPECT_DOUBLE_EQ(ns->state->Get("lr")->f, 0.1);
  EXPECT_EQ(p->opaque, std::vector<std::string>{"argparse.Namespace"});
  EXPECT_TRUE(p->unsafe.empty());
}

TEST(PickleReader, DictSubclassBuiltByNewObjBecomesADict) {
  std::string b =
      "\x80\x02"
      "c__main__\nAttributeDict\n"
      ")\x81"
      "(X\x01\x00\x00\x00"s
      "aK\x01u.";
  auto p = Parse(b);
  ASSERT_TRUE(p->root.ok()) << p->root.status();
  EXPECT_EQ((*p->root)->kind, Kind::kDict);
  EXPECT_EQ((*p->root)->str, "__main__.AttributeDict");
  ASSERT_NE((*p->root)->Get("a"), nullptr);
  EXPECT_EQ((*p->root)->Get("a")->i, 1);
}

TEST(PickleReader, DefaultDictIsADict) {
  // collections.defaultdict(list) with one item, as protocol 2 writes it.
  std::string b =
      "\x80\x02"
      "ccollections\ndefaultdict\n"
      "c__builtin__\nlist\n"
      "\x85R"
      "X\x01\x00\x00\x00"s
      "k]K\x07"
      "as.";
  auto p = Parse(b);
  ASSERT_TRUE(p->root.ok()) << p->root.status();
  EXPECT_EQ((*p->root)->kind, Kind::kDict);
  EXPECT_EQ((*p->root)->str, "collections.defaultdict");
  ASSERT_NE((*p->root)->Get("k"), nullptr);
  EXPECT_EQ((*p->root)->Get("k")->items.size(), 1u);
}

TEST(PickleReader, UnsafeGlobalIsRecordedNotCalled) {
  std::string b =
      "\x80\x02"
      "cposix\nsystem\n"
      "X\x02\x00\x00\x00ls\x85R."s;
  auto p = Parse(b);
  ASSERT_TRUE(p->root.ok()) << p->root.status();
  EXPECT_EQ((*p->root)->kind, Kind::kOpaque);
  EXPECT_EQ(p->unsafe, std::vector<std::string>{"posix.system"});
}

TEST(PickleReader, ClassifyGlobal) {
  EXPECT_EQ(ClassifyGlobal("torch._utils", "_rebuild_tensor_v2"), GlobalClass::kAllowed);
  EXPECT_EQ(ClassifyGlobal("torch", "FloatStorage"), GlobalClass::kAllowed);
  EXPECT_EQ(ClassifyGlobal("torch", "bfloat16"), GlobalClass::kAllowed);
  EXPECT_EQ(ClassifyGlobal("collections", "OrderedDict"), GlobalClass::kAllowed);
  EXPECT_EQ(ClassifyGlobal("__builtin__", "set"), GlobalClass::kAllowed);
  EXPECT_EQ(ClassifyGlobal("argparse", "Namespace"), GlobalClass::kOpaque);
  EXPECT_EQ(ClassifyGlobal("__torch__.Net", "Net"), GlobalClass::kOpaque);
  // A nested class is a path of class names; any other attribute path walks
  // through modules (torch.os is os) and is unsafe.
  EXPECT_EQ(ClassifyGlobal("my_project.config", "Outer.Inner"), GlobalClass::kOpaque);
  EXPECT_EQ(ClassifyGlobal("torch", "os.system"), GlobalClass::kUnsafe);
  EXPECT_EQ(ClassifyGlobal("torch", "serialization.os.system"), GlobalClass::kUnsafe);
  EXPECT_EQ(ClassifyGlobal("my_project.config", "Config.from_file"), GlobalClass::kUnsafe);
  EXPECT_EQ(ClassifyGlobal("my_project.config", "Outer.__init__"), GlobalClass::kUnsafe);
  for (auto [m, n] : std::vector<std::pair<std::string, std::string>>{
           {"os", "system"},
           {"posix", "system"},
           {"nt", "system"},
           {"subprocess", "Popen"},
           {"sys", "modules"},
           {"builtins", "eval"},
           {"functools", "partial"},
           {"functools", "reduce"},
           {"timeit", "timeit"},
           {"cProfile", "run"},
           {"profile", "run"},
           {"pdb", "run"},
           {"bdb", "Bdb"},
           {"trace", "Trace"},
           {"pip", "main"},
           {"torch.fx.graph_module", "reduce_graph_module"},
           {"os.path", "join"},
           {"_operator", "attrgetter"},
           {"builtins", "exec"},
           {"__builtin__", "eval"},
           {"builtins", "setattr"},
           {"builtins", "__import__"},
           {"builtins", "open"},
           {"runpy", "run_path"},
           {"importlib", "import_module"},
           {"importlib.util", "x"},
           {"pickle", "loads"},
           {"marshal", "loads"},
           {"socket", "socket"},
           {"shutil", "rmtree"},
           {"pkgutil", "resolve_name"},
           {"code", "interact"},
           {"ctypes", "CDLL"},
           {"torch.storage", "_load_from_bytes"},
           {"webbrowser", "open"},
           {"pty", "spawn"}}) {
    EXPECT_EQ(ClassifyGlobal(m, n), GlobalClass::kUnsafe) << m << "." << n;
  }
}

TEST(PickleReader, GetattrOfAnEnumClassIsBenign) {
  // Python >= 3.11 writes enum members as getattr(Stage, "TRAIN").
  auto p = Parse(
      "\x80\x02"
      "cbuiltins\ngetattr\n"
      "c__main__\nStage\n"
      "X\x05\x00\x00\x00"s
      "TRAIN\x86R.");
  ASSERT_TRUE(p->root.ok()) << p->root.status();
  EXPECT_EQ((*p->root)->kind, Kind::kOpaque);
  EXPECT_EQ((*p->root)->str, "__main__.Stage.TRAIN");
  EXPECT_TRUE(p->unsafe.empty());
}

TEST(PickleReader, GetattrOfAModuleOrPrivateNameIsUnsafe) {
  auto dunder = Parse(
      "\x80\x02"
      "cbuiltins\ngetattr\n"
      "c__main__\nStage\n"
      "X\x08\x00\x00\x00"s
      "__init__\x86R.");
  ASSERT_TRUE(dunder->root.ok());
  EXPECT_EQ(dunder->unsafe, std::vector<std::string>{"builtins.getattr"});
  // getattr(os.path, "join"): the object is itself an unsafe global.
  auto mod = Parse(
      "\x80\x02"
      "cbuiltins\ngetattr\n"
      "cos\npath\n"
      "X\x04\x00\x00\x00"s
      "join\x86R.");
  ASSERT_TRUE(mod->root.ok());
  EXPECT_NE(std::find(mod->unsafe.begin(), mod->unsafe.end(), "builtins.getattr"),
            mod->unsafe.end());
}

TEST(PickleReader, CallingAGetattrResultIsUnsafe) {
  // getattr(pathlib.Path, "unlink")(...): torch.load would call the method.
  auto p = Parse(
      "\x80\x02"
      "cbuiltins\ngetattr\n"
      "cpathlib\nPath\n"
      "X\x06\x00\x00\x00"s
      "unlink\x86R"
      "X\x01\x00\x00\x00"s
      "x\x85R.");
  ASSERT_TRUE(p->root.ok()) << p->root.status();
  EXPECT_EQ(p->unsafe, std::vector<std::string>{"builtins.getattr"});
}

TEST(PickleReader, TorchDtypeGlobalIsADtypeValue) {
  auto p = Parse(
      "\x80\x02"
      "ctorch\nbfloat16\n.");
  ASSERT_TRUE(p->root.ok());
  EXPECT_EQ((*p->root)->kind, Kind::kDtype);
  EXPECT_EQ((*p->root)->dtype, DType::kBF16);
}

TEST(PickleReader, QuantizedRebuildIsAClearError) {
  auto p = Parse(
      "\x80\x02"
      "ctorch._utils\n_rebuild_qtensor\n"
      ")R.");
  ASSERT_FALSE(p->root.ok());
  EXPECT_NE(Message(p->root.status()).find("quantized tensors are not supported"),
            std::string::npos);
  auto s = Parse(
      "\x80\x02"
      "ctorch._utils\n_rebuild_sparse_tensor\n"
      ")R.");
  EXPECT_NE(Message(s->root.status()).find("sparse tensors are not supported"), std::string::npos);
}

// A pickle of _rebuild_tensor_v2(storage 0, offset, size, stride, False, OrderedDict()).
std::string RebuildPickle(int64_t offset, std::vector<int64_t> size, std::vector<int64_t> stride) {
  auto i64 = [](int64_t v) {
    std::string s("\x8a\x08", 2);
    for (int k = 0; k < 8; ++k)
      s.push_back(static_cast<char>((static_cast<uint64_t>(v) >> (8 * k)) & 0xFF));
    return s;
  };
  std::string b =
      "\x80\x02"
      "ctorch._utils\n_rebuild_tensor_v2\n"
      "("
      "X\x01\x00\x00\x00"s
      "0Q";
  b += i64(offset);
  b += "(";
  for (int64_t s : size) b += i64(s);
  b += "t(";
  for (int64_t s : stride) b += i64(s);
  b += "t\x89"
       "ccollections\nOrderedDict\n)R"
       "tR.";
  return b;
}

std::unique_ptr<Parsed> ParseWithStorage(const std::string& b, uint64_t nbytes) {
  auto p = std::make_unique<Parsed>();
  StorageRecord r;
  r.dtype = DType::kF32;
  r.key = "0";
  r.nbytes = nbytes;
  p->storages.push_back(r);
  PickleContext ctx;
  ctx.arena = &p->arena;
  ctx.storages = &p->storages;
  ctx.persistent_load = [&](const Value& pid) -> absl::StatusOr<Value*> {
    Value* v = p->arena.New(Kind::kStorage);
    v->storage_index = 0;
    return v;
  };
  p->root = Unpickle(b, ctx);
  return p;
}

TEST(PickleReader, TensorWithinStorage) {
  auto p = ParseWithStorage(RebuildPickle(2, {2, 3}, {3, 1}), 8 * 4);
  ASSERT_TRUE(p->root.ok()) << p->root.status();
  const Value* t = *p->root;
  ASSERT_EQ(t->kind, Kind::kTensor);
  EXPECT_EQ(t->tensor.shape, (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(t->tensor.storage_offset, 2);
  EXPECT_TRUE(t->tensor.is_contiguous());
  EXPECT_EQ(t->tensor.nbytes(), 24u);
}

TEST(PickleReader, StorageShorterThanShapeNeeds) {
  auto p = ParseWithStorage(RebuildPickle(3, {2, 3}, {3, 1}), 8 * 4);
  ASSERT_FALSE(p->root.ok());
  EXPECT_NE(Message(p->root.status()).find("needs 36 bytes"), std::string::npos)
      << p->root.status();
}

TEST(PickleReader, StrideReachesPastStorage) {
  EXPECT_FALSE(ParseWithStorage(RebuildPickle(0, {2, 2}, {1, 100}), 64)->root.ok());
}

TEST(PickleReader, HugeDimsOverflow) {
  int64_t big = int64_t{1} << 62;
  auto p = ParseWithStorage(RebuildPickle(0, {big, 4}, {1, 1}), 64);
  ASSERT_FALSE(p->root.ok());
  EXPECT_NE(Message(p->root.status()).find("overflows"), std::string::npos) << p->root.status();
  // Broadcast (stride 0) with an element count whose byte size overflows.
  EXPECT_FALSE(ParseWithStorage(RebuildPickle(0, {big, big}, {0, 0}), 64)->root.ok());
  EXPECT_FALSE(ParseWithStorage(RebuildPickle(big, {2}, {1}), 64)->root.ok());
}

TEST(PickleReader, NegativeStrideOrSizeRejected) {
  EXPECT_FALSE(ParseWithStorage(RebuildPickle(0, {-1}, {1}), 64)->root.ok());
  EXPECT_FALSE(ParseWithStorage(RebuildPickle(0, {2}, {-1}), 64)->root.ok());
  EXPECT_FALSE(ParseWithStorage(RebuildPickle(-1, {2}, {1}), 64)->root.ok());
}

TEST(PickleReader, EmptyTensorNeedsNoBytes) {
  auto p = ParseWithStorage(RebuildPickle(0, {0, 5}, {5, 1}), 0);
  ASSERT_TRUE(p->root.ok()) << p->root.status();
  EXPECT_EQ((*p->root)->tensor.numel(), 0);
}

TEST(PickleReader, PersistentIdWithoutLoaderIsAnError) {
  EXPECT_FALSE(Parse("\x80\x02X\x01\x00\x00\x00xQ."s)->root.ok());
}

}  // namespace
}  // namespace weightgate::checkpoint
