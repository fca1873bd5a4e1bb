// Safetensors: our writer's output read back by our reader and by a
// json+struct parser in Debian's python3 compared with torch tensors; then
// hostile headers, each pinned by the failure it must produce.
#include "server/checkpoint/safetensors.h"

#include <sys/stat.h>
#include <unistd.h>

#include <cstdint>
#include <fstream>
#include <limits>
#include <optional>
#include <string>
#include <vector>

#include "common/mapped_file.h"
#include "gtest/gtest.h"
#include "tests/checkpoint/zip_fixtures.h"

namespace weightgate::checkpoint {
namespace {

using common::MappedFile;

using ::weightgate::checkpoint::testing::FixtureDir;
using ::weightgate::checkpoint::testing::HexDecode;
using ::weightgate::checkpoint::testing::ReadWholeFile;
using ::weightgate::checkpoint::testing::SplitTabs;

struct Reference {
  SafetensorsEntry entry;
  std::string bytes;
};

// tensors.tsv: torch's reference tensors and their raw bytes.
std::vector<Reference> ReferenceTensors() {
  std::vector<Reference> out;
  std::ifstream in(FixtureDir() + "/tensors.tsv");
  std::string line;
  while (std::getline(in, line)) {
    std::vector<std::string> f = SplitTabs(line);
    if (f.size() != 4) {
      ADD_FAILURE() << "bad line " << line;
      continue;
    }
    Reference r;
    r.entry.name = HexDecode(f[0]);
    std::optional<DType> dtype = DTypeFromTorchName(f[1]);
    if (!dtype.has_value()) {
      ADD_FAILURE() << "unknown torch dtype " << f[1];
      continue;
    }
    r.entry.dtype = *dtype;
    size_t start = 0;
    while (start < f[2].size()) {
      size_t comma = f[2].find(',', start);
      if (comma == std::string::npos) comma = f[2].size();
      r.entry.shape.push_back(std::stoll(f[2].substr(start, comma - start)));
      start = comma + 1;
    }
    r.bytes = HexDecode(f[3]);
    out.push_back(std::move(r));
  }
  return out;
}

std::string TempPath(const std::string& name) {
  std::string dir = ::weightgate::testing::BinaryDir() + "/fixtures";
  ::mkdir(dir.c_str(), 0755);
  return dir + "/" + name + "." + std::to_string(::getpid()) + ".safetensors";
}

const std::vector<std::pair<std::string, std::string>> kMetadata = {{"format", "pt"},
                                                                    {"producer", "weightgate"}};

// Writes the reference tensors, appending in `chunk`-byte pieces.
std::string WriteReference(const std::vector<Reference>& refs, size_t chunk) {
  std::string path = TempPath("reference" + std::to_string(chunk));
  std::vector<SafetensorsEntry> entries;
  std::string all;
  for (const Reference& r : refs) {
    entries.push_back(r.entry);
    all += r.bytes;
  }
  absl::StatusOr<std::unique_ptr<SafetensorsWriter>> writer =
      SafetensorsWriter::Create(path, entries, kMetadata);
  EXPECT_TRUE(writer.ok()) << writer.status();
  if (!writer.ok()) return path;
  EXPECT_EQ((*writer)->data_size(), all.size());
  for (size_t off = 0; off < all.size(); off += chunk) {
    absl::Status s = (*writer)->Append(std::string_view(all).substr(off, chunk));
    EXPECT_TRUE(s.ok()) << s;
  }
  absl::Status s = (*writer)->Finish();
  EXPECT_TRUE(s.ok()) << s;
  return path;
}

absl::StatusOr<Checkpoint> ReadBytes(std::string bytes, const ReadOptions& options = {}) {
  return ReadSafetensors(MappedFile::FromString(std::move(bytes)), options);
}

// 8-byte length + header (unpadded) + data.
std::string Raw(std::string_view header, std::string_view data = "") {
  std::string out(8, '\0');
  uint64_t n = header.size();
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>(n >> (8 * i));
  out += header;
  out += data;
  return out;
}

void ExpectRejected(const std::string& bytes, const std::string& reason,
                    const ReadOptions& options = {}) {
  absl::StatusOr<Checkpoint> cp = ReadBytes(bytes, options);
  ASSERT_FALSE(cp.ok()) << "accepted; expected: " << reason;
  EXPECT_EQ(cp.status().code(), absl::StatusCode::kInvalidArgument);
  std::string message(cp.status().message());
  EXPECT_EQ(message.rfind("safetensors: ", 0), 0u) << message;
  EXPECT_NE(message.find(reason), std::string::npos) << message;
}

TEST(SafetensorsTest, WrittenFileReadsBackWithTorchBytes) {
  ASSERT_FALSE(FixtureDir().empty());
  std::vector<Reference> refs = ReferenceTensors();
  ASSERT_EQ(refs.size(), 15u);
  for (size_t chunk : {size_t{3}, size_t{1} << 20}) {
    SCOPED_TRACE(chunk);
    std::string path = WriteReference(refs, chunk);
    absl::StatusOr<std::shared_ptr<const MappedFile>> file = MappedFile::Open(path);
    ASSERT_TRUE(file.ok()) << file.status();
    EXPECT_TRUE(LooksLikeSafetensors((*file)->data()));
    absl::StatusOr<Checkpoint> cp = ReadSafetensors(*file, {});
    ASSERT_TRUE(cp.ok()) << cp.status();
    EXPECT_EQ(cp->format, Format::kSafetensors);
    EXPECT_EQ(cp->metadata, (std::vector<std::string>{"format=pt", "producer=weightgate"}));
    ASSERT_NE(cp->root, nullptr);
    ASSERT_EQ(cp->root->kind, Value::Kind::kDict);
    ASSERT_EQ(cp->root->items.size(), 2 * refs.size());
    ASSERT_EQ(cp->storages.size(), refs.size());
    for (size_t i = 0; i < refs.size(); ++i) {
      const Reference& ref = refs[i];
      SCOPED_TRACE(ref.entry.name);
      const Value* key = cp->root->items[2 * i];
      const Value* value = cp->root->items[2 * i + 1];
      ASSERT_EQ(key->kind, Value::Kind::kString);
      EXPECT_EQ(key->str, ref.entry.name);
      ASSERT_EQ(value->kind, Value::Kind::kTensor);
      const TensorRecord& t = value->tensor;
      EXPECT_EQ(t.dtype, ref.entry.dtype);
      EXPECT_EQ(t.shape, ref.entry.shape);
      EXPECT_EQ(t.storage_offset, 0);
      std::vector<int64_t> strides(t.shape.size());
      int64_t s = 1;
      for (size_t d = t.shape.size(); d-- > 0;) {
        strides[d] = s;
        s *= std::max<int64_t>(t.shape[d], 1);
      }
      EXPECT_EQ(t.strides, strides);
      ASSERT_GE(t.storage_index, 0);
      const StorageRecord& storage = cp->storages[t.storage_index];
      EXPECT_EQ(storage.key, ref.entry.name);
      EXPECT_EQ(storage.dtype, ref.entry.dtype);
      EXPECT_EQ(storage.inflated_index, -1);
      ASSERT_EQ(storage.nbytes, ref.bytes.size());
      ASSERT_LE(storage.file_offset + storage.nbytes, (*file)->size());
      EXPECT_EQ((*file)->data().substr(storage.file_offset, storage.nbytes), ref.bytes);
    }
    ::unlink(path.c_str());
  }
}

TEST(SafetensorsTest, PythonJsonAndStructReadOurFile) {
  ASSERT_FALSE(FixtureDir().empty());
  std::string path = WriteReference(ReferenceTensors(), 4096);
  std::string cmd = "/usr/bin/python3 " + ::weightgate::testing::SourceDir() +
                    "/tests/fixtures/make_zip_fixtures.py --check-safetensors " + path + " 2>&1";
  FILE* p = ::popen(cmd.c_str(), "r");
  ASSERT_NE(p, nullptr);
  std::string out;
  char buf[4096];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof(buf), p)) > 0) out.append(buf, n);
  int rc = ::pclose(p);
  EXPECT_EQ(rc, 0) << out;
  EXPECT_NE(out.find("ok 15 tensors"), std::string::npos) << out;
  ::unlink(path.c_str());
}

