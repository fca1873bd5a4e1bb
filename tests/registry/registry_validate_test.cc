// Registry::RegisterModel / Validate / NormalizeTo over a real Store and the
// real torch fixtures: specs from each reference kind, the TorchScript
// archive kept as a blob for the smoke test, policy overrides, and the
// normalised safetensors loading into the torch model.
#include <ctime>
#include <string>
#include <utility>

#include "gtest/gtest.h"
#include "server/registry/registry.h"
#include "server/store/store.h"
#include "tests/statedict/statedict_fixtures.h"

namespace weightgate::registry {
namespace {

namespace v1 = weightgate::v1;
using weightgate::testing::RunCommand;

class RegistryValidateTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = weightgate::testing::StatedictFixtureDir();
    ASSERT_FALSE(dir_.empty());
    scratch_ = weightgate::testing::ScratchDir();
    store::Store::Options so;
    so.root = scratch_ + "/store";
    absl::StatusOr<std::unique_ptr<store::Store>> s = store::Store::Open(so);
    ASSERT_TRUE(s.ok()) << s.status();
    store_ = std::move(*s);
    Registry::Options ro;
    ro.store = store_.get();
    ro.device = "auto";
    absl::StatusOr<std::unique_ptr<Registry>> r = Registry::Create(ro);
    ASSERT_TRUE(r.ok()) << r.status();
    registry_ = std::move(*r);
  }
  void TearDown() override {
    registry_.reset();
    store_.reset();
    std::string ignored;
    if (!HasFailure()) RunCommand("rm -rf '" + scratch_ + "'", &ignored);
  }
  std::string Fx(const std::string& name) const { return dir_ + "/" + name; }

  absl::StatusOr<v1::Model> Register(const std::string& id, const std::string& ref,
                                     bool with_example = false, bool replace = false) {
    v1::RegisterModelHeader header;
    header.set_model_id(id);
    header.set_replace(replace);
    header.set_description("fixture net");
    if (with_example) {
      v1::ExampleInput* in = header.add_example_inputs();
      for (int64_t d : {2, 3, 8, 8}) in->add_shape(d);
      in->set_dtype("F32");
    }
    return registry_->RegisterModel(header, Fx(ref));
  }

  std::string dir_;
  std::string scratch_;
  std::unique_ptr<store::Store> store_;
  std::unique_ptr<Registry> registry_;
};

TEST_F(RegistryValidateTest, RegisterFromStateDictThenValidate) {
  absl::StatusOr<v1::Model> model = Register("net", "reference.pt");
  ASSERT_TRUE(model.ok()) << model.status();
  EXPECT_EQ(model->spec().tensors_size(), 9);
  EXPECT_EQ(model->spec().source_format(), "torch_zip");
  EXPECT_GT(model->created_unix_ms(), 0);
  absl::StatusOr<v1::Model> stored = registry_->GetModel("net");
  ASSERT_TRUE(stored.ok());
  EXPECT_EQ(stored->spec().DebugString(), model->spec().DebugString());

  v1::UploadHeader header;
  header.set_model_id("net");
  absl::StatusOr<v1::ValidationReport> report = registry_->Validate(header, Fx("ddp_script.pt"));
  ASSERT_TRUE(report.ok()) << report.status();
  EXPECT_EQ(report->verdict(), v1::NORMALIZED);
  EXPECT_EQ(report->model_id(), "net");
  EXPECT_EQ(report->container_path(), "state_dict");
  EXPECT_FALSE(report->smoke_test().ran());

  report = registry_->Validate(header, Fx("shape_mismatch.pt"));
  ASSERT_TRUE(report.ok()) << report.status();
  EXPECT_EQ(report->verdict(), v1::INVALID);
  EXPECT_EQ(report->reasons(0), "shape_mismatch");
}

TEST_F(RegistryValidateTest, AlreadyExistsUnlessReplace) {
  ASSERT_TRUE(Register("net", "reference.pt").ok());
  absl::StatusOr<v1::Model> again = Register("net", "spec_fp16.json");
  EXPECT_EQ(again.status().code(), absl::StatusCode::kAlreadyExists);
  absl::StatusOr<v1::Model> replaced = Register("net", "spec_fp16.json", false, true);
  ASSERT_TRUE(replaced.ok()) << replaced.status();
  EXPECT_EQ(replaced->spec().source_format(), "json_spec");
  EXPECT_EQ(replaced->spec().tensors(0).dtype(), "F16");
}

