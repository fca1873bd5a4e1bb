#include "server/checkpoint/torch_writer.h"

#include <sys/stat.h>

#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <sstream>
#include <string>

#include "gtest/gtest.h"
#include "server/checkpoint/checkpoint.h"
#include "tests/checkpoint/checkpoint_test_util.h"

namespace weightgate::checkpoint {
namespace {

using common::MappedFile;

using testing::FileExists;
using testing::GatherTensorBytes;
using testing::ReadFileBytes;
using testing::Sha256Hex;

std::string TempPath(const std::string& name) {
  std::string dir = ::weightgate::testing::BinaryDir() + std::string("/tmp");
  ::mkdir(dir.c_str(), 0755);
  return dir + "/torch_writer_test." + std::to_string(::getpid()) + "." + name;
}

// Deterministic, valid bytes for `t` (bools are 0/1).
std::string TensorData(const TorchZipEntry& t, int seed) {
  int64_t numel = 1;
  for (int64_t d : t.shape) numel *= d;
  size_t item = ItemSize(t.dtype);
  std::string out(static_cast<size_t>(numel) * item, '\0');
  for (int64_t i = 0; i < numel; ++i) {
    char* p = out.data() + i * item;
    double v = (i % 17) * 0.25 - 2 + seed;
    switch (t.dtype) {
      case DType::kF64: std::memcpy(p, &v, 8); break;
      case DType::kF32: {
        float f = static_cast<float>(v);
        std::memcpy(p, &f, 4);
        break;
      }
      case DType::kF16: {
        uint16_t h = static_cast<uint16_t>(0x3C00 + (i % 64));
        std::memcpy(p, &h, 2);
        break;
      }
      case DType::kBF16: {
        uint16_t h = static_cast<uint16_t>(0x3F80 + (i % 64));
        std::memcpy(p, &h, 2);
        break;
      }
      case DType::kBool: *p = static_cast<char>((i + seed) % 3 == 0); break;
      case DType::kC64: {
        float f[2] = {static_cast<float>(v), static_cast<float>(-v)};
        std::memcpy(p, f, 8);
        break;
      }
      case DType::kC128: {
        double d[2] = {v, -v};
        std::memcpy(p, d, 16);
        break;
      }
      default:
        for (size_t k = 0; k < item; ++k) p[k] = static_cast<char>((i * 7 + k * 13 + seed) & 0xFF);
    }
  }
  return out;
}

std::vector<TorchZipEntry> AllDtypes() {
  return {
      {"fc.weight", DType::kF32, {5, 16}},
      {"fc.bias", DType::kF32, {5}},
      {"f64", DType::kF64, {3, 4}},
      {"f16", DType::kF16, {7}},
      {"bf16", DType::kBF16, {2, 3, 4}},
      {"i64", DType::kI64, {4}},
      {"i32", DType::kI32, {4}},
      {"i16", DType::kI16, {4}},
      {"i8", DType::kI8, {4}},
      {"u8", DType::kU8, {300}},
      {"bool", DType::kBool, {9}},
      {"c64", DType::kC64, {2, 2}},
      {"c128", DType::kC128, {3}},
      {"scalar", DType::kF32, {}},
      {"empty", DType::kF32, {0}},
      {"empty_2d", DType::kI64, {3, 0}},
      {"unit", DType::kF32, {1, 1, 5}},
  };
}

absl::Status WriteAll(const std::string& path, const std::vector<TorchZipEntry>& entries,
                      size_t chunk, TorchZipWriterOptions options = {}) {
  std::string all;
  for (size_t i = 0; i < entries.size(); ++i) all += TensorData(entries[i], static_cast<int>(i));
  absl::StatusOr<std::unique_ptr<TorchZipWriter>> w =
      TorchZipWriter::Create(path, entries, options);
  if (!w.ok()) return w.status();
  for (size_t off = 0; off < all.size(); off += chunk) {
    if (absl::Status s = (*w)->Append(std::string_view(all).substr(off, chunk)); !s.ok()) return s;
  }
  return (*w)->Finish();
}

// torch.load(weights_only=True) in Debian's torch; one line per tensor:
// name, dtype, shape, sha256 of its contiguous bytes; then "strict ok" when
// fc.weight / fc.bias load into nn.Linear(16, 5) with strict=True.
std::map<std::string, std::string> TorchLoad(const std::string& path) {
  std::string script = TempPath("load.py");
  std::ofstream(script) << R"PY(
import hashlib, sys, torch
sd = torch.load(sys.argv[1], weights_only=True)
names = {torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
         torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8",
         torch.uint8: "U8", torch.bool: "BOOL", torch.complex64: "C64", torch.complex128: "C128"}
print("type", type(sd).__name__)
for k, t in sd.items():
    c = t.contiguous()
    if c.dtype == torch.bfloat16:
        c = c.view(torch.int16)
    print(k, names[t.dtype] + str(list(t.shape)).replace(" ", ""), hashlib.sha256(c.numpy().tobytes()).hexdigest())
m = torch.nn.Linear(16, 5)
m.load_state_dict({"weight": sd["fc.weight"], "bias": sd["fc.bias"]}, strict=True)
print("strict ok", bool((m.weight == sd["fc.weight"]).all()))
)PY";
  std::string out = TempPath("load.out");
  std::string cmd = "/usr/bin/python3 " + script + " " + path + " >" + out + " 2>&1";
  int rc = std::system(cmd.c_str());
  std::map<std::string, std::string> result;
  std::ifstream in(out);
  std::string line;
  while (std::getline(in, line)) {
    size_t sp = line.find(' ');
    if (sp == std::string::npos) continue;
    result[line.substr(0, sp)] = line.substr(sp + 1);
  }
  if (rc != 0) result["error"] = ReadFileBytes(out);
  std::remove(script.c_str());
  std::remove(out.c_str());
  return result;
}

std::string Describe(const TorchZipEntry& t, const std::string& data) {
  std::string shape = "[";
  for (size_t k = 0; k < t.shape.size(); ++k) {
    if (k > 0) shape += ",";
    shape += std::to_string(t.shape[k]);
  }
  shape += "]";
  return std::string(DTypeName(t.dtype)) + shape + " " + Sha256Hex(data);
}

void ExpectTorchLoadsSame(const std::string& path, const std::vector<TorchZipEntry>& entries) {
  std::map<std::string, std::string> got = TorchLoad(path);
  ASSERT_EQ(got.count("error"), 0u) << got["error"];
  EXPECT_EQ(got["type"], "OrderedDict");
  EXPECT_EQ(got["strict"], "ok True");
  for (size_t i = 0; i < entries.size(); ++i) {
    EXPECT_EQ(got[entries[i].name],
              Describe(entries[i], TensorData(entries[i], static_cast<int>(i))))
        << entries[i].name;
  }
}

TEST(TorchWriter, TorchLoadWeightsOnlyReturnsTheSameTensors) {
  std::string path = TempPath("all.pt");
  ASSERT_TRUE(WriteAll(path, AllDtypes(), 1 << 20).ok());
  ExpectTorchLoadsSame(path, AllDtypes());
  std::remove(path.c_str());
}

TEST(TorchWriter, ForcedZip64StillLoadsInTorch) {
  std::string path = TempPath("zip64.pt");
  TorchZipWriterOptions options;
  options.force_zip64 = true;
  options.archive_prefix = "model";
  ASSERT_TRUE(WriteAll(path, AllDtypes(), 1 << 20, options).ok());
  ExpectTorchLoadsSame(path, AllDtypes());
  absl::StatusOr<Checkpoint> ckpt = ReadCheckpointFile(path);
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  EXPECT_EQ(ckpt->archive_prefix, "model");
  std::remove(path.c_str());
}

TEST(TorchWriter, ChunkingDoesNotChangeTheFile) {
  std::string a = TempPath("a.pt"), b = TempPath("b.pt");
  ASSERT_TRUE(WriteAll(a, AllDtypes(), 1 << 20).ok());
  ASSERT_TRUE(WriteAll(b, AllDtypes(), 7).ok());
  EXPECT_EQ(ReadFileBytes(a), ReadFileBytes(b));
  std::remove(a.c_str());
  std::remove(b.c_str());
}

TEST(TorchWriter, RoundTripThroughOurReader) {
  std::string path = TempPath("rt.pt");
  std::vector<TorchZipEntry> entries = AllDtypes();
  ASSERT_TRUE(WriteAll(path, entries, 1000).ok());
  absl::StatusOr<Checkpoint> ckpt = ReadCheckpointFile(path);
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  EXPECT_EQ(ckpt->format, Format::kTorchZip);
  EXPECT_EQ(ckpt->archive_prefix, "archive");
  EXPECT_FALSE(ckpt->unsafe());
  EXPECT_TRUE(ckpt->opaque_globals.empty());
  std::vector<NamedTensor> got = FlattenTensors(ckpt->root);
  ASSERT_EQ(got.size(), entries.size());
  for (size_t i = 0; i < entries.size(); ++i) {
    EXPECT_EQ(got[i].name, entries[i].name);
    EXPECT_EQ(got[i].tensor->dtype, entries[i].dtype);
    EXPECT_EQ(got[i].tensor->shape, entries[i].shape);
    EXPECT_TRUE(got[i].tensor->is_contiguous());
    EXPECT_EQ(GatherTensorBytes(*ckpt, *got[i].tensor),
              TensorData(entries[i], static_cast<int>(i)));
    // Tensor data is 64-byte aligned in the file, as torch writes it.
    const StorageRecord& r = ckpt->storages[static_cast<size_t>(got[i].tensor->storage_index)];
    if (r.nbytes > 0) {
      EXPECT_EQ(r.file_offset % 64, 0u) << entries[i].name;
    }
  }
  std::remove(path.c_str());
}

TEST(TorchWriter, TooManyBytes) {
  std::string path = TempPath("over.pt");
  absl::StatusOr<std::unique_ptr<TorchZipWriter>> w =
      TorchZipWriter::Create(path, {{"x", DType::kF32, {2}}});
  ASSERT_TRUE(w.ok());
  EXPECT_FALSE((*w)->Append(std::string(9, 'a')).ok());
}

TEST(TorchWriter, MissingBytesFailFinishAndRemoveThePartialFile) {
  std::string path = TempPath("short.pt");
  {
    absl::StatusOr<std::unique_ptr<TorchZipWriter>> w =
        TorchZipWriter::Create(path, {{"x", DType::kF32, {2}}});
    ASSERT_TRUE(w.ok());
    ASSERT_TRUE((*w)->Append(std::string(4, 'a')).ok());
    EXPECT_EQ((*w)->remaining(), 4u);
    EXPECT_FALSE((*w)->Finish().ok());
    EXPECT_TRUE(FileExists(path));
  }
  EXPECT_FALSE(FileExists(path));
}

TEST(TorchWriter, NegativeOrOverflowingShapeRejected) {
  EXPECT_FALSE(TorchZipWriter::Create(TempPath("neg.pt"), {{"x", DType::kF32, {-1}}}).ok());
  int64_t big = int64_t{1} << 40;
  EXPECT_FALSE(TorchZipWriter::Create(TempPath("big.pt"), {{"x", DType::kF64, {big, big}}}).ok());
  EXPECT_FALSE(TorchZipWriter::Create(TempPath("p.pt"), {}, {.archive_prefix = "a/b"}).ok());
  EXPECT_FALSE(
      TorchZipWriter::Create(TempPath("p.pt"), {}, {.archive_prefix = std::string(70000, 'a')})
          .ok());
}

TEST(TorchWriter, BigEndianByteorderRejectedByReader) {
  std::string path = TempPath("be.pt");
  ASSERT_TRUE(WriteAll(path, {{"x", DType::kF32, {2}}}, 64).ok());
  std::string bytes = ReadFileBytes(path);
  std::remove(path.c_str());
  absl::StatusOr<Checkpoint> little = ReadCheckpoint(MappedFile::FromString(bytes));
  ASSERT_TRUE(little.ok()) << little.status();
  EXPECT_NE(std::find(little->metadata.begin(), little->metadata.end(), "byteorder=little"),
            little->metadata.end());
  size_t at = bytes.find("little");
  ASSERT_NE(at, std::string::npos);
  bytes.replace(at, 6, "big   ");  // stored reads do not check the CRC
  absl::StatusOr<Checkpoint> big = ReadCheckpoint(MappedFile::FromString(bytes));
  ASSERT_FALSE(big.ok());
  EXPECT_NE(std::string(big.status().message()).find("big-endian"), std::string::npos)
      << big.status();
}

TEST(TorchWriter, TiedEntriesShareOneStorageInTorch) {
  std::string path = TempPath("tied.pt");
  std::vector<TorchZipEntry> entries = {{"embed.weight", DType::kF32, {10, 6}},
                                        {"bias", DType::kF32, {4}},
                                        {"head.weight", DType::kF32, {10, 6}, /*tied_to=*/0}};
  std::string embed = TensorData(entries[0], 0);
  std::string bias = TensorData(entries[1], 1);
  {
    absl::StatusOr<std::unique_ptr<TorchZipWriter>> w = TorchZipWriter::Create(path, entries);
    ASSERT_TRUE(w.ok()) << w.status();
    EXPECT_EQ((*w)->remaining(), embed.size() + bias.size());
    ASSERT_TRUE((*w)->Append(embed + bias).ok());
    ASSERT_TRUE((*w)->Finish().ok());
  }
  std::string script = TempPath("tied.py");
  std::ofstream(script) << R"PY(
import sys, torch
sd = torch.load(sys.argv[1], weights_only=True)
e, h = sd["embed.weight"], sd["head.weight"]
print(e.storage().data_ptr() == h.storage().data_ptr(), bool((e == h).all()),
      sd["bias"].storage().data_ptr() != e.storage().data_ptr())
)PY";
  std::string out = TempPath("tied.out");
  ASSERT_EQ(std::system(("/usr/bin/python3 " + script + " " + path + " >" + out + " 2>&1").c_str()),
            0)
      << ReadFileBytes(out);
  EXPECT_EQ(ReadFileBytes(out), "True True True\n");
  absl::StatusOr<Checkpoint> ckpt = ReadCheckpointFile(path);
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  EXPECT_EQ(ckpt->storages.size(), 2u);
  std::vector<NamedTensor> t = FlattenTensors(ckpt->root);
  ASSERT_EQ(t.size(), 3u);
  EXPECT_EQ(t[0].tensor->storage_index, t[2].tensor->storage_index);
  EXPECT_EQ(GatherTensorBytes(*ckpt, *t[2].tensor), embed);
  EXPECT_EQ(GatherTensorBytes(*ckpt, *t[1].tensor), bias);
  for (const std::string& f : {path, script, out}) std::remove(f.c_str());
}