TEST(SafetensorsTest, DetectedByReadCheckpoint) {
  ASSERT_FALSE(FixtureDir().empty());
  std::string path = WriteReference(ReferenceTensors(), 1 << 16);
  absl::StatusOr<Checkpoint> cp = ReadCheckpointFile(path);
  ASSERT_TRUE(cp.ok()) << cp.status();
  EXPECT_EQ(cp->format, Format::kSafetensors);
  ASSERT_EQ(cp->storages.size(), 15u);
  EXPECT_EQ(cp->StorageBytes(1),
            cp->file->data().substr(cp->storages[1].file_offset, cp->storages[1].nbytes));
  ::unlink(path.c_str());
}

TEST(SafetensorsTest, HeaderIsPaddedJsonWithLittleEndianLength) {
  std::vector<SafetensorsEntry> entries = {{"a", DType::kF16, {3}}, {"b", DType::kI64, {2, 1}}};
  std::string header = SafetensorsHeader(entries, {});
  ASSERT_GE(header.size(), 8u);
  EXPECT_EQ(header.size() % 8, 0u);
  uint64_t n = 0;
  for (int i = 0; i < 8; ++i)
    n |= static_cast<uint64_t>(static_cast<unsigned char>(header[i])) << (8 * i);
  EXPECT_EQ(n, header.size() - 8);
  std::string json = header.substr(8);
  while (!json.empty() && json.back() == ' ') json.pop_back();
  EXPECT_EQ(json,
            "{\"a\":{\"dtype\":\"F16\",\"shape\":[3],\"data_offsets\":[0,6]},"
            "\"b\":{\"dtype\":\"I64\",\"shape\":[2,1],\"data_offsets\":[6,22]}}");
  EXPECT_EQ(SafetensorsDataSize(entries), 22u);
}

