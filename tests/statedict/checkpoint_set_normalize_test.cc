// Checkpoint sets through the normalisation engine: every layout of
// make_multifile_fixtures.py (HF sharded, DCP, ZeRO, Megatron, a YOLOv5
// whole-module pickle) validated against its reference and written as .pt;
// the output loads into the real module with strict=True and gives the same
// forward output and bytes (check_multifile_roundtrip.py). Broken sets are
// INVALID with the reader's reason.
#include <unistd.h>

#include <cstdlib>
#include <string>

#include "gtest/gtest.h"
#include "server/statedict/normalizer.h"
#include "server/statedict/spec.h"
#include "tests/checkpoint/set_fixtures.h"

namespace weightgate::statedict {
namespace {

namespace v1 = weightgate::v1;
using checkpoint::testing::Fx;

struct Case {
  std::string layout;  // expected tensors: <layout>.expected.pt
  std::string path;    // the set, relative to the fixture dir
  std::string ref;     // the spec's reference
  v1::Verdict verdict;
};

class SetNormalize : public ::testing::TestWithParam<Case> {};

TEST_P(SetNormalize, OutputLoadsStrictWithTheSameForward) {
  const Case& c = GetParam();
  absl::StatusOr<v1::ModelSpec> spec = SpecFromFile(Fx(c.ref));
  ASSERT_TRUE(spec.ok()) << spec.status();
  std::string out = ::testing::TempDir() + "/set_" + std::to_string(::getpid()) + "_" +
                    std::to_string(::testing::UnitTest::GetInstance()->random_seed()) + ".pt";
  NormalizeOptions options;
  options.output_path = out;
  absl::StatusOr<v1::ValidationReport> report =
      Normalize(Fx(c.path), *spec, v1::NormalizationPolicy(), options);
  ASSERT_TRUE(report.ok()) << report.status();
  ASSERT_EQ(report->verdict(), c.verdict) << report->DebugString();
  std::string cmd = std::string("/usr/bin/python3 '") + WG_SOURCE_DIR +
                    "/tests/fixtures/check_multifile_roundtrip.py' '" + out + "' '" + Fx("") +
                    "' " + c.layout + " --spec '" + Fx(c.ref) + "'";
  EXPECT_EQ(std::system(cmd.c_str()), 0) << cmd;
  std::remove(out.c_str());
}

INSTANTIATE_TEST_SUITE_P(
    Layouts, SetNormalize,
    ::testing::Values(Case{"hf_bin", "hf_bin", "model.pt", v1::VALID},
                      Case{"hf_st", "hf_st/model.safetensors.index.json", "model.pt", v1::VALID},
                      Case{"hf_series", "hf_series", "model.pt", v1::VALID},
                      Case{"dcp_113", "dcp_113", "model.pt", v1::VALID},
                      Case{"dcp_v2", "dcp_v2", "model.pt", v1::VALID},
                      Case{"zero1", "zero1", "model.pt", v1::NORMALIZED},
                      Case{"zero3", "zero3", "model.pt", v1::NORMALIZED},
                      Case{"megatron_tp2", "megatron_tp2", "megatron_ref.pt", v1::VALID},
                      Case{"yolo", "yolo.pt", "yolo_ref.pt", v1::NORMALIZED},
                      Case{"tied", "tied_missing.safetensors", "tied_ref.pt", v1::NORMALIZED}),
    [](const ::testing::TestParamInfo<Case>& info) { return info.param.layout; });

TEST(SetNormalize, BrokenSetIsInvalidWithItsReason) {
  absl::StatusOr<v1::ModelSpec> spec = SpecFromFile(Fx("model.pt"));
  ASSERT_TRUE(spec.ok()) << spec.status();
  for (const char* broken : {"hf_missing_shard", "dcp_gap", "zero2_missing_rank"}) {
    absl::StatusOr<v1::ValidationReport> report =
        Normalize(Fx(broken), *spec, v1::NormalizationPolicy(), NormalizeOptions());
    ASSERT_TRUE(report.ok()) << report.status();
    EXPECT_EQ(report->verdict(), v1::INVALID) << broken;
    EXPECT_FALSE(report->error().empty()) << broken;
  }
}

TEST(SetNormalize, ReferenceSpecFromADirectory) {
  absl::StatusOr<v1::ModelSpec> from_dir = SpecFromFile(Fx("hf_st"));
  ASSERT_TRUE(from_dir.ok()) << from_dir.status();
  absl::StatusOr<v1::ModelSpec> from_file = SpecFromFile(Fx("model.pt"));
  ASSERT_TRUE(from_file.ok()) << from_file.status();
  ASSERT_EQ(from_dir->tensors_size(), from_file->tensors_size());
}

bool HasFix(const v1::ValidationReport& report, const std::string& kind, const std::string& to) {
  for (const v1::Fix& f : report.fixes()) {
    if (f.kind() == kind && f.to() == to) return true;
  }
  return false;
}

TEST(SetNormalize, ZeroWeightsPolicyChoosesModuleWeights) {
  absl::StatusOr<v1::ModelSpec> spec = SpecFromFile(Fx("model.pt"));
  ASSERT_TRUE(spec.ok()) << spec.status();
  v1::NormalizationPolicy policy;
  absl::StatusOr<v1::ValidationReport> fp32 =
      Normalize(Fx("zero2"), *spec, policy, NormalizeOptions());
  ASSERT_TRUE(fp32.ok()) << fp32.status();
  EXPECT_TRUE(HasFix(*fp32, "zero_weights", "fp32")) << fp32->DebugString();
  policy.set_zero_weights("module");
  std::string out = ::testing::TempDir() + "/zero_module_" + std::to_string(::getpid()) + ".pt";
  NormalizeOptions options;
  options.output_path = out;
  absl::StatusOr<v1::ValidationReport> module = Normalize(Fx("zero2"), *spec, policy, options);
  ASSERT_TRUE(module.ok()) << module.status();
  EXPECT_TRUE(HasFix(*module, "zero_weights", "module")) << module->DebugString();
  std::string cmd = std::string("/usr/bin/python3 '") + WG_SOURCE_DIR +
                    "/tests/fixtures/check_multifile_roundtrip.py' '" + out + "' '" + Fx("") +
                    "' zero2_module --spec '" + Fx("model.pt") + "'";
  EXPECT_EQ(std::system(cmd.c_str()), 0) << cmd;
  std::remove(out.c_str());
}

TEST(SetNormalize, TpMergeDimPolicyOverridesTheSpec) {
  absl::StatusOr<v1::ModelSpec> spec = SpecFromFile(Fx("megatron_ref.pt"));
  ASSERT_TRUE(spec.ok()) << spec.status();
  v1::NormalizationPolicy policy;
  policy.add_tp_merge_dims("language_model.encoder.adapter.proj=0");  // the wrong dim
  absl::StatusOr<v1::ValidationReport> report =
      Normalize(Fx("megatron_tp2"), *spec, policy, NormalizeOptions());
  ASSERT_TRUE(report.ok()) << report.status();
  EXPECT_EQ(report->verdict(), v1::INVALID);
  ASSERT_EQ(report->shape_mismatches_size(), 1) << report->DebugString();
  EXPECT_EQ(report->shape_mismatches(0).name(), "language_model.encoder.adapter.proj");
}

TEST(SetNormalize, MissingTieMemberFilledFromItsPartner) {
  absl::StatusOr<v1::ModelSpec> spec = SpecFromFile(Fx("tied_ref.pt"));
  ASSERT_TRUE(spec.ok()) << spec.status();
  ASSERT_EQ(spec->ties_size(), 1);
  EXPECT_EQ(spec->ties(0).names_size(), 2);
  absl::StatusOr<v1::ValidationReport> report = Normalize(
      Fx("tied_missing.safetensors"), *spec, v1::NormalizationPolicy(), NormalizeOptions());
  ASSERT_TRUE(report.ok()) << report.status();
  EXPECT_EQ(report->missing_keys_size(), 0);
  bool filled = false;
  for (const v1::Fix& f : report->fixes()) {
    filled = filled || (f.kind() == "fill_tied" && f.to() == "lm_head.weight" &&
                        f.from() == "embed_tokens.weight");
  }
  EXPECT_TRUE(filled) << report->DebugString();
  ASSERT_EQ(report->shared_storages_size(), 1);
  // Without the tie in the spec the same file misses a key.
  spec->clear_ties();
  report = Normalize(Fx("tied_missing.safetensors"), *spec, v1::NormalizationPolicy(),
                     NormalizeOptions());
  ASSERT_TRUE(report.ok()) << report.status();
  EXPECT_EQ(report->verdict(), v1::INVALID);
}

}  // namespace
}  // namespace weightgate::statedict
