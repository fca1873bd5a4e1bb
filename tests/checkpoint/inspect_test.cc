#include "server/checkpoint/inspect.h"

#include <algorithm>
#include <string>

#include "gtest/gtest.h"
#include "server/checkpoint/json.h"
#include "tests/checkpoint/checkpoint_test_util.h"

namespace weightgate::checkpoint {
namespace {

using common::MappedFile;

using testing::FixtureDir;
using testing::ReadExpectedTensors;

Inspection InspectFixture(const std::string& name) {
  absl::StatusOr<Checkpoint> ckpt = ReadCheckpointFile(FixtureDir() + "/" + name);
  EXPECT_TRUE(ckpt.ok()) << ckpt.status();
  if (!ckpt.ok()) return {};
  return Inspect(*ckpt);
}

bool Contains(const std::vector<std::string>& v, const std::string& s) {
  return std::find(v.begin(), v.end(), s) != v.end();
}

TEST(Inspect, PlainStateDictSitsAtTopLevel) {
  Inspection in = InspectFixture("plain.pt");
  EXPECT_EQ(in.format, Format::kTorchZip);
  EXPECT_EQ(in.archive_prefix, "plain");
  EXPECT_TRUE(in.state_dict_found);
  EXPECT_EQ(in.state_dict_path, "");
  EXPECT_TRUE(in.wrappers.empty());
  EXPECT_EQ(in.tensors.size(), ReadExpectedTensors("plain").size());
  EXPECT_EQ(in.other_tensors, 0u);
  EXPECT_TRUE(Contains(in.top_level_keys, "conv.weight"));
  uint64_t total = 0;
  for (const InspectedTensor& t : in.tensors) total += t.nbytes;
  EXPECT_EQ(total, in.total_tensor_bytes);
  EXPECT_GT(total, 0u);
}

TEST(Inspect, DataParallelModulePrefixIsAWrapper) {
  Inspection in = InspectFixture("dataparallel.pt");
  EXPECT_EQ(in.wrappers, std::vector<std::string>{"module."});
}

TEST(Inspect, TrainingScriptStateDictUnderItsKey) {
  Inspection in = InspectFixture("training.pt");
  EXPECT_EQ(in.state_dict_path, "state_dict");
  EXPECT_EQ(in.tensors.size(), ReadExpectedTensors("plain").size());
  EXPECT_GT(in.other_tensors, 0u);  // Adam's exp_avg / exp_avg_sq / step
  EXPECT_TRUE(Contains(in.top_level_keys, "optimizer"));
  EXPECT_TRUE(in.wrappers.empty());
}

TEST(Inspect, LightningModelPrefixAndOpaqueGlobals) {
  Inspection in = InspectFixture("lightning.pt");
  EXPECT_EQ(in.state_dict_path, "state_dict");
  EXPECT_EQ(in.wrappers, std::vector<std::string>{"model."});
  EXPECT_TRUE(Contains(in.opaque_globals, "argparse.Namespace"));
  EXPECT_FALSE(in.unsafe());
}

TEST(Inspect, TiedWeightsAreASharedStorage) {
  Inspection in = InspectFixture("tied.pt");
  ASSERT_EQ(in.shared_storages.size(), 1u);
  EXPECT_EQ(in.shared_storages[0].tensors,
            (std::vector<std::string>{"embed.weight", "head.weight"}));
}

TEST(Inspect, ViewsAreNonContiguous) {
  Inspection in = InspectFixture("views.pt");
  EXPECT_TRUE(Contains(in.non_contiguous, "transposed"));
  EXPECT_TRUE(Contains(in.non_contiguous, "slice"));
  EXPECT_FALSE(Contains(in.non_contiguous, "base"));
  ASSERT_EQ(in.shared_storages.size(), 1u);
  EXPECT_EQ(in.shared_storages[0].tensors.size(), 6u);
}

TEST(Inspect, TorchScriptParameters) {
  Inspection in = InspectFixture("torchscript.pt");
  EXPECT_EQ(in.format, Format::kTorchScript);
  EXPECT_TRUE(in.state_dict_found);
  EXPECT_EQ(in.tensors.size(), ReadExpectedTensors("torchscript").size());
}

TEST(Inspect, LegacyFormat) {
  Inspection in = InspectFixture("legacy.pt");
  EXPECT_EQ(in.format, Format::kTorchLegacy);
  EXPECT_EQ(in.tensors.size(), ReadExpectedTensors("legacy").size());
}

TEST(Inspect, HostileZipIsUnsafe) {
  Inspection in = InspectFixture("hostile/zip_reduce.pt");
  EXPECT_TRUE(in.unsafe());
  EXPECT_TRUE(Contains(in.unsafe_globals, "posix.system"));
}

TEST(Inspect, SafetensorsAndJsonSpec) {
  std::string header =
      R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"__metadata__":{"k":"v"}})";
  std::string st;
  for (int k = 0; k < 8; ++k) st.push_back(static_cast<char>((header.size() >> (8 * k)) & 0xFF));
  st += header + std::string(8, '\0');
  absl::StatusOr<Checkpoint> a = ReadCheckpoint(MappedFile::FromString(st));
  ASSERT_TRUE(a.ok()) << a.status();
  Inspection ia = Inspect(*a);
  EXPECT_EQ(ia.format, Format::kSafetensors);
  ASSERT_EQ(ia.tensors.size(), 1u);
  EXPECT_EQ(ia.tensors[0].name, "w");
  EXPECT_EQ(ia.tensors[0].nbytes, 8u);