TEST(SafetensorsTest, EveryPrefixRejectedCleanly) {
  std::vector<SafetensorsEntry> entries = {{"w", DType::kF32, {2, 2}}, {"b", DType::kBool, {3}}};
  std::string file = SafetensorsHeader(entries, {{"k", "v"}}) + std::string(19, '\x01');
  ASSERT_TRUE(ReadBytes(file).ok());
  for (size_t n = 0; n < file.size(); ++n) {
    absl::StatusOr<Checkpoint> cp = ReadBytes(file.substr(0, n));
    ASSERT_FALSE(cp.ok()) << n;
    EXPECT_EQ(cp.status().code(), absl::StatusCode::kInvalidArgument);
  }
}

TEST(SafetensorsTest, FlippedBytesNeverCrash) {
  std::vector<SafetensorsEntry> entries = {{"w", DType::kF32, {2, 2}}, {"b", DType::kBool, {3}}};
  std::string file = SafetensorsHeader(entries, {{"k", "v"}}) + std::string(19, '\x01');
  for (size_t i = 0; i < file.size(); ++i) {
    for (unsigned char bit : {0x01, 0x20, 0x80}) {
      std::string mutated = file;
      mutated[i] = static_cast<char>(mutated[i] ^ bit);
      absl::StatusOr<Checkpoint> cp = ReadBytes(mutated);
      if (!cp.ok()) {
        EXPECT_EQ(cp.status().code(), absl::StatusCode::kInvalidArgument);
      }
    }
  }
}

TEST(SafetensorsTest, HeaderLengthOverflow) {
  // 2^64 - 1: must hit the cap, not wrap in 8 + n.
  std::string huge(8, '\xff');
  huge += "{}";
  ExpectRejected(huge, "header length exceeds cap");
  // Just over the cap with a tiny file: cap first, then the size.
  ReadOptions options;
  options.max_safetensors_header = 16;
  ExpectRejected(Raw("{\"__metadata__\":{}}"), "header length exceeds cap", options);
  // Under the cap but past the end.
  std::string past = Raw("{}");
  past[0] = 3;
  ExpectRejected(past, "header runs past end of file");
}

TEST(SafetensorsTest, FileShorterThanLength) {
  ExpectRejected("", "file shorter than the header length");
  ExpectRejected("\x02\0\0\0", "file shorter than the header length");
}