TEST(TorchWriter, BadTiesRejected) {
  auto create = [](std::vector<TorchZipEntry> e) {
    return TorchZipWriter::Create(TempPath("tie.pt"), e).ok();
  };
  EXPECT_FALSE(create({{"a", DType::kF32, {2}, 0}}));                           // itself
  EXPECT_FALSE(create({{"a", DType::kF32, {2}, 1}, {"b", DType::kF32, {2}}}));  // a later entry
  EXPECT_FALSE(create({{"a", DType::kF32, {2}}, {"b", DType::kF16, {2}, 0}}));  // another dtype
  EXPECT_FALSE(create({{"a", DType::kF32, {2}}, {"b", DType::kF32, {3}, 0}}));  // bigger
  EXPECT_FALSE(
      create({{"a", DType::kF32, {2}}, {"b", DType::kF32, {2}, 0}, {"c", DType::kF32, {2}, 1}}));
}

TEST(TorchWriter, EmptyStateDict) {
  std::string path = TempPath("empty.pt");
  absl::StatusOr<std::unique_ptr<TorchZipWriter>> w = TorchZipWriter::Create(path, {});
  ASSERT_TRUE(w.ok());
  ASSERT_TRUE((*w)->Finish().ok());
  absl::StatusOr<Checkpoint> ckpt = ReadCheckpointFile(path);
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  EXPECT_EQ(ckpt->root->kind, Value::Kind::kDict);
  EXPECT_TRUE(ckpt->root->items.empty());
  std::remove(path.c_str());
}

}  // namespace
}  // namespace weightgate::checkpoint