  absl::StatusOr<Checkpoint> b = ReadCheckpoint(
      MappedFile::FromString(R"({"tensors": {"fc.weight": {"dtype": "F16", "shape": [3, 4]}}})"));
  ASSERT_TRUE(b.ok()) << b.status();
  Inspection ib = Inspect(*b);
  EXPECT_EQ(ib.format, Format::kJsonSpec);
  ASSERT_EQ(ib.tensors.size(), 1u);
  EXPECT_EQ(ib.tensors[0].shape, (std::vector<int64_t>{3, 4}));
  EXPECT_TRUE(ParseJson(RenderInspectionJson(ib)).ok());
  EXPECT_NE(RenderInspectionText(ib).find("json_spec"), std::string::npos);
}

TEST(Inspect, JsonParsesAndCarriesTheFields) {
  Inspection in = InspectFixture("lightning.pt");
  std::string json = RenderInspectionJson(in);
  absl::StatusOr<JsonValue> v = ParseJson(json);
  ASSERT_TRUE(v.ok()) << v.status() << "\n" << json;
  EXPECT_EQ(v->Find("format")->text, "torch_zip");
  EXPECT_EQ(v->Find("state_dict")->Find("path")->text, "state_dict");
  EXPECT_EQ(v->Find("tensors")->items.size(), in.tensors.size());
  EXPECT_EQ(v->Find("wrappers")->items[0].text, "model.");
  EXPECT_EQ(v->Find("unsafe")->boolean, false);
  const JsonValue& t0 = v->Find("tensors")->items[0];
  EXPECT_EQ(t0.Find("name")->text, in.tensors[0].name);
  EXPECT_EQ(t0.Find("bytes")->AsUint64(), in.tensors[0].nbytes);
}

TEST(Inspect, JsonEscapesHostileNames) {
  Inspection in;
  in.file = "a\"b\\c\n\x01";
  in.opaque_globals = {"bad\xff\xfeutf8", "ok \xe6\x97\xa5"};
  in.top_level_keys = {std::string("nul\0x", 5)};
  std::string json = RenderInspectionJson(in);
  absl::StatusOr<JsonValue> v = ParseJson(json);
  ASSERT_TRUE(v.ok()) << v.status() << "\n" << json;
  EXPECT_EQ(v->Find("file")->text, "a\"b\\c\n\x01");
  EXPECT_EQ(v->Find("opaque_globals")->items[0].text, "bad\xef\xbf\xbd\xef\xbf\xbdutf8");
  EXPECT_EQ(v->Find("opaque_globals")->items[1].text, "ok \xe6\x97\xa5");
  EXPECT_EQ(v->Find("top_level_keys")->items[0].text, std::string("nul\0x", 5));
}

TEST(Inspect, TextTableNamesEveryTensor) {
  Inspection in = InspectFixture("training.pt");
  std::string text = RenderInspectionText(in);
  EXPECT_NE(text.find("torch_zip"), std::string::npos);
  EXPECT_NE(text.find("'state_dict'"), std::string::npos);
  for (const InspectedTensor& t : in.tensors) EXPECT_NE(text.find(t.name), std::string::npos);
}

// weights_only agrees with what Debian's torch 1.13 did with each fixture
// (make_checkpoint_fixtures.py records it), both ways.
TEST(Inspect, WeightsOnlyAgreesWithTorch) {
  int loads = 0;
  int refused = 0;
  for (const char* name : {"plain", "small", "legacy", "tied", "views", "dtypes", "proto2",
                           "proto4", "lightning", "training", "whole_model", "dataparallel",
                           "legacy_training", "parameters", "buffer", "edge"}) {
    std::string expected = testing::ReadFileBytes(FixtureDir() + "/" + name + ".weights_only");
    ASSERT_FALSE(expected.empty()) << name;
    Inspection in = InspectFixture(std::string(name) + ".pt");
    const bool torch_loads = expected.rfind("loads", 0) == 0;
    EXPECT_EQ(in.weights_only,
              torch_loads ? Inspection::WeightsOnly::kLoads : Inspection::WeightsOnly::kRefused)
        << name;
    EXPECT_EQ(in.weights_only_blockers.empty(), torch_loads) << name;
    (torch_loads ? loads : refused) += 1;
  }
  EXPECT_GT(loads, 0);
  EXPECT_GT(refused, 0);
}

TEST(Inspect, LightningNamespaceIsDataButMainClassesAreCalls) {
  Inspection in = InspectFixture("lightning.pt");
  for (const std::string& g : in.called_globals) {
    EXPECT_NE(g, "argparse.Namespace");
    EXPECT_NE(g, "collections.OrderedDict");
  }
  std::string text = RenderInspectionText(in);
  EXPECT_NE(text.find("weights_only"), std::string::npos);
  EXPECT_NE(text.find("read budget"), std::string::npos);
  absl::StatusOr<JsonValue> v = ParseJson(RenderInspectionJson(in));
  ASSERT_TRUE(v.ok()) << v.status();
  EXPECT_EQ(v->Find("weights_only")->text, "refused");
  EXPECT_GT(v->Find("read_budget")->Find("used")->AsUint64(), 0u);
  EXPECT_LE(v->Find("read_budget")->Find("used")->AsUint64(),
            v->Find("read_budget")->Find("limit")->AsUint64());
}

}  // namespace
}  // namespace weightgate::checkpoint