TEST(SafetensorsTest, EmptyHeaderIsAnEmptyModel) {
  absl::StatusOr<Checkpoint> cp = ReadBytes(Raw("{}"));
  ASSERT_TRUE(cp.ok()) << cp.status();
  EXPECT_TRUE(cp->root->items.empty());
  ExpectRejected(Raw("{}", "x"), "bytes after the last tensor");
}

TEST(SafetensorsTest, HeaderNotJson) {
  ExpectRejected(Raw("{\"a\":"), "bad header: json:");
  ExpectRejected(Raw("[]"), "header is not a JSON object");
  ExpectRejected(Raw("{} x"), "trailing characters");
  ExpectRejected(Raw("{\"a\":{\"dtype\":\"F32\",\"shape\":[],\"data_offsets\":[0,4]},}", "1234"),
                 "bad header");
  ExpectRejected(Raw("{\"\xff\":1}"), "invalid UTF-8");
}

TEST(SafetensorsTest, DuplicateTensorName) {
  ExpectRejected(Raw("{\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]},"
                     "\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[1,2]}}",
                     "xy"),
                 "duplicate object key");
}

TEST(SafetensorsTest, UnsupportedDtype) {
  ExpectRejected(Raw("{\"a\":{\"dtype\":\"F8_E4M3\",\"shape\":[1],\"data_offsets\":[0,1]}}", "x"),
                 "unsupported dtype F8_E4M3");
  ExpectRejected(Raw("{\"a\":{\"dtype\":\"f32\",\"shape\":[1],\"data_offsets\":[0,4]}}", "xxxx"),
                 "unsupported dtype f32");
  ExpectRejected(Raw("{\"a\":{\"dtype\":3,\"shape\":[1],\"data_offsets\":[0,4]}}", "xxxx"),
                 "dtype is not a string");
}

TEST(SafetensorsTest, MissingField) {
  ExpectRejected(Raw("{\"a\":{\"dtype\":\"F32\",\"shape\":[1]}}", "xxxx"), "lacks");
  ExpectRejected(Raw("{\"a\":[1]}", "xxxx"), "tensor entry is not an object");
}

TEST(SafetensorsTest, ShapeMismatchesOffsets) {
  ExpectRejected(
      Raw("{\"a\":{\"dtype\":\"F32\",\"shape\":[2,2],\"data_offsets\":[0,8]}}", "12345678"),
      "shape does not match data_offsets");
}

TEST(SafetensorsTest, ShapeOverflow) {
  // 2^62 * 2^62 elements: the product wraps to 0, which would match [0, 0].
  ExpectRejected(Raw("{\"a\":{\"dtype\":\"F32\",\"shape\":[4611686018427387904,"
                     "4611686018427387904],\"data_offsets\":[0,0]}}"),
                 "shape overflows");
  // numel fits, numel * 8 does not.
  ExpectRejected(Raw("{\"a\":{\"dtype\":\"F64\",\"shape\":[4611686018427387904],"
                     "\"data_offsets\":[0,0]}}"),
                 "shape overflows");
  // A zero dim makes numel 0, but the strides of the other dims still overflow.
  ExpectRejected(Raw("{\"a\":{\"dtype\":\"F32\",\"shape\":[0,4611686018427387904,"
                     "4611686018427387904],\"data_offsets\":[0,0]}}"),
                 "shape overflows");
  ExpectRejected(Raw("{\"a\":{\"dtype\":\"F32\",\"shape\":[99999999999999999999],"
                     "\"data_offsets\":[0,0]}}"),
                 "bad dimension");
}

TEST(SafetensorsTest, BadDimensions) {
  ExpectRejected(Raw("{\"a\":{\"dtype\":\"U8\",\"shape\":[-1],\"data_offsets\":[0,0]}}"),
                 "bad dimension");
  ExpectRejected(Raw("{\"a\":{\"dtype\":\"U8\",\"shape\":[1.0],\"data_offsets\":[0,1]}}", "x"),
                 "bad dimension");
  ExpectRejected(Raw("{\"a\":{\"dtype\":\"U8\",\"shape\":1,\"data_offsets\":[0,1]}}", "x"),
                 "shape is not an array");
}

