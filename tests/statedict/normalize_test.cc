// The normalisation engine end to end on real torch checkpoints: each
// damaged fixture gets the right verdict, fixes and reasons, and every
// VALID/NORMALIZED output (safetensors and .pt) loads into the real torch
// model with load_state_dict(strict=True) and reproduces the original
// model's forward output (tests/fixtures/check_normalized.py decides).
#include <algorithm>
#include <string>
#include <vector>

#include "absl/strings/str_join.h"
#include "client/common/policy_flags.h"
#include "common/sha256.h"
#include "gtest/gtest.h"
#include "server/statedict/normalizer.h"
#include "server/statedict/spec.h"
#include "tests/statedict/statedict_fixtures.h"

namespace weightgate::statedict {
namespace {

namespace v1 = weightgate::v1;
using weightgate::testing::RunCommand;
using weightgate::testing::StatedictFixtureDir;

struct Case {
  std::string name;
  std::string file;
  std::string spec;
  std::vector<std::string> flags;  // policy flags, as on the command line
  v1::Verdict verdict;
  std::vector<std::string> fixes;    // fix kinds, in order
  std::vector<std::string> reasons;  // for INVALID
  std::string check_args;            // extra check_normalized.py arguments
};

std::ostream& operator<<(std::ostream& os, const Case& c) { return os << c.name; }

const std::vector<Case>& Cases() {
  static const std::vector<Case> cases = {
      {"clean", "clean.pt", "reference.pt", {}, v1::VALID, {}, {}, ""},
      {"clean_json_spec", "clean.pt", "spec.json", {}, v1::VALID, {}, {}, ""},
      {"dataparallel",
       "dataparallel.pt",
       "reference.pt",
       {},
       v1::NORMALIZED,
       {"strip_prefix"},
       {},
       ""},
      {"dataparallel_legacy",
       "dataparallel_legacy.pt",
       "reference.pt",
       {},
       v1::NORMALIZED,
       {"strip_prefix"},
       {},
       ""},
      {"ddp_training_script",
       "ddp_script.pt",
       "reference.pt",
       {},
       v1::NORMALIZED,
       {"select_container", "strip_prefix"},
       {},
       ""},
      {"lightning",
       "lightning.ckpt",
       "reference.pt",
       {},
       v1::NORMALIZED,
       {"select_container", "strip_prefix"},
       {},
       ""},
      {"compiled", "compiled.pt", "reference.pt", {}, v1::NORMALIZED, {"strip_prefix"}, {}, ""},
      {"dp_compiled",
       "dp_compiled.pt",
       "reference.pt",
       {},
       v1::NORMALIZED,
       {"strip_prefix", "strip_prefix"},
       {},
       ""},
      {"chinese_clip_training_script",
       "chinese_clip.pt",
       "reference.pt",
       {},
       v1::NORMALIZED,
       {"select_container", "strip_prefix"},
       {},
       ""},
      {"ema_identical_to_raw",
       "ema_identical.ckpt",
       "reference.pt",
       {},
       v1::NORMALIZED,
       {"select_container", "strip_prefix", "drop_unexpected"},
       {},
       ""},
      {"renamed_with_rule",
       "renamed.pt",
       "reference.pt",
       {"--rename", "^classifier\\.=fc."},
       v1::NORMALIZED,
       {"rename", "rename"},
       {},
       ""},
      {"fp32_for_fp16_spec",
       "clean.pt",
       "spec_fp16.json",
       {},
       v1::NORMALIZED,
       {"cast"},
       {},
       "--expect-dtype F16"},
      {"missing_num_batches_tracked",
       "missing_nbt.pt",
       "reference.pt",
       {},
       v1::NORMALIZED,
       {"fill_optional"},
       {},
       ""},
      {"strided_views", "views.pt", "reference.pt", {}, v1::VALID, {}, {}, ""},
      {"bf16_for_fp32_spec",
       "bf16.pt",
       "reference.pt",
       {},
       v1::NORMALIZED,
       {"strip_prefix", "cast"},
       {},
       "--expect-dtype F32 --round BF16"},
      {"tied_weights",
       "tied.pt",
       "tied_reference.pt",
       {},
       v1::NORMALIZED,
       {"strip_prefix"},
       {},
       "--model tied"},
      {"renamed_without_rule",
       "renamed.pt",
       "reference.pt",
       {},
       v1::INVALID,
       {"drop_unexpected"},
       {"missing_keys"},
       ""},
      {"missing_weight",
       "missing_weight.pt",
       "reference.pt",
       {},
       v1::INVALID,
       {"strip_prefix"},
       {"missing_keys"},
       ""},
      {"shape_mismatch",
       "shape_mismatch.pt",
       "reference.pt",
       {},
       v1::INVALID,
       {},
       {"shape_mismatch"},
       ""},
      {"nan", "nan.pt", "reference.pt", {}, v1::INVALID, {}, {"non_finite"}, ""},
      {"fp16_overflow",
       "fp16_overflow.pt",
       "spec_fp16.json",
       {},
       v1::INVALID,
       {"cast"},
       {"non_finite"},
       ""},
      {"fp32_rejected_by_policy",
       "clean.pt",
       "spec_fp16.json",
       {"--dtype", "reject"},
       v1::INVALID,
       {},
       {"dtype_mismatch"},
       ""},
      {"unsafe_pickle", "unsafe.pt", "reference.pt", {}, v1::INVALID, {}, {"unsafe_pickle"}, ""},
      {"truncated", "truncated.pt", "reference.pt", {}, v1::INVALID, {}, {"unreadable"}, ""},
      {"not_a_checkpoint",
       "not_a_checkpoint.pt",
       "reference.pt",
       {},
       v1::INVALID,
       {},
       {"not_a_checkpoint"},
       ""},
  };
  return cases;
}

class NormalizeTest : public ::testing::TestWithParam<Case> {
 protected:
  void SetUp() override {
    dir_ = StatedictFixtureDir();
    ASSERT_FALSE(dir_.empty());
    scratch_ = weightgate::testing::ScratchDir();
  }
  void TearDown() override {
    std::string ignored;
    if (!scratch_.empty() && !HasFailure()) RunCommand("rm -rf '" + scratch_ + "'", &ignored);
  }
  std::string Fx(const std::string& name) const { return dir_ + "/" + name; }

