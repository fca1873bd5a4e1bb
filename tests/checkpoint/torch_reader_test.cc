#include "server/checkpoint/torch_reader.h"

#include <algorithm>
#include <map>
#include <string>

#include "gtest/gtest.h"
#include "server/checkpoint/checkpoint.h"
#include "tests/checkpoint/checkpoint_test_util.h"

namespace weightgate::checkpoint {
namespace {

using common::MappedFile;

using Kind = Value::Kind;
using testing::ExpectedTensor;
using testing::FixtureDir;
using testing::GatherTensorBytes;
using testing::ReadExpectedTensors;
using testing::ReadFileBytes;
using testing::Sha256Hex;

struct Case {
  std::string name;
  Format format;
  bool ordered = true;  // TorchScript attribute order need not match state_dict order
};

void PrintTo(const Case& c, std::ostream* os) { *os << c.name; }

class TorchFixture : public ::testing::TestWithParam<Case> {};

// Every tensor torch.load returns is found under the same dotted name, with
// the same dtype, shape, strides and offset, and its bytes gathered through
// our record hash to what torch returned. Storage sharing matches too.
TEST_P(TorchFixture, TensorsMatchTorchLoad) {
  const Case& c = GetParam();
  std::string path = FixtureDir() + "/" + c.name + ".pt";
  absl::StatusOr<Checkpoint> ckpt = ReadCheckpointFile(path);
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  EXPECT_EQ(ckpt->format, c.format);
  EXPECT_FALSE(ckpt->unsafe()) << ckpt->unsafe_globals.front();
  if (c.format != Format::kTorchLegacy) {
    EXPECT_EQ(ckpt->archive_prefix, ReadFileBytes(FixtureDir() + "/" + c.name + ".prefix"));
  }
  std::vector<ExpectedTensor> expected = ReadExpectedTensors(c.name);
  ASSERT_FALSE(expected.empty());
  std::vector<NamedTensor> got = FlattenTensors(ckpt->root);
  std::vector<std::string> got_names, want_names;
  for (const NamedTensor& t : got) got_names.push_back(t.name);
  for (const ExpectedTensor& t : expected) want_names.push_back(t.name);
  if (!c.ordered) {
    std::sort(got_names.begin(), got_names.end());
    std::sort(want_names.begin(), want_names.end());
  }
  ASSERT_EQ(got_names, want_names);

  std::map<std::string, const TensorRecord*> by_name;
  for (const NamedTensor& t : got) by_name[t.name] = t.tensor;
  std::map<int, int> torch_to_ours;
  std::map<int, int> ours_to_torch;
  for (const ExpectedTensor& want : expected) {
    SCOPED_TRACE(want.name);
    const TensorRecord* t = by_name[want.name];
    ASSERT_NE(t, nullptr);
    EXPECT_EQ(DTypeName(t->dtype), want.dtype);
    EXPECT_EQ(t->shape, want.shape);
    EXPECT_EQ(t->strides, want.stride);
    EXPECT_EQ(t->storage_offset, want.offset);
    EXPECT_EQ(Sha256Hex(GatherTensorBytes(*ckpt, *t)), want.sha256);
    if (want.storage >= 0) {
      auto [a, inserted_a] = torch_to_ours.emplace(want.storage, t->storage_index);
      auto [b, inserted_b] = ours_to_torch.emplace(t->storage_index, want.storage);
      EXPECT_EQ(a->second, t->storage_index) << "torch shares a storage we split";
      EXPECT_EQ(b->second, want.storage) << "we share a storage torch splits";
    }
  }
}

INSTANTIATE_TEST_SUITE_P(
    Fixtures, TorchFixture,
    ::testing::Values(Case{"plain", Format::kTorchZip}, Case{"dataparallel", Format::kTorchZip},
                      Case{"training", Format::kTorchZip}, Case{"lightning", Format::kTorchZip},
                      Case{"legacy", Format::kTorchLegacy},
                      Case{"legacy_training", Format::kTorchLegacy},
                      Case{"proto2", Format::kTorchZip}, Case{"proto4", Format::kTorchZip},
                      Case{"dtypes", Format::kTorchZip},
                      Case{"dtypes_legacy", Format::kTorchLegacy}, Case{"edge", Format::kTorchZip},
                      Case{"views", Format::kTorchZip}, Case{"tied", Format::kTorchZip},
                      Case{"parameters", Format::kTorchZip}, Case{"buffer", Format::kTorchZip},
                      Case{"custom.prefix-name", Format::kTorchZip},
                      Case{"torchscript", Format::kTorchScript, false},
                      Case{"small", Format::kTorchZip}, Case{"small_legacy", Format::kTorchLegacy},
                      Case{"deflated", Format::kTorchZip}, Case{"whole_model", Format::kTorchZip}),
    [](const ::testing::TestParamInfo<Case>& info) {
      std::string n = info.param.name;
      std::replace_if(
          n.begin(), n.end(), [](char ch) { return !std::isalnum(ch); }, '_');
      return n;
    });

absl::StatusOr<Checkpoint> Read(const std::string& name) {
  return ReadCheckpointFile(FixtureDir() + "/" + name + ".pt");
}

TEST(TorchReader, StateDictKeepsOrderedDictAndMetadata) {
  absl::StatusOr<Checkpoint> ckpt = Read("dataparallel");
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  ASSERT_EQ(ckpt->root->kind, Kind::kDict);
  EXPECT_EQ(ckpt->root->str, "collections.OrderedDict");
  ASSERT_NE(ckpt->root->state, nullptr);
  EXPECT_NE(ckpt->root->state->Get("_metadata"), nullptr);
  ASSERT_GE(ckpt->root->items.size(), 2u);
  EXPECT_EQ(ckpt->root->items[0]->str.rfind("module.", 0), 0u) << ckpt->root->items[0]->str;
  EXPECT_TRUE(ckpt->opaque_globals.empty());
}

TEST(TorchReader, LightningLayoutReadsWithOpaqueObjects) {
  absl::StatusOr<Checkpoint> ckpt = Read("lightning");
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  const Value* root = ckpt->root;
  ASSERT_NE(root->Get("pytorch-lightning_version"), nullptr);
  EXPECT_EQ(root->Get("pytorch-lightning_version")->str, "2.1.0");
  const Value* hp = root->Get("hyper_parameters");
  ASSERT_NE(hp, nullptr);
  EXPECT_EQ(hp->kind, Kind::kDict);
  EXPECT_EQ(hp->str, "__main__.AttributeDict");
  const Value* args = hp->Get("args");
  ASSERT_NE(args, nullptr);
  EXPECT_EQ(args->kind, Kind::kOpaque);
  EXPECT_EQ(args->str, "argparse.Namespace");
  ASSERT_NE(args->state, nullptr);
  EXPECT_DOUBLE_EQ(args->state->Get("lr")->f, 0.001);
  auto has = [&](const std::string& g) {
    return std::find(ckpt->opaque_globals.begin(), ckpt->opaque_globals.end(), g) !=
           ckpt->opaque_globals.end();
  };
  EXPECT_TRUE(has("argparse.Namespace"));
  EXPECT_TRUE(has("__main__.Stage"));
  // The enum member is getattr(Stage, "TRAIN"): read as an opaque value, not unsafe.
  EXPECT_FALSE(ckpt->unsafe());
  const Value* stage = root->Get("loops")->Get("fit_loop")->Get("stage");
  ASSERT_NE(stage, nullptr);
  EXPECT_EQ(stage->kind, Kind::kOpaque);
}

TEST(TorchReader, ViewsAndTiedWeightsShareOneStorage) {
  absl::StatusOr<Checkpoint> views = Read("views");
  ASSERT_TRUE(views.ok()) << views.status();
  EXPECT_EQ(views->storages.size(), 1u);
  for (const NamedTensor& t : FlattenTensors(views->root)) EXPECT_EQ(t.tensor->storage_index, 0);
  std::map<std::string, bool> contiguous;
  for (const NamedTensor& t : FlattenTensors(views->root))
    contiguous[t.name] = t.tensor->is_contiguous();
  EXPECT_TRUE(contiguous["base"]);
  EXPECT_FALSE(contiguous["transposed"]);
  EXPECT_FALSE(contiguous["slice"]);
  EXPECT_TRUE(contiguous["row_tail"]);

  absl::StatusOr<Checkpoint> tied = Read("tied");
  ASSERT_TRUE(tied.ok()) << tied.status();
  std::vector<NamedTensor> t = FlattenTensors(tied->root);
  ASSERT_EQ(t.size(), 2u);
  EXPECT_EQ(t[0].tensor->storage_index, t[1].tensor->storage_index);
}

TEST(TorchReader, ParametersAreMarked) {
  absl::StatusOr<Checkpoint> ckpt = Read("parameters");
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  std::vector<NamedTensor> t = FlattenTensors(ckpt->root);
  ASSERT_EQ(t.size(), 2u);
  EXPECT_TRUE(t[0].tensor->is_parameter);
  EXPECT_TRUE(t[0].tensor->requires_grad);
  EXPECT_FALSE(t[1].tensor->requires_grad);
}

TEST(TorchReader, TorchScriptModuleAttributesNameParameters) {
  absl::StatusOr<Checkpoint> ckpt = Read("torchscript");
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  EXPECT_EQ(ckpt->format, Format::kTorchScript);
  EXPECT_EQ(ckpt->root->kind, Kind::kOpaque);
  EXPECT_EQ(ckpt->root->str.rfind("__torch__.", 0), 0u) << ckpt->root->str;
  EXPECT_FALSE(ckpt->unsafe());
}

TEST(TorchReader, DeflatedStoragesAreInflatedIntoTheCheckpoint) {
  absl::StatusOr<Checkpoint> ckpt = Read("deflated");
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  ASSERT_FALSE(ckpt->storages.empty());
  for (const StorageRecord& r : ckpt->storages) EXPECT_GE(r.inflated_index, 0);
  EXPECT_EQ(ckpt->inflated.size(), ckpt->storages.size());
}

TEST(TorchReader, WholeModuleReadsAsItsStateDict) {
  absl::StatusOr<Checkpoint> ckpt = Read("whole_model");
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  EXPECT_EQ(ckpt->root->kind, Kind::kDict);
  EXPECT_NE(ckpt->root->Get("bn.num_batches_tracked"), nullptr);
  EXPECT_EQ(ckpt->opaque_globals.front(), "__main__.Net");
  EXPECT_FALSE(ckpt->unsafe()) << ckpt->unsafe_globals.front();
}

TEST(TorchReader, EdgeTensors) {
  absl::StatusOr<Checkpoint> ckpt = Read("edge");
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  std::map<std::string, const TensorRecord*> t;
  for (const NamedTensor& n : FlattenTensors(ckpt->root)) t[n.name] = n.tensor;
  ASSERT_EQ(t.size(), 5u);
  EXPECT_TRUE(t["scalar"]->shape.empty());
  EXPECT_EQ(t["scalar"]->numel(), 1);
  EXPECT_EQ(t["empty"]->numel(), 0);
  EXPECT_EQ(t["empty_2d"]->nbytes(), 0u);
}

TEST(TorchReader, BigEndianLegacyRejected) {
  std::string bytes = ReadFileBytes(FixtureDir() + "/small_legacy.pt");
  size_t at = bytes.find("little_endian");
  ASSERT_NE(at, std::string::npos);
  size_t value = bytes.find('\x88', at);  // NEWTRUE
  ASSERT_NE(value, std::string::npos);
  ASSERT_LT(value - at, 20u);
  bytes[value] = '\x89';  // NEWFALSE
  absl::StatusOr<Checkpoint> ckpt = ReadCheckpoint(MappedFile::FromString(bytes));
  ASSERT_FALSE(ckpt.ok());
  EXPECT_NE(std::string(ckpt.status().message()).find("big-endian"), std::string::npos)
      << ckpt.status();
}

TEST(TorchReader, LegacyStorageCountMustMatchItsTensors) {
  std::string bytes = ReadFileBytes(FixtureDir() + "/small_legacy.pt");
  // The last storage is 6 float32 (24 bytes) preceded by its count, 6.
  ASSERT_GT(bytes.size(), 32u);
  size_t count_at = bytes.size() - 24 - 8;
  ASSERT_EQ(bytes[count_at], '\x06');
  bytes[count_at] = '\x05';
  absl::StatusOr<Checkpoint> ckpt = ReadCheckpoint(MappedFile::FromString(bytes));
  ASSERT_FALSE(ckpt.ok());
  EXPECT_NE(std::string(ckpt.status().message()).find("has 5 elements"), std::string::npos)
      << ckpt.status();
}

TEST(TorchReader, NotACheckpoint) {
  absl::StatusOr<Checkpoint> ckpt = ReadCheckpoint(MappedFile::FromString("hello world"));
  ASSERT_FALSE(ckpt.ok());
  EXPECT_EQ(ckpt.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(std::string(ckpt.status().message()).rfind("not a checkpoint", 0), 0u);
  EXPECT_FALSE(ReadCheckpoint(MappedFile::FromString("")).ok());
}

TEST(TorchReader, StorageBytesPointIntoTheFile) {
  absl::StatusOr<Checkpoint> ckpt = Read("small");
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  for (const StorageRecord& r : ckpt->storages) {
    EXPECT_EQ(r.inflated_index, -1);
    EXPECT_LE(r.file_offset + r.nbytes, ckpt->file->size());
  }
  std::vector<NamedTensor> t = FlattenTensors(ckpt->root);
  ASSERT_EQ(t.size(), 2u);
  std::string_view w = ckpt->TensorStorageBytes(*t[0].tensor);
  EXPECT_EQ(w.data(), ckpt->file->data().data() + ckpt->storages[0].file_offset);
  EXPECT_TRUE(LooksLikeTorchLegacy(ReadFileBytes(FixtureDir() + "/small_legacy.pt")));
  EXPECT_FALSE(LooksLikeTorchLegacy(ReadFileBytes(FixtureDir() + "/small.pt")));
}

TEST(TorchReader, QuantizedAndSparseRejectedClearly) {
  absl::StatusOr<Checkpoint> q = ReadCheckpointFile(FixtureDir() + "/hostile/quantized.pt");
  ASSERT_FALSE(q.ok());
  EXPECT_NE(std::string(q.status().message()).find("quantized tensors are not supported"),
            std::string::npos)
      << q.status();
  absl::StatusOr<Checkpoint> s = ReadCheckpointFile(FixtureDir() + "/hostile/sparse.pt");
  ASSERT_FALSE(s.ok());
  EXPECT_NE(std::string(s.status().message()).find("sparse tensors are not supported"),
            std::string::npos)
      << s.status();
}

}  // namespace
}  // namespace weightgate::checkpoint