TEST(SafetensorsTest, OffsetsPastEnd) {
  ExpectRejected(Raw("{\"a\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[0,4]}}", "xyz"),
                 "tensor data past end of file");
  ExpectRejected(Raw("{\"a\":{\"dtype\":\"U8\",\"shape\":[1],"
                     "\"data_offsets\":[18446744073709551615,0]}}"),
                 "data_offsets reversed");
  ExpectRejected(Raw("{\"a\":{\"dtype\":\"U8\",\"shape\":[1],"
                     "\"data_offsets\":[0,18446744073709551616]}}"),
                 "bad data_offsets");
  ExpectRejected(Raw("{\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0]}}", "x"),
                 "data_offsets is not a pair");
}

TEST(SafetensorsTest, OverlappingTensors) {
  ExpectRejected(Raw("{\"a\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[0,2]},"
                     "\"b\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[1,3]}}",
                     "xyz"),
                 "overlapping tensors");
  // Two names for one byte range (aliasing) is an overlap too.
  ExpectRejected(Raw("{\"a\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[0,2]},"
                     "\"b\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[0,2]}}",
                     "xy"),
                 "overlapping tensors");
}

TEST(SafetensorsTest, GapBetweenTensors) {
  ExpectRejected(Raw("{\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]},"
                     "\"b\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[2,3]}}",
                     "xyz"),
                 "gap before tensor: b");
}

TEST(SafetensorsTest, OutOfOrderOffsetsAccepted) {
  absl::StatusOr<Checkpoint> cp =
      ReadBytes(Raw("{\"b\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[2,3]},"
                    "\"e\":{\"dtype\":\"U8\",\"shape\":[0],\"data_offsets\":[2,2]},"
                    "\"a\":{\"dtype\":\"I16\",\"shape\":[],\"data_offsets\":[0,2]}}",
                    "xyz"));
  ASSERT_TRUE(cp.ok()) << cp.status();
  ASSERT_EQ(cp->storages.size(), 3u);
  EXPECT_EQ(cp->root->items[0]->str, "b");  // header order kept
  EXPECT_EQ(cp->storages[0].file_offset, cp->file->size() - 1);
  EXPECT_EQ(cp->storages[2].nbytes, 2u);
  EXPECT_TRUE(cp->root->items[5]->tensor.shape.empty());
}

TEST(SafetensorsTest, MetadataMustBeStringMap) {
  ExpectRejected(Raw("{\"__metadata__\":{\"a\":1}}"), "__metadata__ value is not a string");
  ExpectRejected(Raw("{\"__metadata__\":[]}"), "__metadata__ is not an object");
}

// A tie record gives a second name viewing its partner's storage; the file
// holds the bytes once.
TEST(SafetensorsTest, TieRecordIsASecondViewOfItsPartner) {
  std::vector<SafetensorsEntry> entries = {{"embed.weight", DType::kF32, {2, 3}},
                                           {"norm.bias", DType::kF32, {3}}};
  std::string file = SafetensorsHeader(
      entries, {{"format", "pt"}, {SafetensorsTieKey("head.weight"), "embed.weight"}});
  const size_t header = file.size();
  file += std::string(24, 'e') + std::string(12, 'n');
  absl::StatusOr<Checkpoint> cp = ReadBytes(file);
  ASSERT_TRUE(cp.ok()) << cp.status();
  ASSERT_EQ(cp->root->items.size(), 6u);
  EXPECT_EQ(cp->storages.size(), 2u);  // no storage of its own
  EXPECT_EQ(cp->root->items[4]->str, "head.weight");
  const TensorRecord& head = cp->root->items[5]->tensor;
  const TensorRecord& embed = cp->root->items[1]->tensor;
  EXPECT_EQ(head.storage_index, embed.storage_index);
  EXPECT_EQ(head.shape, embed.shape);
  EXPECT_EQ(head.dtype, DType::kF32);
  EXPECT_EQ(cp->storages[head.storage_index].file_offset, header);
  EXPECT_EQ(cp->TensorStorageBytes(head).substr(0, head.nbytes()), std::string(24, 'e'));
  EXPECT_EQ(cp->metadata.back(), "weightgate.tied_to:head.weight=embed.weight");
}

