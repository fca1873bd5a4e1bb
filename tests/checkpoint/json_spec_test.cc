// JSON specs: a spec written by Debian's python3 from a real torch module's
// state_dict reads back with the same names, order, dtypes and shapes; bad
// specs fail with the reason they pin.
#include "server/checkpoint/json_spec.h"

#include <fstream>
#include <string>
#include <vector>

#include "common/mapped_file.h"
#include "gtest/gtest.h"
#include "tests/checkpoint/zip_fixtures.h"

namespace weightgate::checkpoint {
namespace {

using common::MappedFile;

using ::weightgate::checkpoint::testing::FixtureDir;
using ::weightgate::checkpoint::testing::SplitTabs;

absl::StatusOr<Checkpoint> ReadText(std::string text, const ReadOptions& options = {}) {
  return ReadJsonSpec(MappedFile::FromString(std::move(text)), options);
}

void ExpectRejected(const std::string& text, const std::string& reason) {
  absl::StatusOr<Checkpoint> cp = ReadText(text);
  ASSERT_FALSE(cp.ok()) << "accepted; expected: " << reason;
  EXPECT_EQ(cp.status().code(), absl::StatusCode::kInvalidArgument);
  std::string message(cp.status().message());
  EXPECT_EQ(message.rfind("json_spec: ", 0), 0u) << message;
  EXPECT_NE(message.find(reason), std::string::npos) << message;
}

std::vector<int64_t> ParseShape(const std::string& s) {
  std::vector<int64_t> shape;
  size_t start = 0;
  while (start < s.size()) {
    size_t comma = s.find(',', start);
    if (comma == std::string::npos) comma = s.size();
    shape.push_back(std::stoll(s.substr(start, comma - start)));
    start = comma + 1;
  }
  return shape;
}

TEST(JsonSpecTest, SpecFromTorchStateDictMatches) {
  ASSERT_FALSE(FixtureDir().empty());
  absl::StatusOr<std::shared_ptr<const MappedFile>> file =
      MappedFile::Open(FixtureDir() + "/spec.json");
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_TRUE(LooksLikeJsonSpec((*file)->data()));
  absl::StatusOr<Checkpoint> cp = ReadJsonSpec(*file, {});
  ASSERT_TRUE(cp.ok()) << cp.status();
  EXPECT_EQ(cp->format, Format::kJsonSpec);
  EXPECT_TRUE(cp->storages.empty());
  EXPECT_EQ(cp->metadata, std::vector<std::string>{"source=torch.nn.Sequential"});

  std::ifstream in(FixtureDir() + "/spec.tsv");
  std::string line;
  size_t i = 0;
  ASSERT_NE(cp->root, nullptr);
  ASSERT_EQ(cp->root->kind, Value::Kind::kDict);
  while (std::getline(in, line)) {
    std::vector<std::string> f = SplitTabs(line);
    ASSERT_EQ(f.size(), 3u) << line;
    SCOPED_TRACE(f[0]);
    ASSERT_LT(2 * i + 1, cp->root->items.size());
    const Value* key = cp->root->items[2 * i];
    const Value* value = cp->root->items[2 * i + 1];
    EXPECT_EQ(key->kind, Value::Kind::kString);
    EXPECT_EQ(key->str, f[0]);
    ASSERT_EQ(value->kind, Value::Kind::kTensor);
    EXPECT_EQ(value->tensor.dtype, DTypeFromTorchName(f[1]));
    EXPECT_EQ(value->tensor.shape, ParseShape(f[2]));
    EXPECT_EQ(value->tensor.storage_index, -1);
    EXPECT_EQ(value->tensor.storage_offset, 0);
    EXPECT_EQ(value->tensor.strides.size(), value->tensor.shape.size());
    ++i;
  }
  EXPECT_EQ(i, 9u);  // Conv2d 2 + BatchNorm2d 5 + Linear 2
  EXPECT_EQ(2 * i, cp->root->items.size());
}

TEST(JsonSpecTest, DetectedByReadCheckpoint) {
  ASSERT_FALSE(FixtureDir().empty());
  absl::StatusOr<Checkpoint> cp = ReadCheckpointFile(FixtureDir() + "/spec.json");
  ASSERT_TRUE(cp.ok()) << cp.status();
  EXPECT_EQ(cp->format, Format::kJsonSpec);
  EXPECT_EQ(cp->root->items.size(), 18u);
}

TEST(JsonSpecTest, DtypeNamesInEveryCommonSpelling) {
  struct Case {
    const char* name;
    DType dtype;
  };
  const Case cases[] = {
      {"F32", DType::kF32},       {"f32", DType::kF32},
      {"float32", DType::kF32},   {"torch.float32", DType::kF32},
      {"Float", DType::kF32},     {"BF16", DType::kBF16},
      {"bfloat16", DType::kBF16}, {"half", DType::kF16},
      {"F16", DType::kF16},       {"float64", DType::kF64},
      {"double", DType::kF64},    {"I64", DType::kI64},
      {"long", DType::kI64},      {"int32", DType::kI32},
      {"int", DType::kI32},       {"I16", DType::kI16},
      {"int8", DType::kI8},       {"uint8", DType::kU8},
      {"U8", DType::kU8},         {"bool", DType::kBool},
      {"BOOL", DType::kBool},     {"complex64", DType::kC64},
      {"cdouble", DType::kC128},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    absl::StatusOr<Checkpoint> cp = ReadText(std::string("{\"tensors\": {\"x\": {\"dtype\": \"") +
                                             c.name + "\", \"shape\": [2]}}}");
    ASSERT_TRUE(cp.ok()) << cp.status();
    EXPECT_EQ(cp->root->items[1]->tensor.dtype, c.dtype);
  }
}

TEST(JsonSpecTest, ContiguousStridesAndOrderKept) {
  absl::StatusOr<Checkpoint> cp = ReadText(
      R"({"tensors": {"z": {"dtype": "F32", "shape": [2, 3, 4]},
                      "a": {"dtype": "F32", "shape": []},
                      "m": {"dtype": "F32", "shape": [0, 5]}}})");
  ASSERT_TRUE(cp.ok()) << cp.status();
  ASSERT_EQ(cp->root->items.size(), 6u);
  EXPECT_EQ(cp->root->items[0]->str, "z");
  EXPECT_EQ(cp->root->items[2]->str, "a");
  EXPECT_EQ(cp->root->items[4]->str, "m");
  EXPECT_EQ(cp->root->items[1]->tensor.strides, (std::vector<int64_t>{12, 4, 1}));
  EXPECT_TRUE(cp->root->items[3]->tensor.strides.empty());
  EXPECT_EQ(cp->root->items[5]->tensor.strides, (std::vector<int64_t>{5, 1}));
}

