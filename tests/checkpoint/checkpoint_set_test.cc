// Multi-file checkpoints read as one: HF sharded (both index formats and an
// un-indexed series) and torch.distributed.checkpoint (torch 1.13's writer
// and the torch >= 2.0 layout), against the tensors torch wrote; broken sets
// fail with a reason that names what is wrong.
#include "server/checkpoint/checkpoint_set.h"

#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <iterator>
#include <map>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "server/checkpoint/checkpoint.h"
#include "server/checkpoint/hf_sharded.h"
#include "server/checkpoint/inspect.h"
#include "server/checkpoint/megatron_reader.h"
#include "server/checkpoint/set_bundle.h"
#include "tests/checkpoint/checkpoint_test_util.h"
#include "tests/checkpoint/set_fixtures.h"

namespace weightgate::checkpoint {
namespace {

using testing::FileExists;
using testing::GatherTensorBytes;
using testing::Sha256Hex;

using testing::Fx;
using testing::SetFixtureDir;

struct Expected {
  std::string dtype;
  std::string shape;
  std::string sha256;
};

std::map<std::string, Expected> ReadExpected(const std::string& layout) {
  std::map<std::string, Expected> out;
  std::ifstream in(Fx(layout + ".expected.tsv"));
  std::string line;
  while (std::getline(in, line)) {
    std::stringstream ss(line);
    std::string name;
    Expected e;
    std::getline(ss, name, '\t');
    std::getline(ss, e.dtype, '\t');
    std::getline(ss, e.shape, '\t');
    std::getline(ss, e.sha256, '\t');
    out[name] = e;
  }
  return out;
}

std::string Shape(const std::vector<int64_t>& shape) {
  std::string s;
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? "," : "") + std::to_string(shape[i]);
  return s;
}

// Every tensor torch wrote is there, once, with its bytes (under `key` of
// the root when given).
void ExpectSameTensors(const std::string& layout, const std::string& path,
                       const std::string& key = "", bool no_opaque = true,
                       const ReadOptions& options = {}) {
  std::map<std::string, Expected> expected = ReadExpected(layout);
  ASSERT_FALSE(expected.empty()) << layout;
  absl::StatusOr<Checkpoint> ckpt = ReadCheckpointFile(path, options);
  ASSERT_TRUE(ckpt.ok()) << path << ": " << ckpt.status();
  if (no_opaque) {
    EXPECT_TRUE(ckpt->opaque_globals.empty()) << ckpt->opaque_globals.front();
  }
  EXPECT_FALSE(ckpt->unsafe());
  const Value* root = key.empty() ? ckpt->root : ckpt->root->Get(key);
  ASSERT_NE(root, nullptr) << key;
  std::vector<NamedTensor> tensors = FlattenTensors(root);
  EXPECT_EQ(tensors.size(), expected.size());
  for (const NamedTensor& t : tensors) {
    auto it = expected.find(t.name);
    ASSERT_NE(it, expected.end()) << "unexpected " << t.name;
    EXPECT_EQ(DTypeName(t.tensor->dtype), it->second.dtype) << t.name;
    EXPECT_EQ(Shape(t.tensor->shape), it->second.shape) << t.name;
    EXPECT_EQ(Sha256Hex(GatherTensorBytes(*ckpt, *t.tensor)), it->second.sha256) << t.name;
  }
}

bool HasMetadata(const Checkpoint& ckpt, const std::string& entry) {
  for (const std::string& m : ckpt.metadata) {
    if (m == entry) return true;
  }
  return false;
}

void ExpectError(const std::string& path, const std::string& needle,
                 const ReadOptions& options = {}) {
  absl::StatusOr<Checkpoint> ckpt = ReadCheckpointFile(path, options);
  ASSERT_FALSE(ckpt.ok()) << path;
  EXPECT_EQ(ckpt.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(std::string(ckpt.status().message()).find(needle), std::string::npos)
      << ckpt.status().message();
}

TEST(CheckpointSetTest, HfBinIndexDirectory) { ExpectSameTensors("hf_bin", Fx("hf_bin")); }

TEST(CheckpointSetTest, HfBinIndexFile) {
  ExpectSameTensors("hf_bin", Fx("hf_bin/pytorch_model.bin.index.json"));
}

TEST(CheckpointSetTest, HfSafetensorsIndex) {
  ExpectSameTensors("hf_st", Fx("hf_st"));
  ExpectSameTensors("hf_st", Fx("hf_st/model.safetensors.index.json"));
}

TEST(CheckpointSetTest, HfSeriesWithoutIndex) { ExpectSameTensors("hf_series", Fx("hf_series")); }

TEST(CheckpointSetTest, OneShardAloneIsOneFile) {
  absl::StatusOr<Checkpoint> ckpt =
      ReadCheckpointFile(Fx("hf_st/model-00001-of-00002.safetensors"));
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  EXPECT_LT(FlattenTensors(ckpt->root).size(), ReadExpected("hf_st").size());
}

TEST(CheckpointSetTest, MergedStoragesPointIntoEveryShard) {
  absl::StatusOr<Checkpoint> ckpt = ReadCheckpointFile(Fx("hf_bin"));
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  EXPECT_EQ(ckpt->more_files.size(), 2u);
  Inspection in = Inspect(*ckpt);
  EXPECT_TRUE(in.state_dict_found);
  EXPECT_EQ(in.tensors.size(), ReadExpected("hf_bin").size());
  EXPECT_NE(RenderInspectionText(in).find("set_layout=hf_index, set_files=3"), std::string::npos)
      << RenderInspectionText(in);
}

TEST(CheckpointSetTest, MissingShard) {
  ExpectError(Fx("hf_missing_shard"), "missing shard pytorch_model-00002-of-00003.bin");
}

TEST(CheckpointSetTest, ExtraShard) {
  ExpectError(Fx("hf_extra_shard"), "extra shard model-00002-of-00002.safetensors");
}

TEST(CheckpointSetTest, TensorNamedByIndexAbsentFromShard) {
  ExpectError(Fx("hf_absent_tensor"),
              "tensor lm_head.weight named by model.safetensors.index.json "
              "is absent from its shard model-00001-of-00002.safetensors");
}

TEST(CheckpointSetTest, TotalSizeMismatch) {
  ExpectError(Fx("hf_total_size"), "metadata.total_size");
}

TEST(CheckpointSetTest, SeriesMissingShard) {
  ExpectError(Fx("series_missing"), "missing shard 2 of 3");
}

TEST(CheckpointSetTest, ShardNames) {
  ShardName s;
  ASSERT_TRUE(ParseShardName("pytorch_model-00002-of-00003.bin", &s));
  EXPECT_EQ(s.stem, "pytorch_model");
  EXPECT_EQ(s.k, 2);
  EXPECT_EQ(s.n, 3);
  EXPECT_EQ(s.ext, "bin");
  EXPECT_FALSE(ParseShardName("model-00004-of-00003.safetensors", &s));
  EXPECT_FALSE(ParseShardName("model-0001-of-0003.safetensors", &s));
  EXPECT_FALSE(ParseShardName("model-00001-of-00003", &s));
  EXPECT_FALSE(ParseShardName("-00001-of-00003.bin", &s));
}

TEST(CheckpointSetTest, PlainFileNames) {
  EXPECT_TRUE(IsPlainFileName("__0_0.distcp"));
  EXPECT_FALSE(IsPlainFileName("../x.bin"));
  EXPECT_FALSE(IsPlainFileName("a/b.bin"));
  EXPECT_FALSE(IsPlainFileName(".."));
  EXPECT_FALSE(IsPlainFileName(""));
  EXPECT_FALSE(IsPlainFileName(std::string("a\0b", 3)));
}

TEST(DcpTest, Torch113Writer) { ExpectSameTensors("dcp_113", Fx("dcp_113")); }

TEST(DcpTest, MetadataFileNamesTheDirectory) {
  ExpectSameTensors("dcp_113", Fx("dcp_113/.metadata"));
}

TEST(DcpTest, Torch2LayoutRowColumnAndGridSharded) {
  ExpectSameTensors("dcp_v2", Fx("dcp_v2"));
  absl::StatusOr<Checkpoint> ckpt = ReadCheckpointFile(Fx("dcp_v2"));
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  bool counted = false;
  for (const std::string& m : ckpt->metadata) counted = counted || m == "dcp_bytes_entries=1";
  EXPECT_TRUE(counted);
}

TEST(DcpTest, OverlappingChunks) {
  ExpectError(Fx("dcp_overlap"), "embed.weight: overlapping chunks");
}

TEST(DcpTest, MissingChunk) { ExpectError(Fx("dcp_gap"), "proj.weight: missing chunks"); }

TEST(DcpTest, ChunkOutsideTensor) { ExpectError(Fx("dcp_outside"), "norm.weight: chunk"); }

TEST(DcpTest, MissingRankFile) {
  ExpectError(Fx("dcp_missing_file"), "missing storage file __1_0.distcp");
}

TEST(ModulePickleTest, YoloHalfModelReadsAsStateDict) {
  ExpectSameTensors("yolo", Fx("yolo.pt"), "model", /*no_opaque=*/false);
  absl::StatusOr<Checkpoint> ckpt = ReadCheckpointFile(Fx("yolo.pt"));
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  Inspection in = Inspect(*ckpt);
  EXPECT_TRUE(in.state_dict_found);
  EXPECT_EQ(in.state_dict_path, "model");
  EXPECT_EQ(in.tensors.size(), ReadExpected("yolo").size());
  bool noted = false;
  for (const std::string& m : ckpt->metadata) noted = noted || m == "module_pickle=model";
  EXPECT_TRUE(noted);
  // Neither the plain attribute tensor nor the non-persistent buffer.
  const Value* sd = ckpt->root->Get("model");
  EXPECT_EQ(sd->Get("stride"), nullptr);
  EXPECT_EQ(sd->Get("model.2.grid"), nullptr);
  EXPECT_NE(sd->Get("model.2.anchors"), nullptr);
}

TEST(ModulePickleTest, EmaModule) {
  ExpectSameTensors("yolo_ema", Fx("yolo_ema.pt"), "ema", /*no_opaque=*/false);
  absl::StatusOr<Checkpoint> ckpt = ReadCheckpointFile(Fx("yolo_ema.pt"));
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  EXPECT_EQ(Inspect(*ckpt).state_dict_path, "ema");
}

TEST(ModulePickleTest, ModuleAtTheRoot) {
  ExpectSameTensors("yolo_ema", Fx("module_root.pt"), "", /*no_opaque=*/false);
}

TEST(ZeroTest, Stage1Fp32MasterWeights) {
  ExpectSameTensors("zero1", Fx("zero1"));
  absl::StatusOr<Checkpoint> ckpt = ReadCheckpointFile(Fx("zero1"));
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  EXPECT_TRUE(HasMetadata(*ckpt, "zero_weights=fp32"));
  EXPECT_TRUE(HasMetadata(*ckpt, "zero_stage=1"));
}

TEST(ZeroTest, Stage2FrozenAndSharedParams) {
  ExpectSameTensors("zero2", Fx("zero2"));
  // The tag directory itself reads the same.
  ExpectSameTensors("zero2", Fx("zero2/global_step10"));
  absl::StatusOr<Checkpoint> ckpt = ReadCheckpointFile(Fx("zero2"));
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  const Value* tied = ckpt->root->Get("tied.weight");
  const Value* proj = ckpt->root->Get("proj.weight");
  ASSERT_NE(tied, nullptr);
  ASSERT_NE(proj, nullptr);
  EXPECT_EQ(tied->tensor.storage_index, proj->tensor.storage_index);
}

TEST(ZeroTest, Stage2ModuleWeightsByPolicy) {
  ReadOptions options;
  options.zero_weights = ZeroWeights::kModule;
  ExpectSameTensors("zero2_module", Fx("zero2"), "", true, options);
}

TEST(ZeroTest, Stage3PaddedPartitionsAcrossThreeRanks) {
  ExpectSameTensors("zero3", Fx("zero3"));
  ReadOptions options;
  options.zero_weights = ZeroWeights::kModule;
  ExpectError(Fx("zero3"), "stage 3 partitions module weights", options);
}

TEST(ZeroTest, MissingRank) {
  ExpectError(Fx("zero2_missing_rank"), "inconsistent ranks: partition_count is 2 but 1");
}

std::vector<std::pair<std::string, std::vector<int64_t>>> ReadSpec(const std::string& name) {
  std::vector<std::pair<std::string, std::vector<int64_t>>> spec;
  std::ifstream in(Fx(name));
  std::string line;
  while (std::getline(in, line)) {
    size_t tab = line.find('\t');
    std::vector<int64_t> shape;
    std::stringstream ss(line.substr(tab + 1));
    std::string d;
    while (std::getline(ss, d, ',')) shape.push_back(std::stoll(d));
    spec.emplace_back(line.substr(0, tab), shape);
  }
  return spec;
}

TEST(MegatronTest, WithoutTheSpecAnUnknownLayerIsAmbiguous) {
  ExpectError(Fx("megatron_tp2"), "language_model.encoder.adapter.proj: cannot tell how 2 ranks");
  ExpectError(Fx("megatron_tp2"), "pass tp_merge_dim language_model.encoder.adapter.proj=DIM");
}

TEST(MegatronTest, OverrideNamesTheMergeDim) {
  ReadOptions options;
  options.tp_merge_dims = {{"language_model.encoder.adapter.proj", 1}};
  ExpectSameTensors("megatron_tp2", Fx("megatron_tp2"), "", false, options);
}

TEST(MegatronTest, SpecShapesChooseTheMergeDim) {
  ReadOptions options;
  options.expected_shape = MakeSpecShapeLookup(ReadSpec("megatron_tp2.spec.tsv"));
  ExpectSameTensors("megatron_tp2", Fx("megatron_tp2"), "", false, options);
  absl::StatusOr<Checkpoint> ckpt = ReadCheckpointFile(Fx("megatron_tp2"), options);
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  EXPECT_TRUE(HasMetadata(*ckpt, "tp_ranks=2"));
  // The iteration directory itself reads the same.
  ExpectSameTensors("megatron_tp2", Fx("megatron_tp2/iter_0000100"), "", false, options);
}

TEST(MegatronTest, SpecShapeThatRanksCannotMake) {
  auto spec = ReadSpec("megatron_tp2.spec.tsv");
  for (auto& [name, shape] : spec) {
    if (name == "model.language_model.encoder.adapter.proj") shape = {4, 7};
  }
  ReadOptions options;
  options.expected_shape = MakeSpecShapeLookup(spec);
  ExpectError(Fx("megatron_tp2"), "do not add up to the spec's [4, 7]", options);
}

TEST(MegatronTest, TensorMissingFromARank) {
  ExpectError(Fx("megatron_missing"), "inconsistent ranks");
}

TEST(MegatronTest, SpecLookupMatchesDottedSuffixes) {
  auto lookup = MakeSpecShapeLookup({{"model.a.weight", {2}}, {"b.weight", {3}}});
  EXPECT_EQ(lookup("a.weight"), std::vector<int64_t>{2});
  EXPECT_EQ(lookup("module.model.a.weight"), std::vector<int64_t>{2});
  EXPECT_EQ(lookup("xb.weight"), std::nullopt);
  EXPECT_EQ(lookup("weight"), std::nullopt);  // two candidates of different shapes
}

// Reads Megatron fixture `name` as a set: the tensors its generator expects,
// and every piece of `metadata`. Null when it cannot be read.
std::optional<Checkpoint> ExpectMegatronSet(const std::string& name,
                                            const std::vector<std::string>& metadata) {
  ExpectSameTensors(name, Fx(name), "", false);
  absl::StatusOr<Checkpoint> ckpt = ReadCheckpointFile(Fx(name));
  EXPECT_TRUE(ckpt.ok()) << ckpt.status();
  if (!ckpt.ok()) return std::nullopt;
  for (const std::string& m : metadata) EXPECT_TRUE(HasMetadata(*ckpt, m)) << m;
  return *std::move(ckpt);
}

// Two tensor-parallel ranks x two pipeline stages of 3 + 2 layers: each
// stage's local layer numbers shifted by the layers before it, the tied
// head's copy on the last stage checked against stage 0's and dropped.
TEST(MegatronTest, PipelineStagesGetGlobalLayerNumbers) {
  ExpectSameTensors("megatron_pp", Fx("megatron_pp/release"), "", false);
  std::optional<Checkpoint> ckpt = ExpectMegatronSet(
      "megatron_pp", {"set_layout=megatron_tp_pp", "pp_stages=2", "set_pp_layers=3,2",
                      "set_pp_tied_copy_dropped=word_embeddings_for_head.weight"});
  ASSERT_TRUE(ckpt.has_value());
  EXPECT_NE(ckpt->root->Get("language_model.encoder.layers.4.mlp.dense_4h_to_h.weight"), nullptr);
  EXPECT_EQ(ckpt->root->Get("word_embeddings_for_head.weight"), nullptr);
}

// The same split in Megatron core's names: flat state_dicts, decoder.layers.N
// numbered per stage, the tied head on the last stage as output_layer.weight
// (without a spec, a tensor of its own: only a spec without an output layer
// makes it the tied copy, which the integration test covers).
TEST(MegatronTest, CoreNamesPipelineStages) {
  std::optional<Checkpoint> ckpt =
      ExpectMegatronSet("megatron_pp_core", {"set_layout=megatron_tp_pp", "set_pp_layers=3,2"});
  ASSERT_TRUE(ckpt.has_value());
  EXPECT_NE(ckpt->root->Get("decoder.layers.4.mlp.linear_fc2.weight"), nullptr);
  EXPECT_EQ(ckpt->root->Get("decoder.layers.5.mlp.linear_fc2.weight"), nullptr);
}

// Virtual pipeline stages: each rank file holds model0 and model1; chunk v
// of pipeline rank p is the model's chunk v * 2 + p (layers 2,1,1,1).
TEST(MegatronTest, VirtualPipelineStagesInModelOrder) {
  EXPECT_TRUE(ExpectMegatronSet("megatron_vpp",
                                {"pp_stages=2", "pp_virtual_stages=2", "set_pp_layers=2,1,1,1",
                                 "set_pp_tied_copy_dropped=word_embeddings_for_head.weight"})
                  .has_value());
  ExpectError(Fx("megatron_vpp_args"),
              "inconsistent ranks: args.virtual_pipeline_model_parallel_size is 3 but the rank "
              "files hold 2 model chunk(s)");
}

TEST(MegatronTest, BrokenPipelineStages) {
  ExpectError(Fx("megatron_pp_missing_rank"),
              "inconsistent ranks: tensor-parallel rank 1 of pipeline stage 1 is missing");
  ExpectError(Fx("megatron_pp_missing_stage"),
              "inconsistent ranks: args.pipeline_model_parallel_size is 2 but 1");
  ExpectError(Fx("megatron_pp_global_numbers"),
              "inconsistent layer counts: pipeline stage 1 (mp_rank_00_001) numbers its 2 "
              "layers 3..4, not from 0");
  ExpectError(Fx("megatron_pp_layer_count"),
              "inconsistent layer counts: the pipeline stages hold 3,2 layers (5), "
              "args.num_layers is 6");
  ExpectError(Fx("megatron_pp_untied"), "tied weights differ: word_embeddings_for_head.weight");
  ExpectError(Fx("megatron_pp_duplicate"),
              "duplicate tensor language_model.encoder.final_layernorm.weight in pipeline "
              "stages 0");
}

std::string Bundle(const std::string& path) {
  std::string out;
  absl::Status s = StreamSetBundle(path, 1000, [&](std::string_view piece) {
    EXPECT_LE(piece.size(), 1000u);
    out.append(piece);
    return true;
  });
  EXPECT_TRUE(s.ok()) << s;
  return out;
}

std::string WriteTemp(const std::string& name, const std::string& bytes) {
  std::string path = ::testing::TempDir() + "/" + name + "." + std::to_string(::getpid());
  std::ofstream(path, std::ios::binary) << bytes;
  return path;
}

TEST(SetBundleTest, RoundTripsEveryLayout) {
  for (const char* layout : {"hf_bin", "hf_st", "dcp_v2", "zero3"}) {
    SCOPED_TRACE(layout);
    std::string bytes = Bundle(Fx(layout));
    absl::StatusOr<uint64_t> size = SetBundleSize(Fx(layout));
    ASSERT_TRUE(size.ok()) << size.status();
    EXPECT_EQ(*size, bytes.size());
    std::string staged = WriteTemp(layout, bytes);
    std::string dir;
    {
      absl::StatusOr<std::unique_ptr<UnpackedSet>> set = UnpackedSet::Open(staged);
      ASSERT_TRUE(set.ok()) << set.status();
      EXPECT_TRUE((*set)->unpacked());
      dir = (*set)->path();
      ExpectSameTensors(layout, dir);
    }
    EXPECT_FALSE(FileExists(dir)) << "staging directory left behind";
    std::remove(staged.c_str());
  }
  // An index file stands for its directory.
  EXPECT_EQ(Bundle(Fx("hf_st/model.safetensors.index.json")), Bundle(Fx("hf_st")));
}

TEST(SetBundleTest, PlainFileIsNotUnpacked) {
  absl::StatusOr<std::unique_ptr<UnpackedSet>> set = UnpackedSet::Open(Fx("model.pt"));
  ASSERT_TRUE(set.ok()) << set.status();
  EXPECT_FALSE((*set)->unpacked());
  EXPECT_EQ((*set)->path(), Fx("model.pt"));
}

std::string Le(uint64_t v, int bytes) {
  std::string out;
  for (int i = 0; i < bytes; ++i) out.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
  return out;
}

std::string Entry(const std::string& path, const std::string& bytes, int64_t size = -1) {
  return Le(path.size(), 2) + path + Le(size < 0 ? bytes.size() : size, 8) + bytes;
}

void ExpectBadBundle(const std::string& body, uint32_t count, const std::string& needle) {
  std::string bytes = std::string(kSetBundleMagic) + Le(count, 4) + body;
  std::string staged = WriteTemp("bad", bytes);
  absl::StatusOr<std::unique_ptr<UnpackedSet>> set = UnpackedSet::Open(staged);
  ASSERT_FALSE(set.ok()) << needle;
  EXPECT_NE(std::string(set.status().message()).find(needle), std::string::npos)
      << set.status().message();
  EXPECT_FALSE(FileExists(staged + ".set")) << "staging directory left behind";
  EXPECT_FALSE(FileExists(::testing::TempDir() + "/escaped"));
  std::remove(staged.c_str());
}

TEST(SetBundleTest, HostileNames) {
  ExpectBadBundle(Entry("../escaped", "x"), 1, "bad path component");
  ExpectBadBundle(Entry("/tmp/escaped", "x"), 1, "absolute path");
  ExpectBadBundle(Entry("a/./b", "x"), 1, "bad path component");
  ExpectBadBundle(Entry("a//b", "x"), 1, "bad path component");
  ExpectBadBundle(Entry("a\\b", "x"), 1, "backslash");
  ExpectBadBundle(Entry(std::string("a\nb"), "x"), 1, "control character");
  ExpectBadBundle(Entry("a/b/c/d/e", "x"), 1, "too deep");
  ExpectBadBundle(Entry("x.bin", "1") + Entry("x.bin", "2"), 2, "duplicate file x.bin");
  // Longer than the filesystem's NAME_MAX: a reason, not an I/O error.
  ExpectBadBundle(Entry("d/" + std::string(256, 'n'), "x"), 1, "longer than 255 bytes");
  // 255 bytes are fine: only the stray byte after the file is refused.
  ExpectBadBundle(Entry(std::string(255, 'n'), "x") + "z", 1, "1 bytes after the last file");
}

TEST(SetBundleTest, HostileLengths) {
  ExpectBadBundle(Entry("a.bin", "xy", 1000), 1, "announced 1000 bytes, fewer follow");
  ExpectBadBundle(Entry("a.bin", "xy", int64_t{1} << 62), 1, "exceed the total cap");
  ExpectBadBundle(Entry("a.bin", "xy"), 2, "truncated path length");
  ExpectBadBundle(Entry("a.bin", "xy") + "z", 1, "1 bytes after the last file");
  ExpectBadBundle("", 1u << 30, "bad file count");
  ExpectBadBundle(Le(600, 2) + std::string(600, 'a'), 1, "path too long");
}

// The streaming unpacker gives the same files whatever the pieces the bundle
// arrives in (here one byte at a time, and pieces straddling every field).
TEST(SetBundleUnpackerTest, AnyPieceSizesGiveTheSameFiles) {
  const std::string bytes = Bundle(Fx("hf_st"));
  for (size_t piece : {size_t{1}, size_t{3}, size_t{7}, size_t{4096}, bytes.size()}) {
    SCOPED_TRACE(piece);
    std::string dir = ::testing::TempDir() + "/unpack." + std::to_string(::getpid());
    {
      absl::StatusOr<std::unique_ptr<SetBundleUnpacker>> u = SetBundleUnpacker::Create(dir);
      ASSERT_TRUE(u.ok()) << u.status();
      for (size_t off = 0; off < bytes.size(); off += piece) {
        ASSERT_TRUE((*u)->Append(std::string_view(bytes).substr(off, piece)).ok());
      }
      ASSERT_TRUE((*u)->Finish().ok());
      EXPECT_EQ((*u)->bytes_in(), bytes.size());
      ExpectSameTensors("hf_st", dir);
      // Every byte that is not framing went into a file, once.
      uint64_t files = 0;
      std::vector<std::string> names;
      ASSERT_TRUE(ListFilesBelow(dir, "", 2, &names).ok());
      for (const std::string& n : names) {
        struct stat st {};
        ASSERT_EQ(::stat(JoinPath(dir, n).c_str(), &st), 0);
        files += static_cast<uint64_t>(st.st_size);
      }
      EXPECT_EQ((*u)->bytes_unpacked(), files);
      EXPECT_LT(bytes.size() - files, 1024u);
    }
    EXPECT_FALSE(FileExists(dir)) << "staging directory left behind";
  }
}

// A bad field stops the unpacker at once (no file of a later entry is made)
// and every later call repeats the error.
TEST(SetBundleUnpackerTest, FirstErrorPoisons) {
  std::string dir = ::testing::TempDir() + "/poison." + std::to_string(::getpid());
  absl::StatusOr<std::unique_ptr<SetBundleUnpacker>> u = SetBundleUnpacker::Create(dir);
  ASSERT_TRUE(u.ok()) << u.status();
  std::string bytes = std::string(kSetBundleMagic) + Le(2, 4) + Entry("../up", "x");
  absl::Status s = (*u)->Append(bytes);
  EXPECT_NE(std::string(s.message()).find("bad path component"), std::string::npos) << s;
  EXPECT_EQ((*u)->Append(Entry("ok.bin", "y")).message(), s.message());
  EXPECT_EQ((*u)->Finish().message(), s.message());
  EXPECT_EQ((*u)->bytes_unpacked(), 0u);
  EXPECT_FALSE(FileExists(dir + "/ok.bin"));
  EXPECT_FALSE(FileExists(::testing::TempDir() + "/up"));
}

TEST(SetBundleUnpackerTest, DirectoryMustBeNew) {
  std::string dir = ::testing::TempDir() + "/twice." + std::to_string(::getpid());
  absl::StatusOr<std::unique_ptr<SetBundleUnpacker>> first = SetBundleUnpacker::Create(dir);
  ASSERT_TRUE(first.ok()) << first.status();
  EXPECT_FALSE(SetBundleUnpacker::Create(dir).ok());
}

TEST(SetBundleTest, MalformedFraming) {
  ExpectBadBundle(Entry("a.bin", "1") + Entry("a.bin/b", "2"), 2, "runs through a file");
  ExpectBadBundle(Le(0, 2), 1, "bad path length");
  ExpectBadBundle(Le(5, 2) + "a.bi", 1, "truncated path");
  ExpectBadBundle(Le(5, 2) + "a.bin" + Le(1, 4), 1, "truncated file size");
  ExpectBadBundle("", 0, "bad file count");
  // A zero-length file is a file.
  std::string staged = WriteTemp("empty", std::string(kSetBundleMagic) + Le(1, 4) + Entry("e", ""));
  absl::StatusOr<std::unique_ptr<UnpackedSet>> set = UnpackedSet::Open(staged);
  ASSERT_TRUE(set.ok()) << set.status();
  EXPECT_TRUE(FileExists((*set)->path() + "/e"));
  set->reset();
  std::remove(staged.c_str());
}

}  // namespace
}  // namespace weightgate::checkpoint