  std::string dir_;
  std::string scratch_;
};

std::vector<std::string> Kinds(const v1::ValidationReport& r) {
  std::vector<std::string> kinds;
  for (const v1::Fix& f : r.fixes()) kinds.push_back(f.kind());
  return kinds;
}

TEST_P(NormalizeTest, VerdictFixesAndStrictLoad) {
  const Case& c = GetParam();
  absl::StatusOr<v1::ModelSpec> spec = SpecFromFile(Fx(c.spec));
  ASSERT_TRUE(spec.ok()) << spec.status();
  absl::StatusOr<v1::NormalizationPolicy> flags = weightgate::client::PolicyFromFlags(c.flags);
  ASSERT_TRUE(flags.ok()) << flags.status();
  const v1::NormalizationPolicy& policy = *flags;
  for (const char* ext : {".safetensors", ".pt"}) {
    SCOPED_TRACE(ext);
    NormalizeOptions options;
    options.device = "auto";
    options.output_path = scratch_ + "/out" + ext;
    std::string output_sha256 = "unset";
    options.output_sha256 = &output_sha256;
    absl::StatusOr<v1::ValidationReport> report = Normalize(Fx(c.file), *spec, policy, options);
    ASSERT_TRUE(report.ok()) << report.status();
    EXPECT_EQ(report->verdict(), c.verdict) << report->DebugString();
    EXPECT_EQ(Kinds(*report), c.fixes) << report->DebugString();
    EXPECT_EQ(std::vector<std::string>(report->reasons().begin(), report->reasons().end()),
              c.reasons)
        << report->DebugString();
    EXPECT_EQ(report->device(), "cpu");
    EXPECT_GT(report->timings().total_ms(), 0);

    std::string out;
    if (c.verdict == v1::INVALID) {
      EXPECT_NE(::access(options.output_path.c_str(), F_OK), 0) << "INVALID must write nothing";
      EXPECT_EQ(output_sha256, "unset") << "no output, no hash";
      continue;
    }
    EXPECT_EQ(report->tensor_count(), spec->tensors_size());
    // The safetensors output is hashed as it is written; that hash is what
    // the file holds (the store names the blob by it without reading it).
    if (std::string(ext) == ".safetensors") {
      absl::StatusOr<std::string> on_disk = weightgate::common::Sha256File(options.output_path);
      ASSERT_TRUE(on_disk.ok()) << on_disk.status();
      EXPECT_EQ(output_sha256, *on_disk);
    } else {
      EXPECT_EQ(output_sha256, "");
    }
    std::string check_args = c.check_args;
    // Only the torch form can keep tied tensors as one storage.
    if (c.name == "tied_weights" && std::string(ext) == ".pt") check_args += " --expect-ties";
    int rc = RunCommand("/usr/bin/python3 " + weightgate::testing::SourceDir() +
                            "/tests/fixtures/check_normalized.py '" + options.output_path + "' '" +
                            dir_ + "' " + check_args,
                        &out);
    EXPECT_EQ(rc, 0) << out;
    EXPECT_EQ(out.substr(0, 3), "OK ") << out;
  }
}

INSTANTIATE_TEST_SUITE_P(Fixtures, NormalizeTest, ::testing::ValuesIn(Cases()),
                         [](const ::testing::TestParamInfo<Case>& info) {
                           return info.param.name;
                         });

class NormalizeDetailTest : public NormalizeTest {};

// "--rename '^a\\.=b.'" -> {"--rename", "^a\\.=b."}: words split at spaces
// outside single quotes, as a shell would.
std::vector<std::string> ShellWords(const std::string& text) {
  std::vector<std::string> words;
  std::string word;
  bool quoted = false, any = false;
  for (char c : text) {
    if (c == '\'') {
      quoted = !quoted;
      any = true;
    } else if (c == ' ' && !quoted) {
      if (any) words.push_back(word);
      word.clear();
      any = false;
    } else {
      word.push_back(c);
      any = true;
    }
  }
  if (any) words.push_back(word);
  return words;
}

struct Choice {
  std::string name;
  std::string file;
  std::string spec;
  std::string reason;  // without a flag
  std::string flag;    // printed in the report; selects the model's own weights
  std::string check_args;
};

class NeverGuessTest : public NormalizeTest {};

// Checkpoints with two plausible sets of weights are INVALID, and the flag
// the report prints for the intended set, passed back, gives exactly the
// model's weights (loaded into the real torch module).
TEST_F(NeverGuessTest, InvalidUntilThePrintedFlagChooses) {
  const std::vector<Choice> choices = {
      {"teacher_student", "distill.pt", "reference.pt", "ambiguous_match", "--key_prefix student.",
       ""},
      {"raw_and_ema_differ", "ema_lightning.ckpt", "reference.pt", "ambiguous_match",
       "--weights raw", ""},
      {"two_containers", "two_containers.pt", "reference.pt", "ambiguous_match",
       "--container state_dict", ""},
      {"root_swap", "root_swap.pt", "holder_reference.pt", "prefix_rename_needed",
       "--rename '^other\\.=layer.'", "--model holder"},
      {"equal_halves", "enc_dec.pt", "holder_reference.pt", "ambiguous_match", "--key_prefix dec.",
       "--model holder"},
  };
  for (const Choice& c : choices) {
    SCOPED_TRACE(c.name);
    absl::StatusOr<v1::ModelSpec> spec = SpecFromFile(Fx(c.spec));
    ASSERT_TRUE(spec.ok()) << spec.status();
    NormalizeOptions options;
    options.output_path = scratch_ + "/" + c.name + ".safetensors";
    absl::StatusOr<v1::ValidationReport> report =
        Normalize(Fx(c.file), *spec, v1::NormalizationPolicy(), options);
    ASSERT_TRUE(report.ok()) << report.status();
    EXPECT_EQ(report->verdict(), v1::INVALID);
    EXPECT_EQ(std::vector<std::string>(report->reasons().begin(), report->reasons().end()),
              std::vector<std::string>{c.reason})
        << report->DebugString();
    EXPECT_NE(::access(options.output_path.c_str(), F_OK), 0) << "INVALID must write nothing";
    std::vector<std::string> printed;
    for (const v1::Candidate& alt : report->alternatives()) printed.push_back(alt.select_flag());
    ASSERT_NE(std::find(printed.begin(), printed.end(), c.flag), printed.end())
        << absl::StrJoin(printed, " | ");
    EXPECT_NE(report->error().find(c.flag), std::string::npos) << report->error();

    absl::StatusOr<v1::NormalizationPolicy> policy =
        weightgate::client::PolicyFromFlags(ShellWords(c.flag));
    ASSERT_TRUE(policy.ok()) << c.flag << ": " << policy.status();
    report = Normalize(Fx(c.file), *spec, *policy, options);
    ASSERT_TRUE(report.ok()) << report.status();
    EXPECT_EQ(report->verdict(), v1::NORMALIZED) << report->DebugString();
    std::string out;
    EXPECT_EQ(RunCommand("/usr/bin/python3 " + weightgate::testing::SourceDir() +
                             "/tests/fixtures/check_normalized.py '" + options.output_path + "' '" +
                             dir_ + "' " + c.check_args,
                         &out),
              0)
        << out;
  }
}

TEST_F(NeverGuessTest, PrefixesAnyAllowsTheRootSwap) {
  absl::StatusOr<v1::ModelSpec> spec = SpecFromFile(Fx("holder_reference.pt"));
  ASSERT_TRUE(spec.ok()) << spec.status();
  absl::StatusOr<v1::NormalizationPolicy> policy =
      weightgate::client::PolicyFromFlags({"--prefixes", "any"});
  ASSERT_TRUE(policy.ok()) << policy.status();
  NormalizeOptions options;
  options.output_path = scratch_ + "/any.safetensors";
  absl::StatusOr<v1::ValidationReport> report =
      Normalize(Fx("root_swap.pt"), *spec, *policy, options);
  ASSERT_TRUE(report.ok()) << report.status();
  EXPECT_EQ(report->verdict(), v1::NORMALIZED);
  EXPECT_EQ(report->winner().transform(), "strip 'other.' + add 'layer.'");
  std::string out;
  EXPECT_EQ(RunCommand("/usr/bin/python3 " + weightgate::testing::SourceDir() +
                           "/tests/fixtures/check_normalized.py '" + options.output_path + "' '" +
                           dir_ + "' --model holder",
                       &out),
            0)
      << out;
}

TEST_F(NeverGuessTest, BitwiseIdenticalEmaIsReportedAsEqual) {
  absl::StatusOr<v1::ModelSpec> spec = SpecFromFile(Fx("reference.pt"));
  ASSERT_TRUE(spec.ok());
  absl::StatusOr<v1::ValidationReport> report =
      Normalize(Fx("ema_identical.ckpt"), *spec, v1::NormalizationPolicy(), NormalizeOptions());
  ASSERT_TRUE(report.ok());
  EXPECT_EQ(report->verdict(), v1::NORMALIZED);
  EXPECT_EQ(report->winner().weights(), "raw");
  ASSERT_EQ(report->alternatives_size(), 1);
  EXPECT_TRUE(report->alternatives(0).equal_to_winner());
  EXPECT_EQ(report->alternatives(0).weights(), "ema");
  // Different values are ambiguous (the same layout, other bytes).
  report =
      Normalize(Fx("ema_lightning.ckpt"), *spec, v1::NormalizationPolicy(), NormalizeOptions());
  ASSERT_TRUE(report.ok());
  EXPECT_EQ(report->reasons(0), "ambiguous_match");
}

TEST_F(NormalizeDetailTest, SpecsFromStateDictJsonAndTorchScriptAgree) {
  absl::StatusOr<v1::ModelSpec> sd = SpecFromFile(Fx("reference.pt"));
  absl::StatusOr<v1::ModelSpec> json = SpecFromFile(Fx("spec.json"));
  absl::StatusOr<v1::ModelSpec> ts = SpecFromFile(Fx("reference_ts.pt"));
  ASSERT_TRUE(sd.ok()) << sd.status();
  ASSERT_TRUE(json.ok()) << json.status();
  ASSERT_TRUE(ts.ok()) << ts.status();
  EXPECT_EQ(sd->source_format(), "torch_zip");
  EXPECT_EQ(json->source_format(), "json_spec");
  EXPECT_EQ(ts->source_format(), "torchscript");
  EXPECT_EQ(sd->source_sha256().size(), 64u);
  ASSERT_EQ(sd->tensors_size(), 9);
  for (const v1::ModelSpec* other : {&*json, &*ts}) {
    ASSERT_EQ(other->tensors_size(), sd->tensors_size());
    for (int i = 0; i < sd->tensors_size(); ++i) {
      EXPECT_EQ(other->tensors(i).DebugString(), sd->tensors(i).DebugString()) << i;
    }
  }
  EXPECT_EQ(sd->tensors(6).name(), "bn.num_batches_tracked");
  EXPECT_EQ(sd->tensors(6).dtype(), "I64");
}

TEST_F(NormalizeDetailTest, TorchScriptSmokeTestRuns) {
  absl::StatusOr<v1::ExampleInput> in = ParseExampleInput("2x3x8x8");
  ASSERT_TRUE(in.ok());
  absl::StatusOr<v1::ModelSpec> spec = SpecFromFile(Fx("reference_ts.pt"), {*in});
  ASSERT_TRUE(spec.ok()) << spec.status();
  EXPECT_EQ(spec->torchscript_sha256(), spec->source_sha256());
  NormalizeOptions options;
  options.torchscript_path = Fx("reference_ts.pt");
  absl::StatusOr<v1::ValidationReport> report =
      Normalize(Fx("ddp_script.pt"), *spec, v1::NormalizationPolicy(), options);
  ASSERT_TRUE(report.ok()) << report.status();
  EXPECT_EQ(report->verdict(), v1::NORMALIZED);
  EXPECT_TRUE(report->smoke_test().ran());
  EXPECT_TRUE(report->smoke_test().ok()) << report->smoke_test().error();
  EXPECT_TRUE(report->smoke_test().outputs_finite());
  EXPECT_GT(report->timings().smoke_ms(), 0);
}

TEST_F(NormalizeDetailTest, SmokeTestFailsOnNonFiniteOutput) {
  // NaN weights let through by policy must still fail the forward check.
  absl::StatusOr<v1::ModelSpec> spec =
      SpecFromFile(Fx("reference_ts.pt"), {*ParseExampleInput("2x3x8x8")});
  ASSERT_TRUE(spec.ok()) << spec.status();
  v1::NormalizationPolicy policy;
  policy.set_non_finite(v1::NormalizationPolicy::NONFINITE_ALLOW);
  NormalizeOptions options;
  options.torchscript_path = Fx("reference_ts.pt");
  options.output_path = scratch_ + "/smoke_failed.safetensors";
  absl::StatusOr<v1::ValidationReport> report = Normalize(Fx("nan.pt"), *spec, policy, options);
  ASSERT_TRUE(report.ok()) << report.status();
  EXPECT_EQ(report->verdict(), v1::INVALID);
  ASSERT_EQ(report->non_finite_size(), 2);
  EXPECT_EQ(report->non_finite(0).name(), "conv.weight");
  EXPECT_EQ(report->non_finite(0).nan(), 1);
  EXPECT_EQ(report->non_finite(1).name(), "fc.bias");
  EXPECT_EQ(report->non_finite(1).inf(), 1);
  EXPECT_TRUE(report->smoke_test().ran());
  EXPECT_FALSE(report->smoke_test().outputs_finite());
  EXPECT_EQ(std::vector<std::string>(report->reasons().begin(), report->reasons().end()),
            std::vector<std::string>{"smoke_test_failed"});
  EXPECT_NE(::access(options.output_path.c_str(), F_OK), 0) << "INVALID must write nothing";
}

TEST_F(NormalizeDetailTest, NarrowingCastOverflowIsCaught) {
  absl::StatusOr<v1::ModelSpec> spec = SpecFromFile(Fx("spec_fp16.json"));
  ASSERT_TRUE(spec.ok());
  absl::StatusOr<v1::ValidationReport> report =
      Normalize(Fx("fp16_overflow.pt"), *spec, v1::NormalizationPolicy(), NormalizeOptions());
  ASSERT_TRUE(report.ok());
  EXPECT_EQ(report->verdict(), v1::INVALID);
  ASSERT_EQ(report->non_finite_size(), 1);
  EXPECT_EQ(report->non_finite(0).name(), "fc.weight");
  EXPECT_EQ(report->non_finite(0).nan(), 0);
  EXPECT_EQ(report->non_finite(0).inf(), 1);
  EXPECT_NE(report->error().find("overflow"), std::string::npos) << report->error();
  // The same checkpoint is fine for the fp32 spec.
  absl::StatusOr<v1::ModelSpec> fp32 = SpecFromFile(Fx("spec.json"));
  ASSERT_TRUE(fp32.ok());
  report = Normalize(Fx("fp16_overflow.pt"), *fp32, v1::NormalizationPolicy(), NormalizeOptions());
  ASSERT_TRUE(report.ok());
  EXPECT_EQ(report->verdict(), v1::VALID);
}

TEST_F(NormalizeDetailTest, UnsafePickleNamesTheGlobal) {
  absl::StatusOr<v1::ModelSpec> spec = SpecFromFile(Fx("reference.pt"));
  ASSERT_TRUE(spec.ok());
  absl::StatusOr<v1::ValidationReport> report =
      Normalize(Fx("unsafe.pt"), *spec, v1::NormalizationPolicy(), NormalizeOptions());
  ASSERT_TRUE(report.ok());
  ASSERT_GE(report->unsafe_globals_size(), 1);
  EXPECT_EQ(report->unsafe_globals(0), "posix.system");
  EXPECT_FALSE(report->error().empty());
}

TEST_F(NormalizeDetailTest, MissingFileIsUnreadable) {
  absl::StatusOr<v1::ModelSpec> spec = SpecFromFile(Fx("reference.pt"));
  ASSERT_TRUE(spec.ok());
  absl::StatusOr<v1::ValidationReport> report =
      Normalize(Fx("no_such_file.pt"), *spec, v1::NormalizationPolicy(), NormalizeOptions());
  ASSERT_TRUE(report.ok());
  EXPECT_EQ(report->verdict(), v1::INVALID);
  EXPECT_EQ(report->reasons(0), "unreadable");
  EXPECT_FALSE(report->error().empty());
}

TEST_F(NormalizeDetailTest, InputSha256MatchesPython) {
  absl::StatusOr<v1::ModelSpec> spec = SpecFromFile(Fx("reference.pt"));
  ASSERT_TRUE(spec.ok());
  NormalizeOptions options;
  options.compute_input_sha256 = true;
  absl::StatusOr<v1::ValidationReport> report =
      Normalize(Fx("dataparallel.pt"), *spec, v1::NormalizationPolicy(), options);
  ASSERT_TRUE(report.ok());
  std::string out;
  ASSERT_EQ(
      RunCommand("/usr/bin/python3 -c \"import hashlib,sys; print(hashlib.sha256(open(sys.argv[1],"
                 "'rb').read()).hexdigest())\" '" +
                     Fx("dataparallel.pt") + "'",
                 &out),
      0);
  EXPECT_EQ(report->input_sha256() + "\n", out);
}

TEST_F(NormalizeDetailTest, UnknownDeviceIsAnError) {
  EXPECT_FALSE(ResolveDevice("tpu").ok());
  absl::StatusOr<std::string> cpu = ResolveDevice("cpu");
  ASSERT_TRUE(cpu.ok());
  EXPECT_EQ(*cpu, "cpu");
  absl::StatusOr<std::string> cuda = ResolveDevice("cuda");
  if (!cuda.ok()) {
    EXPECT_EQ(cuda.status().code(), absl::StatusCode::kFailedPrecondition);
  }
}

// The helper binary: exit codes, --json, usage errors.
}  // namespace
}  // namespace weightgate::statedict