TEST(SafetensorsTest, BadTieRecordsRejected) {
  const std::string a = "\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}";
  auto with = [&](const std::string& records) {
    return Raw("{\"__metadata__\":{" + records + "}," + a + "}", "x");
  };
  ExpectRejected(with("\"weightgate.tied_to:b\":\"zz\""), "tie record names no tensor");
  ExpectRejected(with("\"weightgate.tied_to:a\":\"a\""), "tied name is already a tensor");
  ExpectRejected(with("\"weightgate.tied_to:\":\"a\""), "bad tied tensor name");
  ExpectRejected(with("\"weightgate.tied_to:__metadata__\":\"a\""), "bad tied tensor name");
  // A tie to a tied name, or the same name tied twice, is no tie to a tensor of the file.
  ExpectRejected(with("\"weightgate.tied_to:b\":\"a\",\"weightgate.tied_to:c\":\"b\""),
                 "tie record names no tensor");
  // Other metadata keys are only metadata.
  absl::StatusOr<Checkpoint> cp = ReadBytes(with("\"tied_to:b\":\"zz\""));
  ASSERT_TRUE(cp.ok()) << cp.status();
  EXPECT_EQ(cp->root->items.size(), 2u);
}

TEST(SafetensorsTest, TieRecordsCountAgainstTheValueBudget) {
  std::vector<std::pair<std::string, std::string>> metadata;
  for (int i = 0; i < 10; ++i)
    metadata.emplace_back(SafetensorsTieKey("t" + std::to_string(i)), "a");
  std::string file = SafetensorsHeader({{"a", DType::kU8, {1}}}, metadata) + "x";
  ReadOptions options;
  options.max_values = 22;  // the JSON fits; 11 tensors (2 * 11 + 1 values) do not
  absl::StatusOr<Checkpoint> cp = ReadBytes(file, options);
  ASSERT_FALSE(cp.ok());
  EXPECT_NE(cp.status().message().find("too many tensors"), std::string::npos) << cp.status();
  options.max_values = 23;
  cp = ReadBytes(file, options);
  ASSERT_TRUE(cp.ok()) << cp.status();
  EXPECT_EQ(cp->root->items.size(), 22u);
}

TEST(SafetensorsTest, DeepNestingRejected) {
  ExpectRejected(Raw("{\"a\":{\"b\":{\"c\":{\"d\":{}}}}}"), "nesting too deep");
  ExpectRejected(Raw(std::string(100000, '[') + std::string(100000, ']')), "nesting too deep");
}

TEST(SafetensorsTest, TooManyTensors) {
  std::vector<SafetensorsEntry> entries;
  for (int i = 0; i < 10; ++i) entries.push_back({std::to_string(i) + "t", DType::kU8, {0}});
  std::string file = SafetensorsHeader(entries, {});
  ReadOptions options;
  options.max_values = 15;
  absl::StatusOr<Checkpoint> cp = ReadBytes(file, options);
  ASSERT_FALSE(cp.ok());
  EXPECT_EQ(cp.status().code(), absl::StatusCode::kInvalidArgument);
  options.max_values = 1000;
  EXPECT_TRUE(ReadBytes(file, options).ok());
}

TEST(SafetensorsTest, LooksLikeSafetensors) {
  EXPECT_TRUE(LooksLikeSafetensors(Raw("{}")));
  EXPECT_FALSE(LooksLikeSafetensors(""));
  EXPECT_FALSE(LooksLikeSafetensors(std::string(8, '\xff') + "{}"));
  EXPECT_FALSE(LooksLikeSafetensors("PK\x03\x04 not safetensors"));
  EXPECT_FALSE(LooksLikeSafetensors(Raw("[]")));
}