TEST(JsonSpecTest, UnknownDtypeRejected) {
  ExpectRejected(R"({"tensors": {"x": {"dtype": "float8", "shape": [1]}}})",
                 "unknown dtype float8");
  ExpectRejected(R"({"tensors": {"x": {"dtype": "qint8", "shape": [1]}}})", "unknown dtype");
}

TEST(JsonSpecTest, MissingFieldsRejected) {
  ExpectRejected(R"({"tensors": {"x": {"shape": [1]}}})", "missing dtype: x");
  ExpectRejected(R"({"tensors": {"x": {"dtype": "F32"}}})", "missing shape: x");
  ExpectRejected(R"({"tensors": {"x": {"dtype": "F32", "shape": 3}}})", "missing shape: x");
  ExpectRejected(R"({"tensors": {"x": [1]}})", "tensor entry is not an object");
  ExpectRejected(R"({"model": {}})", "no \"tensors\" member");
  ExpectRejected(R"({"tensors": []})", "\"tensors\" is not an object");
  ExpectRejected(R"([])", "document is not an object");
}

TEST(JsonSpecTest, BadDimensionsRejected) {
  ExpectRejected(R"({"tensors": {"x": {"dtype": "F32", "shape": [-1]}}})", "bad dimension");
  ExpectRejected(R"({"tensors": {"x": {"dtype": "F32", "shape": [2.5]}}})", "bad dimension");
  ExpectRejected(R"({"tensors": {"x": {"dtype": "F32", "shape": ["2"]}}})", "bad dimension");
}

TEST(JsonSpecTest, ShapeOverflow) {
  ExpectRejected(R"({"tensors": {"x": {"dtype": "F32", "shape": [4611686018427387904, 4]}}})",
                 "shape overflows");
  ExpectRejected(
      R"({"tensors": {"x": {"dtype": "U8", "shape": [0, 4611686018427387904, 4611686018427387904]}}})",
      "shape overflows");
}

TEST(JsonSpecTest, DuplicateTensorNameRejected) {
  ExpectRejected(R"({"tensors": {"x": {"dtype": "F32", "shape": [1]},
                                 "x": {"dtype": "F16", "shape": [1]}}})",
                 "duplicate object key");
}

TEST(JsonSpecTest, EmptyNameRejected) {
  ExpectRejected(R"({"tensors": {"": {"dtype": "F32", "shape": [1]}}})", "empty tensor name");
}

TEST(JsonSpecTest, MalformedJsonRejected) {
  ExpectRejected(R"({"tensors": {"x": {"dtype": "F32", "shape": [1]},}})", "json: ");
  ExpectRejected(R"({"tensors": {}} // comment)", "json: trailing characters");
  ExpectRejected("", "json: unexpected end of input");
}

TEST(JsonSpecTest, SizeCapApplied) {
  ReadOptions options;
  options.max_safetensors_header = 20;
  absl::StatusOr<Checkpoint> cp =
      ReadText(R"({"tensors": {"x": {"dtype": "F32", "shape": [1]}}})", options);
  ASSERT_FALSE(cp.ok());
  EXPECT_NE(cp.status().message().find("exceeds cap"), std::string::npos);
}

TEST(JsonSpecTest, LooksLikeJsonSpec) {
  EXPECT_TRUE(LooksLikeJsonSpec(R"({"tensors": {}})"));
  EXPECT_TRUE(LooksLikeJsonSpec("\xef\xbb\xbf\n  {\n \"metadata\": {}, \"tensors\": {}}"));
  EXPECT_FALSE(LooksLikeJsonSpec(R"({"weights": {}})"));
  EXPECT_FALSE(LooksLikeJsonSpec("[\"tensors\"]"));
  EXPECT_FALSE(LooksLikeJsonSpec(""));
  // A safetensors file whose header length starts with 0x7b ('{').
  std::string safetensors("\x7b\0\0\0\0\0\0\0", 8);
  safetensors += R"({"tensors":{"dtype":"F32","shape":[0],"data_offsets":[0,0]}})";
  EXPECT_FALSE(LooksLikeJsonSpec(safetensors));
}

}  // namespace
}  // namespace weightgate::checkpoint