TEST_F(RegistryValidateTest, BadModelIdAndUnknownModel) {
  EXPECT_EQ(Register("Bad Id", "reference.pt").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_FALSE(Register("net", "not_a_checkpoint.pt").ok());
  v1::UploadHeader header;
  header.set_model_id("nobody");
  EXPECT_EQ(registry_->Validate(header, Fx("clean.pt")).status().code(),
            absl::StatusCode::kNotFound);
}

TEST_F(RegistryValidateTest, TorchScriptReferenceKeepsBlobAndSmokeTests) {
  absl::StatusOr<v1::Model> model = Register("net-ts", "reference_ts.pt", /*with_example=*/true);
  ASSERT_TRUE(model.ok()) << model.status();
  ASSERT_FALSE(model->spec().torchscript_sha256().empty());
  EXPECT_TRUE(store_->HasBlob(model->spec().torchscript_sha256()));
  v1::UploadHeader header;
  header.set_model_id("net-ts");
  absl::StatusOr<v1::ValidationReport> report = registry_->Validate(header, Fx("lightning.ckpt"));
  ASSERT_TRUE(report.ok()) << report.status();
  EXPECT_EQ(report->verdict(), v1::NORMALIZED);
  EXPECT_TRUE(report->smoke_test().ran());
  EXPECT_TRUE(report->smoke_test().ok()) << report->smoke_test().error();
}

TEST_F(RegistryValidateTest, PolicyOverrideReplacesStoredPolicy) {
  v1::RegisterModelHeader header;
  header.set_model_id("net");
  header.mutable_policy()->set_prefixes(v1::NormalizationPolicy::PREFIX_NONE);
  ASSERT_TRUE(registry_->RegisterModel(header, Fx("reference.pt")).ok());
  v1::UploadHeader upload;
  upload.set_model_id("net");
  absl::StatusOr<v1::ValidationReport> strict = registry_->Validate(upload, Fx("dataparallel.pt"));
  ASSERT_TRUE(strict.ok());
  EXPECT_EQ(strict->verdict(), v1::INVALID);
  upload.mutable_policy_override();  // set: an all-default policy (prefixes auto)
  absl::StatusOr<v1::ValidationReport> lenient = registry_->Validate(upload, Fx("dataparallel.pt"));
  ASSERT_TRUE(lenient.ok());
  EXPECT_EQ(lenient->verdict(), v1::NORMALIZED);
}

TEST_F(RegistryValidateTest, NormalizeToWritesLoadableSafetensors) {
  ASSERT_TRUE(Register("net", "spec_fp16.json").ok());
  v1::UploadHeader header;
  header.set_model_id("net");
  // No extension: the stored form is safetensors regardless of the name.
  const std::string out = scratch_ + "/staged-output";
  absl::StatusOr<v1::ValidationReport> report =
      registry_->NormalizeTo(header, Fx("dp_compiled.pt"), out);
  ASSERT_TRUE(report.ok()) << report.status();
  EXPECT_EQ(report->verdict(), v1::NORMALIZED);
  EXPECT_EQ(report->input_sha256().size(), 64u);
  std::string log;
  ASSERT_EQ(RunCommand("cp '" + out + "' '" + out + ".safetensors'", &log), 0);
  EXPECT_EQ(RunCommand("/usr/bin/python3 " + weightgate::testing::SourceDir() +
                           "/tests/fixtures/check_normalized.py '" + out + ".safetensors' '" +
                           dir_ + "' --expect-dtype F16",
                       &log),
            0)
      << log;

  // INVALID writes nothing.
  const std::string bad = scratch_ + "/staged-bad";
  report = registry_->NormalizeTo(header, Fx("nan.pt"), bad);
  ASSERT_TRUE(report.ok());
  EXPECT_EQ(report->verdict(), v1::INVALID);
  EXPECT_NE(::access(bad.c_str(), F_OK), 0);
}

TEST_F(RegistryValidateTest, RenameRulesAreCheckedWhenRegistering) {
  v1::RegisterModelHeader header;
  header.set_model_id("net");
  v1::RenameRule* rule = header.mutable_policy()->add_rename_rules();
  rule->set_pattern("(?<=model)\\.(.*)");  // lookbehind: not RE2
  rule->set_replacement("$1");
  absl::StatusOr<v1::Model> model = registry_->RegisterModel(header, Fx("reference.pt"));
  EXPECT_EQ(model.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(model.status().message().find("invalid RE2 regular expression"), std::string::npos)
      << model.status();
  EXPECT_EQ(registry_->GetModel("net").status().code(), absl::StatusCode::kNotFound);
  rule->set_pattern("^model\\.(.*)");
  rule->set_replacement("$2");  // no such group
  model = registry_->RegisterModel(header, Fx("reference.pt"));
  EXPECT_EQ(model.status().code(), absl::StatusCode::kInvalidArgument);
  rule->set_replacement("$1");
  EXPECT_TRUE(registry_->RegisterModel(header, Fx("reference.pt")).ok());
}

TEST_F(RegistryValidateTest, HundredKilobyteKeyWithRenameRuleIsBounded) {
  // The rule that once overflowed libstdc++'s regex recursion on such a key.
  v1::RegisterModelHeader header;
  header.set_model_id("net");
  for (auto [pattern, replacement] :
       {std::pair{"(.*)\\.gamma$", "$1.weight"}, std::pair{"(.*)\\.beta$", "$1.bias"}}) {
    v1::RenameRule* rule = header.mutable_policy()->add_rename_rules();
    rule->set_pattern(pattern);
    rule->set_replacement(replacement);
  }
  ASSERT_TRUE(registry_->RegisterModel(header, Fx("reference.pt")).ok());
  v1::UploadHeader upload;
  upload.set_model_id("net");
  const std::clock_t start = std::clock();  // CPU time: the machine may be busy
  absl::StatusOr<v1::ValidationReport> report = registry_->Validate(upload, Fx("long_key.pt"));
  const double seconds = static_cast<double>(std::clock() - start) / CLOCKS_PER_SEC;
  ASSERT_TRUE(report.ok()) << report.status();
  EXPECT_LT(seconds, 2.0);
  // Either the reader refuses a key that long (a budget), or the rules
  // rename bn.gamma/beta and the long key is dropped as unexpected.
  if (report->verdict() == v1::INVALID) {
    EXPECT_EQ(report->reasons(0), "resource_limit") << report->DebugString();
  } else {
    EXPECT_EQ(report->verdict(), v1::NORMALIZED) << report->DebugString();
    ASSERT_EQ(report->unexpected_keys_size(), 1);
    EXPECT_EQ(report->unexpected_keys(0).size(), 100005u);
    int renames = 0;
    for (const v1::Fix& f : report->fixes()) renames += f.kind() == "rename";
    EXPECT_EQ(renames, 2);
  }
}

}  // namespace
}  // namespace weightgate::registry