TEST(SafetensorsTest, WriterRejectsBadLayouts) {
  std::string path = TempPath("bad");
  auto create = [&](std::vector<SafetensorsEntry> entries,
                    std::vector<std::pair<std::string, std::string>> metadata = {}) {
    return SafetensorsWriter::Create(path, std::move(entries), std::move(metadata)).status();
  };
  EXPECT_FALSE(create({{"a", DType::kF32, {1}}, {"a", DType::kF32, {1}}}).ok());
  EXPECT_FALSE(create({{"", DType::kF32, {1}}}).ok());
  EXPECT_FALSE(create({{"__metadata__", DType::kF32, {1}}}).ok());
  EXPECT_FALSE(create({{"a", DType::kF32, {-1}}}).ok());
  EXPECT_FALSE(create({{"a", DType::kF32, {int64_t{1} << 62, 4}}}).ok());
  EXPECT_FALSE(create({{"\xc0\xaf", DType::kF32, {1}}}).ok());  // overlong '/'
  EXPECT_FALSE(create({{"a", DType::kF32, {1}}}, {{"k", "1"}, {"k", "2"}}).ok());
  EXPECT_FALSE(SafetensorsWriter::Create("/nonexistent/dir/x.safetensors", {}).ok());
  ::unlink(path.c_str());
}

TEST(SafetensorsTest, WriterChecksByteCount) {
  std::string path = TempPath("count");
  std::vector<SafetensorsEntry> entries = {{"a", DType::kI32, {2}}, {"b", DType::kU8, {3}}};
  {
    auto writer = SafetensorsWriter::Create(path, entries);
    ASSERT_TRUE(writer.ok()) << writer.status();
    EXPECT_TRUE((*writer)->Append("12345678").ok());
    EXPECT_FALSE((*writer)->Append("1234").ok());  // 3 bytes left
    EXPECT_TRUE((*writer)->Append("12").ok());
    absl::Status s = (*writer)->Finish();
    EXPECT_FALSE(s.ok());
    EXPECT_NE(s.message().find("10 of 11"), std::string::npos) << s;
    EXPECT_FALSE((*writer)->Finish().ok());
    EXPECT_FALSE((*writer)->Append("x").ok());
  }
  {
    auto writer = SafetensorsWriter::Create(path, entries);
    ASSERT_TRUE(writer.ok());
    EXPECT_TRUE((*writer)->Append("12345678123").ok());
    EXPECT_TRUE((*writer)->Finish().ok());
  }
  std::string bytes = ReadWholeFile(path);
  absl::StatusOr<Checkpoint> cp = ReadBytes(bytes);
  ASSERT_TRUE(cp.ok()) << cp.status();
  EXPECT_EQ(bytes.substr(cp->storages[1].file_offset), "123");
  ::unlink(path.c_str());
}

TEST(SafetensorsTest, WriterStreamsLargeTensors) {
  // 3 MiB in one Append (written straight through) between small ones.
  std::string path = TempPath("large");
  std::vector<SafetensorsEntry> entries = {
      {"small", DType::kU8, {5}}, {"big", DType::kF32, {3, 1 << 18}}, {"tail", DType::kI8, {7}}};
  std::string big(size_t{3} << 20, '\0');
  for (size_t i = 0; i < big.size(); ++i) big[i] = static_cast<char>(i * 131 + 7);
  auto writer = SafetensorsWriter::Create(path, entries);
  ASSERT_TRUE(writer.ok());
  ASSERT_TRUE((*writer)->Append("abcde").ok());
  ASSERT_TRUE((*writer)->Append(big).ok());
  ASSERT_TRUE((*writer)->Append("1234567").ok());
  ASSERT_TRUE((*writer)->Finish().ok());
  absl::StatusOr<std::shared_ptr<const MappedFile>> file = MappedFile::Open(path);
  ASSERT_TRUE(file.ok());
  absl::StatusOr<Checkpoint> cp = ReadSafetensors(*file, {});
  ASSERT_TRUE(cp.ok()) << cp.status();
  const StorageRecord& s = cp->storages[1];
  EXPECT_EQ((*file)->data().substr(s.file_offset, s.nbytes), big);
  EXPECT_EQ((*file)->data().substr(cp->storages[2].file_offset), "1234567");
  ::unlink(path.c_str());
}

}  // namespace
}  // namespace weightgate::checkpoint
