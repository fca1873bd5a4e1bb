// Hostile and damaged inputs: each gives a clean InvalidArgument or an
// `unsafe` checkpoint, never a crash, a hang or an executed payload.
#include <chrono>
#include <random>
#include <string>

#include "gtest/gtest.h"
#include "server/checkpoint/checkpoint.h"
#include "server/checkpoint/inspect.h"
#include "server/checkpoint/pickle_reader.h"
#include "tests/checkpoint/checkpoint_test_util.h"

namespace weightgate::checkpoint {
namespace {

using common::MappedFile;

using testing::FileExists;
using testing::FixtureDir;
using testing::GatherTensorBytes;
using testing::ReadFileBytes;

std::string Hostile(const std::string& name) { return FixtureDir() + "/hostile/" + name; }

class HostileEnvironment : public ::testing::Environment {
 public:
  // Whatever ran, no payload may have created its marker file.
  void TearDown() override {
    EXPECT_FALSE(FileExists(FixtureDir() + "/hostile/PWNED")) << "a payload executed";
  }
};
const auto* const kEnv = ::testing::AddGlobalTestEnvironment(new HostileEnvironment);

struct Unpickled {
  ValueArena arena;
  std::vector<std::string> opaque, unsafe;
  absl::Status status;
};

std::unique_ptr<Unpickled> UnpickleFile(const std::string& path) {
  auto u = std::make_unique<Unpickled>();
  PickleContext ctx;
  ctx.arena = &u->arena;
  ctx.opaque_globals = &u->opaque;
  ctx.unsafe_globals = &u->unsafe;
  std::string bytes = ReadFileBytes(path);
  EXPECT_FALSE(bytes.empty()) << path;
  u->status = Unpickle(bytes, ctx).status();
  return u;
}

struct PayloadCase {
  std::string file;
  std::string unsafe_global;
};

class Payload : public ::testing::TestWithParam<PayloadCase> {};

TEST_P(Payload, IsFlaggedUnsafeAndNothingRuns) {
  auto u = UnpickleFile(Hostile(GetParam().file));
  ASSERT_TRUE(u->status.ok()) << u->status;
  EXPECT_NE(std::find(u->unsafe.begin(), u->unsafe.end(), GetParam().unsafe_global),
            u->unsafe.end())
      << "unsafe: " << (u->unsafe.empty() ? "none" : u->unsafe.front());
  EXPECT_FALSE(FileExists(Hostile("PWNED")));
}

INSTANTIATE_TEST_SUITE_P(Hostile, Payload,
                         ::testing::Values(PayloadCase{"os_system_p0.pkl", "posix.system"},
                                           PayloadCase{"os_system_p2.pkl", "posix.system"},
                                           PayloadCase{"os_system_p4.pkl", "posix.system"},
                                           PayloadCase{"eval_p0.pkl", "builtins.eval"},
                                           PayloadCase{"eval_p2.pkl", "builtins.eval"},
                                           PayloadCase{"eval_p4.pkl", "builtins.eval"},
                                           PayloadCase{"subprocess_p0.pkl", "subprocess.call"},
                                           PayloadCase{"subprocess_p2.pkl", "subprocess.call"},
                                           PayloadCase{"subprocess_p4.pkl", "subprocess.call"},
                                           PayloadCase{"resolve_name.pkl", "pkgutil.resolve_name"},
                                           PayloadCase{"stack_global_memo.pkl", "os.system"},
                                           PayloadCase{"getattr_chain.pkl", "builtins.__import__"},
                                           PayloadCase{"getattr_chain.pkl", "builtins.getattr"},
                                           PayloadCase{"inst.pkl", "os.system"},
                                           PayloadCase{"obj.pkl", "os.system"}),
                         [](const ::testing::TestParamInfo<PayloadCase>& info) {
                           std::string n = info.param.file + "_" + std::to_string(info.index);
                           for (char& c : n) {
                             if (!std::isalnum(static_cast<unsigned char>(c))) c = '_';
                           }
                           return n;
                         });

TEST(Hostile, TorchZipAndLegacyPayloadsReadAsUnsafe) {
  for (const char* name : {"zip_reduce.pt", "legacy_reduce.pt"}) {
    absl::StatusOr<Checkpoint> ckpt = ReadCheckpointFile(Hostile(name));
    ASSERT_TRUE(ckpt.ok()) << name << ": " << ckpt.status();
    EXPECT_TRUE(ckpt->unsafe()) << name;
    // The tensor beside the payload still reads.
    ASSERT_EQ(FlattenTensors(ckpt->root).size(), 1u) << name;
  }
  EXPECT_FALSE(FileExists(Hostile("PWNED")));
}

void ExpectRejected(const std::string& name, const std::string& reason) {
  absl::StatusOr<Checkpoint> ckpt = ReadCheckpointFile(Hostile(name));
  ASSERT_FALSE(ckpt.ok()) << name;
  EXPECT_EQ(ckpt.status().code(), absl::StatusCode::kInvalidArgument) << ckpt.status();
  EXPECT_NE(std::string(ckpt.status().message()).find(reason), std::string::npos)
      << name << ": " << ckpt.status();
}

TEST(Hostile, CraftedArchiveControlReads) {
  absl::StatusOr<Checkpoint> ckpt = ReadCheckpointFile(Hostile("crafted_ok.pt"));
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  ASSERT_EQ(FlattenTensors(ckpt->root).size(), 1u);
}

// torch 1.13 itself reads past the entry here (heap over-read into garbage).
TEST(Hostile, StorageShorterThanTheShapeNeeds) {
  ExpectRejected("short_storage.pt", "needs 64 bytes");
}

TEST(Hostile, ViewPastTheStorage) {
  ExpectRejected("view_past_storage.pt", "tensor needs 36 bytes");
  ExpectRejected("stride_past_storage.pt", "tensor needs");
}

TEST(Hostile, HugeDimsThatOverflow) {
  ExpectRejected("overflow_dims.pt", "overflows");
  ExpectRejected("overflow_numel.pt", "overflows");
  ExpectRejected("negative_dim.pt", "non-negative");
}

TEST(Hostile, MissingStorageEntry) {
  ExpectRejected("missing_storage.pt", "missing storage data/7");
}

TEST(Hostile, QuantizedStorageClass) { ExpectRejected("quantized_storage.pt", "quantized"); }

TEST(Hostile, ZipBombIsRejectedBeforeInflating) {
  auto start = std::chrono::steady_clock::now();
  absl::StatusOr<Checkpoint> ckpt = ReadCheckpointFile(Hostile("zip_bomb.pt"));
  EXPECT_FALSE(ckpt.ok());
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(2));
  ReadOptions tight;
  tight.max_inflated_bytes = 1 << 20;
  EXPECT_FALSE(ReadCheckpointFile(Hostile("zip_bomb.pt"), tight).ok());
}

// A pickle that copies a 1000-None list 500 times (4 MB of items).
std::string CopyingPickle(int copies) {
  using namespace std::string_literals;
  std::string p = "\x80\x02}(N"s + std::string(999, '2') +
                  "lq\x00"
                  "0cbuiltins\nset\nq\x01"
                  "0"s;
  for (int k = 0; k < copies; ++k) p += "h\x01h\x00\x85R0"s;
  return p + ".";
}

TEST(Hostile, CopiesAreChargedToTheBudget) {
  ReadOptions options;
  options.budget_fixed_bytes = 1 << 20;
  std::string pkl = CopyingPickle(500);
  ValueArena arena;
  PickleContext ctx;
  ctx.arena = &arena;
  ctx.limits.budget_fixed_bytes = 1 << 20;
  absl::StatusOr<Value*> v = Unpickle(pkl, ctx);
  ASSERT_FALSE(v.ok());
  EXPECT_EQ(v.status().code(), absl::StatusCode::kResourceExhausted) << v.status();
  EXPECT_NE(std::string(v.status().message()).find("read_budget"), std::string::npos);
  EXPECT_NE(std::string(v.status().message()).find("builtins.set"), std::string::npos);
  ctx.limits.budget_fixed_bytes = 16 << 20;
  ValueArena arena2;
  ctx.arena = &arena2;
  EXPECT_TRUE(Unpickle(pkl, ctx).ok());
}

// Bytes after a legacy file's pickles (its storages, or junk) do not raise
// the budget: it grows only with the pickle bytes read.
TEST(Hostile, LegacyTrailingBytesEarnNoBudget) {
  std::string file = std::string("\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19.", 15) +
                     "\x80\x02M\xe9\x03." +
                     std::string("\x80\x02}q\x00(X\x0d\x00\x00\x00little_endianq\x01\x88u.", 29) +
                     CopyingPickle(500) + "\x80\x02]." + std::string(200 << 10, 'j');
  ReadOptions options;
  options.budget_fixed_bytes = 1 << 20;
  absl::StatusOr<Checkpoint> ckpt = ReadCheckpoint(MappedFile::FromString(file), options);
  ASSERT_FALSE(ckpt.ok());
  EXPECT_EQ(ckpt.status().code(), absl::StatusCode::kResourceExhausted) << ckpt.status();
  options.budget_fixed_bytes = 16 << 20;
  ckpt = ReadCheckpoint(MappedFile::FromString(file), options);
  EXPECT_TRUE(ckpt.ok()) << ckpt.status();
}

TEST(Hostile, DeepNestingIsACleanError) {
  for (const char* name : {"deep_lists.pkl", "deep_tuples.pkl"}) {
    auto u = UnpickleFile(Hostile(name));
    EXPECT_FALSE(u->status.ok()) << name;
    EXPECT_NE(std::string(u->status.message()).find("nesting"), std::string::npos) << u->status;
  }
  auto marks = UnpickleFile(Hostile("mark_bomb.pkl"));
  EXPECT_NE(std::string(marks->status.message()).find("stack deeper"), std::string::npos)
      << marks->status;
}

TEST(Hostile, SharedNodeBombDoesNotHangWalkers) {
  ValueArena arena;
  PickleContext ctx;
  ctx.arena = &arena;
  absl::StatusOr<Value*> root = Unpickle(ReadFileBytes(Hostile("dag_bomb.pkl")), ctx);
  ASSERT_TRUE(root.ok()) << root.status();
  auto start = std::chrono::steady_clock::now();
  EXPECT_TRUE(FlattenTensors(*root, 1000).empty());
  EXPECT_LT(DebugString(*root).size(), 8192u);
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(5));
}

// Every proper prefix of a small checkpoint is rejected cleanly.
void TruncationSweep(const std::string& name) {
  std::string bytes = ReadFileBytes(FixtureDir() + "/" + name);
  ASSERT_GT(bytes.size(), 100u);
  ASSERT_TRUE(ReadCheckpoint(MappedFile::FromString(bytes)).ok());
  for (size_t n = 0; n < bytes.size(); ++n) {
    absl::StatusOr<Checkpoint> ckpt = ReadCheckpoint(MappedFile::FromString(bytes.substr(0, n)));
    ASSERT_FALSE(ckpt.ok()) << name << " truncated to " << n << " bytes read fine";
    ASSERT_EQ(ckpt.status().code(), absl::StatusCode::kInvalidArgument)
        << n << ": " << ckpt.status();
  }
}

TEST(Hostile, EveryTruncationOfAZipCheckpoint) { TruncationSweep("small.pt"); }
TEST(Hostile, EveryTruncationOfALegacyCheckpoint) { TruncationSweep("small_legacy.pt"); }

// Damaged bytes either fail cleanly or read into records that stay inside the file.
void CheckDamaged(const std::string& bytes) {
  absl::StatusOr<Checkpoint> ckpt = ReadCheckpoint(MappedFile::FromString(bytes));
  if (!ckpt.ok()) {
    EXPECT_EQ(ckpt.status().code(), absl::StatusCode::kInvalidArgument) << ckpt.status();
    return;
  }
  for (const StorageRecord& r : ckpt->storages) {
    if (r.inflated_index < 0) {
      ASSERT_LE(r.file_offset, bytes.size());
      ASSERT_LE(r.nbytes, bytes.size() - r.file_offset);
    }
  }
  for (const NamedTensor& t : FlattenTensors(ckpt->root)) {
    ASSERT_NE(GatherTensorBytes(*ckpt, *t.tensor), "<out of range>") << t.name;
  }
  Inspection in = Inspect(*ckpt);
  RenderInspectionJson(in);
  RenderInspectionText(in);
}

void FlipSweep(const std::string& name) {
  std::string bytes = ReadFileBytes(FixtureDir() + "/" + name);
  ASSERT_FALSE(bytes.empty());
  for (size_t i = 0; i < bytes.size(); ++i) {
    for (unsigned char mask : {0x01, 0x80, 0xFF}) {
      std::string damaged = bytes;
      damaged[i] = static_cast<char>(damaged[i] ^ mask);
      CheckDamaged(damaged);
    }
  }
  std::mt19937 rng(1234);
  for (int round = 0; round < 2000; ++round) {
    std::string damaged = bytes;
    int flips = 1 + static_cast<int>(rng() % 8);
    for (int k = 0; k < flips; ++k) damaged[rng() % damaged.size()] = static_cast<char>(rng());
    CheckDamaged(damaged);
  }
}

TEST(Hostile, FlippedBytesInAZipCheckpoint) { FlipSweep("small.pt"); }
TEST(Hostile, FlippedBytesInALegacyCheckpoint) { FlipSweep("small_legacy.pt"); }
TEST(Hostile, FlippedBytesInAPickle) { FlipSweep("data_p2.pkl"); }

}  // namespace
}  // namespace weightgate::checkpoint
