// The matcher on hand-built checkpoint trees: which container and prefix
// transform wins, which fixes and findings are reported, and the caps of the
// candidate search. No files, no torch.
#include "server/statedict/matcher.h"

#include <ctime>
#include <string>
#include <utility>
#include <vector>

#include "gtest/gtest.h"
#include "server/checkpoint/value.h"
#include "tests/statedict/matcher_test_util.h"

namespace weightgate::statedict {
namespace {

using namespace matcher_testing;  // NOLINT: test helpers

TEST(MatcherTest, CleanStateDictIsValid) {
  Tree t;
  Outcome o = Match(t.Dict(SmallStateDict(t, "")), SmallSpec());
  EXPECT_EQ(o.report.verdict(), v1::VALID);
  EXPECT_TRUE(o.report.fixes().empty());
  EXPECT_EQ(o.report.container_path(), "");
  EXPECT_EQ(o.report.winner().transform(), "none");
  EXPECT_EQ(o.report.winner().matched(), 9);
  EXPECT_EQ(Names(o.match), SpecNames(SmallSpec()));
  EXPECT_EQ(o.report.tensor_count(), 9);
  // 8*27 + 8*5 + 80 + 10 floats and one int64.
  EXPECT_EQ(o.report.total_bytes(), (216 + 40 + 80 + 10) * 4 + 8);
}

TEST(MatcherTest, DataParallelPrefixStripped) {
  Tree t;
  Outcome o = Match(t.Dict(SmallStateDict(t, "module.")), SmallSpec());
  EXPECT_EQ(o.report.verdict(), v1::NORMALIZED);
  ASSERT_EQ(FixKinds(o.report), std::vector<std::string>{"strip_prefix"});
  EXPECT_EQ(o.report.fixes(0).detail(), "stripped 'module.' from 9 keys (known wrapper)");
  EXPECT_EQ(o.report.fixes(0).origin(), "known_wrapper");
  EXPECT_EQ(o.report.winner().transform(), "strip 'module.'");
  EXPECT_EQ(o.report.winner().matched(), 9);
  EXPECT_LT(o.report.runner_up().matched(), 9);
  EXPECT_EQ(Names(o.match), SpecNames(SmallSpec()));
  EXPECT_EQ(o.match.tensors[0].source_name, "module.conv.weight");
}

TEST(MatcherTest, TrainingScriptDictPicksStateDict) {
  Tree t;
  const Value* optimizer =
      t.Dict({{"state", t.Dict({{"0", t.Dict({{"momentum_buffer", t.T({8, 3, 3, 3})}})}})}});
  const Value* root = t.Dict({{"epoch", t.Int(3)},
                              {"step", t.Int(1200)},
                              {"state_dict", t.Dict(SmallStateDict(t, "module."))},
                              {"optimizer", optimizer}});
  Outcome o = Match(root, SmallSpec());
  EXPECT_EQ(o.report.verdict(), v1::NORMALIZED);
  EXPECT_EQ(o.report.container_path(), "state_dict");
  EXPECT_EQ(FixKinds(o.report), (std::vector<std::string>{"select_container", "strip_prefix"}));
  EXPECT_TRUE(o.report.unexpected_keys().empty());
  EXPECT_EQ(o.report.winner().container(), "state_dict");
  EXPECT_EQ(o.report.winner().transform(), "strip 'module.'");
  EXPECT_EQ(o.report.winner().matched(), 9);
  // The top level with "state_dict." stripped reads the very same tensors:
  // no alternative, no runner-up.
  EXPECT_FALSE(o.report.has_runner_up());
  EXPECT_TRUE(o.report.alternatives().empty());
}

TEST(MatcherTest, LightningModelPrefix) {
  Tree t;
  const Value* root = t.Dict({{"epoch", t.Int(1)},
                              {"state_dict", t.Dict(SmallStateDict(t, "model."))},
                              {"optimizer_states", t.Dict({})}});
  Outcome o = Match(root, SmallSpec());
  EXPECT_EQ(o.report.verdict(), v1::NORMALIZED);
  EXPECT_EQ(o.report.container_path(), "state_dict");
  EXPECT_EQ(o.report.winner().transform(), "strip 'model.'");
  EXPECT_EQ(Names(o.match), SpecNames(SmallSpec()));
}

TEST(MatcherTest, NestedContainer) {
  Tree t;
  const Value* root = t.Dict({{"model", t.Dict({{"state_dict", t.Dict(SmallStateDict(t, ""))}})}});
  Outcome o = Match(root, SmallSpec());
  EXPECT_EQ(o.report.verdict(), v1::NORMALIZED);
  EXPECT_EQ(o.report.container_path(), "model.state_dict");
  EXPECT_EQ(o.report.winner().transform(), "none");
}

TEST(MatcherTest, CompiledDoubleWrapStripsBoth) {
  Tree t;
  Outcome o = Match(t.Dict(SmallStateDict(t, "module._orig_mod.")), SmallSpec());
  EXPECT_EQ(o.report.verdict(), v1::NORMALIZED);
  EXPECT_EQ(o.report.winner().transform(), "strip 'module.' + strip '_orig_mod.'");
  EXPECT_EQ(Names(o.match), SpecNames(SmallSpec()));
}

TEST(MatcherTest, FsdpWrappersAtEveryLevel) {
  Tree t;
  std::vector<std::pair<std::string, const Value*>> items;
  for (auto& [k, v] : SmallStateDict(t, "")) {
    size_t dot = k.find('.');
    items.emplace_back("_fsdp_wrapped_module." + k.substr(0, dot) + "._fsdp_wrapped_module." +
                           "_checkpoint_wrapped_module." + k.substr(dot + 1),
                       v);
  }
  Outcome o = Match(t.Dict(items), SmallSpec());
  EXPECT_EQ(o.report.verdict(), v1::NORMALIZED);
  EXPECT_EQ(o.report.winner().matched(), 9);
  EXPECT_EQ(o.report.winner().transform(),
            "strip '_fsdp_wrapped_module.' + strip '_checkpoint_wrapped_module.'");
}

TEST(MatcherTest, AddsPrefixTheSpecHas) {
  Tree t;
  Outcome o = Match(t.Dict(SmallStateDict(t, "")), SmallSpec("backbone."));
  EXPECT_EQ(o.report.verdict(), v1::NORMALIZED);
  EXPECT_EQ(o.report.winner().transform(), "add 'backbone.'");
  ASSERT_EQ(FixKinds(o.report), std::vector<std::string>{"add_prefix"});
  EXPECT_EQ(Names(o.match), SpecNames(SmallSpec("backbone.")));
}

TEST(MatcherTest, WrapperInsideSpecKeptWhenSpecHasIt) {
  // A spec registered from a DataParallel state_dict keeps "module." and a
  // plain checkpoint gets it added.
  Tree t;
  Outcome o = Match(t.Dict(SmallStateDict(t, "")), SmallSpec("module."));
  EXPECT_EQ(o.report.verdict(), v1::NORMALIZED);
  EXPECT_EQ(o.report.winner().transform(), "add 'module.'");
}

TEST(MatcherTest, RenameRulesInOrder) {
  Tree t;
  auto items = SmallStateDict(t, "module.");
  for (auto& [k, v] : items) {
    if (k.rfind("module.fc.", 0) == 0) k = "module.classifier." + k.substr(10);
  }
  v1::NormalizationPolicy policy;
  v1::RenameRule* r1 = policy.add_rename_rules();
  r1->set_pattern("^classifier\\.(.*)$");
  r1->set_replacement("head.$1");
  v1::RenameRule* r2 = policy.add_rename_rules();
  r2->set_pattern("^head\\.");
  r2->set_replacement("fc.");
  Outcome o = Match(t.Dict(items), SmallSpec(), policy);
  EXPECT_EQ(o.report.verdict(), v1::NORMALIZED);
  EXPECT_EQ(Names(o.match), SpecNames(SmallSpec()));
  int renames = 0;
  for (const v1::Fix& f : o.report.fixes()) {
    if (f.kind() != "rename") continue;
    ++renames;
    EXPECT_EQ(f.from().substr(0, 11), "classifier.");
    EXPECT_EQ(f.to().substr(0, 3), "fc.");
  }
  EXPECT_EQ(renames, 2);
}

TEST(MatcherTest, RenamedKeysWithoutRuleAreMissingAndUnexpected) {
  Tree t;
  auto items = SmallStateDict(t, "");
  items.back().first = "classifier.bias";
  Outcome o = Match(t.Dict(items), SmallSpec());
  EXPECT_EQ(o.report.verdict(), v1::INVALID);
  EXPECT_EQ(
      std::vector<std::string>(o.report.missing_keys().begin(), o.report.missing_keys().end()),
      std::vector<std::string>{"fc.bias"});
  EXPECT_EQ(std::vector<std::string>(o.report.unexpected_keys().begin(),
                                     o.report.unexpected_keys().end()),
            std::vector<std::string>{"classifier.bias"});
  EXPECT_EQ(std::vector<std::string>(o.report.reasons().begin(), o.report.reasons().end()),
            std::vector<std::string>{"missing_keys"});
}

TEST(MatcherTest, BadRegexIsAnError) {
  Tree t;
  v1::NormalizationPolicy policy;
  policy.add_rename_rules()->set_pattern("(unclosed");
  v1::ValidationReport report;
  absl::StatusOr<MatchResult> m =
      MatchStateDict(t.Dict(SmallStateDict(t, "")), SmallSpec(), policy, &report);
  EXPECT_EQ(m.status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(MatcherTest, LegacyGammaBetaOnlyWhenAsked) {
  Tree t;
  auto items = SmallStateDict(t, "");
  items[2].first = "bn.gamma";
  items[3].first = "bn.beta";
  const Value* root = t.Dict(items);
  Outcome plain = Match(root, SmallSpec());
  EXPECT_EQ(plain.report.verdict(), v1::INVALID);
  v1::NormalizationPolicy policy;
  policy.set_legacy_gamma_beta(true);
  Outcome o = Match(root, SmallSpec(), policy);
  EXPECT_EQ(o.report.verdict(), v1::NORMALIZED);
  EXPECT_EQ(FixKinds(o.report), (std::vector<std::string>{"rename", "rename"}));
  EXPECT_EQ(o.report.fixes(0).to(), "bn.weight");
  EXPECT_EQ(o.report.fixes(1).to(), "bn.bias");
}

TEST(MatcherTest, PositionalRemapIsOptIn) {
  Tree t;
  auto items = SmallStateDict(t, "");
  items[7].first = "head.0.weight";
  items[8].first = "head.0.bias";
  const Value* root = t.Dict(items);
  EXPECT_EQ(Match(root, SmallSpec()).report.verdict(), v1::INVALID);
  v1::NormalizationPolicy policy;
  policy.set_positional_remap(true);
  Outcome o = Match(root, SmallSpec(), policy);
  EXPECT_EQ(o.report.verdict(), v1::NORMALIZED);
  EXPECT_EQ(FixKinds(o.report), (std::vector<std::string>{"positional_remap", "positional_remap"}));
  EXPECT_EQ(o.match.tensors[7].source_name, "head.0.weight");
  EXPECT_EQ(o.match.tensors[7].name, "fc.weight");
}

TEST(MatcherTest, PositionalRemapRefusesDifferentShapes) {
  Tree t;
  auto items = SmallStateDict(t, "");
  items[7] = {"head.0.weight", t.T({8, 10})};
  items[8].first = "head.0.bias";
  v1::NormalizationPolicy policy;
  policy.set_positional_remap(true);
  Outcome o = Match(t.Dict(items), SmallSpec(), policy);
  EXPECT_EQ(o.report.verdict(), v1::INVALID);
  EXPECT_EQ(o.report.missing_keys_size(), 2);
}

TEST(MatcherTest, DtypeCastKeepReject) {
  Tree t;
  auto items = SmallStateDict(t, "");
  const Value* root = t.Dict(items);
  v1::ModelSpec spec = SmallSpec();
  for (v1::TensorSpec& s : *spec.mutable_tensors()) {
    if (s.dtype() == "F32") s.set_dtype("F16");
  }
  Outcome cast = Match(root, spec);
  EXPECT_EQ(cast.report.verdict(), v1::NORMALIZED);
  ASSERT_EQ(FixKinds(cast.report), std::vector<std::string>{"cast"});
  EXPECT_EQ(cast.report.fixes(0).count(), 8);
  EXPECT_EQ(cast.report.fixes(0).from(), "F32");
  EXPECT_EQ(cast.report.fixes(0).to(), "F16");
  EXPECT_EQ(cast.match.tensors[0].out_dtype, DType::kF16);
  EXPECT_TRUE(cast.match.tensors[0].cast());
  EXPECT_FALSE(cast.match.tensors[6].cast());  // num_batches_tracked stays I64
  EXPECT_EQ(cast.report.total_bytes(), (216 + 40 + 80 + 10) * 2 + 8);

  v1::NormalizationPolicy keep;
  keep.set_dtype(v1::NormalizationPolicy::DTYPE_KEEP);
  Outcome kept = Match(root, spec, keep);
  EXPECT_EQ(kept.report.verdict(), v1::VALID);
  EXPECT_EQ(kept.report.dtype_mismatches_size(), 8);
  EXPECT_EQ(kept.match.tensors[0].out_dtype, DType::kF32);

  v1::NormalizationPolicy reject;
  reject.set_dtype(v1::NormalizationPolicy::DTYPE_REJECT);
  Outcome rejected = Match(root, spec, reject);
  EXPECT_EQ(rejected.report.verdict(), v1::INVALID);
  EXPECT_EQ(rejected.report.reasons(0), "dtype_mismatch");
  EXPECT_EQ(rejected.report.dtype_mismatches(0).expected_dtype(), "F16");
  EXPECT_EQ(rejected.report.dtype_mismatches(0).actual_dtype(), "F32");
}

TEST(MatcherTest, MissingNumBatchesTrackedIsFilled) {
  Tree t;
  const Value* root = t.Dict(SmallStateDict(t, "", /*with_nbt=*/false));
  Outcome o = Match(root, SmallSpec());
  EXPECT_EQ(o.report.verdict(), v1::NORMALIZED);
  ASSERT_EQ(FixKinds(o.report), std::vector<std::string>{"fill_optional"});
  EXPECT_EQ(o.report.fixes(0).to(), "bn.num_batches_tracked");
  ASSERT_EQ(o.match.tensors.size(), 9u);
  EXPECT_EQ(o.match.tensors[6].source, nullptr);
  EXPECT_EQ(o.match.tensors[6].out_dtype, DType::kI64);

  v1::NormalizationPolicy strict;
  strict.mutable_optional_keys();  // set and empty: nothing is optional
  Outcome s = Match(root, SmallSpec(), strict);
  EXPECT_EQ(s.report.verdict(), v1::INVALID);
  EXPECT_EQ(s.report.missing_keys(0), "bn.num_batches_tracked");
}

TEST(MatcherTest, MissingWeightIsInvalid) {
  Tree t;
  auto items = SmallStateDict(t, "module.");
  items.erase(items.begin() + 7);  // fc.weight
  Outcome o = Match(t.Dict(items), SmallSpec());
  EXPECT_EQ(o.report.verdict(), v1::INVALID);
  ASSERT_EQ(o.report.missing_keys_size(), 1);
  EXPECT_EQ(o.report.missing_keys(0), "fc.weight");
  EXPECT_EQ(o.report.winner().transform(), "strip 'module.'");
  EXPECT_TRUE(o.match.invalid);
}

TEST(MatcherTest, ShapeMismatchIsInvalid) {
  Tree t;
  auto items = SmallStateDict(t, "");
  items[7].second = t.T({12, 8});
  Outcome o = Match(t.Dict(items), SmallSpec());
  EXPECT_EQ(o.report.verdict(), v1::INVALID);
  ASSERT_EQ(o.report.shape_mismatches_size(), 1);
  EXPECT_EQ(o.report.shape_mismatches(0).name(), "fc.weight");
  EXPECT_EQ(o.report.shape_mismatches(0).actual_shape(0), 12);
  EXPECT_EQ(o.report.shape_mismatches(0).expected_shape(0), 10);
  EXPECT_EQ(o.report.reasons(0), "shape_mismatch");
  EXPECT_TRUE(o.report.missing_keys().empty());
}

TEST(MatcherTest, UnexpectedDropOrReject) {
  Tree t;
  auto items = SmallStateDict(t, "");
  items.push_back({"aux_head.weight", t.T({3, 8})});
  const Value* root = t.Dict(items);
  Outcome dropped = Match(root, SmallSpec());
  EXPECT_EQ(dropped.report.verdict(), v1::NORMALIZED);
  EXPECT_EQ(FixKinds(dropped.report), std::vector<std::string>{"drop_unexpected"});
  EXPECT_EQ(dropped.report.unexpected_keys(0), "aux_head.weight");
  v1::NormalizationPolicy reject;
  reject.set_unexpected(v1::NormalizationPolicy::UNEXPECTED_REJECT);
  Outcome rejected = Match(root, SmallSpec(), reject);
  EXPECT_EQ(rejected.report.verdict(), v1::INVALID);
  EXPECT_EQ(rejected.report.reasons(0), "unexpected_keys");
}

TEST(MatcherTest, ExplicitContainerPath) {
  Tree t;
  const Value* root =
      t.Dict({{"checkpoint", t.Dict({{"weights", t.Dict(SmallStateDict(t, ""))}})}});
  v1::NormalizationPolicy policy;
  policy.set_container("checkpoint.weights");
  Outcome o = Match(root, SmallSpec(), policy);
  EXPECT_EQ(o.report.verdict(), v1::NORMALIZED);
  EXPECT_EQ(o.report.container_path(), "checkpoint.weights");
  policy.set_container("checkpoint.nothing");
  Outcome missing = Match(root, SmallSpec(), policy);
  EXPECT_EQ(missing.report.verdict(), v1::INVALID);
  EXPECT_EQ(missing.report.reasons(0), "no_state_dict");
}

TEST(MatcherTest, PrefixNoneKeepsKeys) {
  Tree t;
  v1::NormalizationPolicy policy;
  policy.set_prefixes(v1::NormalizationPolicy::PREFIX_NONE);
  Outcome o = Match(t.Dict(SmallStateDict(t, "module.")), SmallSpec(), policy);
  EXPECT_EQ(o.report.verdict(), v1::INVALID);
  EXPECT_EQ(o.report.missing_keys_size(), 8);  // num_batches_tracked is optional
}

TEST(MatcherTest, NoTensorsIsNoStateDict) {
  Tree t;
  Outcome o = Match(t.Dict({{"epoch", t.Int(1)}}), SmallSpec());
  EXPECT_EQ(o.report.verdict(), v1::INVALID);
  EXPECT_EQ(o.report.reasons(0), "no_state_dict");
}

TEST(MatcherTest, TiedStoragesReportedAndTied) {
  Tree t;
  v1::ModelSpec spec;
  for (const char* name : {"embed.weight", "head.weight", "head.bias"}) {
    v1::TensorSpec* s = spec.add_tensors();
    s->set_name(name);
    s->set_dtype("F32");
    s->add_shape(name == std::string("head.bias") ? 4 : 16);
    if (name != std::string("head.bias")) s->add_shape(4);
  }
  const Value* root = t.Dict({{"embed.weight", t.T({16, 4}, DType::kF32, 7)},
                              {"head.weight", t.T({16, 4}, DType::kF32, 7)},
                              {"head.bias", t.T({4}, DType::kF32, 7, 64)}});
  Outcome o = Match(root, spec);
  EXPECT_EQ(o.report.verdict(), v1::VALID);
  ASSERT_EQ(o.report.shared_storages_size(), 1);
  EXPECT_EQ(o.report.shared_storages(0).names_size(), 3);
  EXPECT_EQ(o.match.tensors[0].tied_to, -1);
  EXPECT_EQ(o.match.tensors[1].tied_to, 0);
  EXPECT_EQ(o.match.tensors[2].tied_to, -1);  // same storage, different view
}

// A spec tie held as two copies: tied when the bytes are equal (the stored
// form then holds them once), left alone when they differ; the report's
// byte total counts a tied tensor once.
TEST(MatcherTest, SpecTieHeldAsEqualCopiesIsTied) {
  v1::ModelSpec spec;
  for (const char* name : {"embed.weight", "norm.weight", "head.weight"}) {
    v1::TensorSpec* s = spec.add_tensors();
    s->set_name(name);
    s->set_dtype("F32");
    s->add_shape(16);
    s->add_shape(4);
  }
  v1::TieGroup* tie = spec.add_ties();
  tie->add_names("embed.weight");
  tie->add_names("head.weight");
  for (bool equal : {true, false}) {
    Tree t;
    const Value* root = t.Dict({{"embed.weight", t.T({16, 4}, DType::kF32, 1)},
                                {"norm.weight", t.T({16, 4}, DType::kF32, 2)},
                                {"head.weight", t.T({16, 4}, DType::kF32, 3)}});
    MatchOptions options;
    int compared = 0;
    options.same_bytes = [&](const checkpoint::TensorRecord& a, const checkpoint::TensorRecord& b) {
      ++compared;
      EXPECT_EQ(a.storage_index, 1);  // only the tie's members are compared
      EXPECT_EQ(b.storage_index, 3);
      return equal;
    };
    Outcome o = Match(root, spec, {}, options);
    EXPECT_EQ(o.report.verdict(), v1::VALID);
    EXPECT_EQ(compared, 1);
    EXPECT_EQ(o.report.shared_storages_size(), 0);
    EXPECT_EQ(o.match.tensors[1].tied_to, -1);
    EXPECT_EQ(o.match.tensors[2].tied_to, equal ? 0 : -1);
    EXPECT_EQ(o.report.total_bytes(), (equal ? 2 : 3) * 16 * 4 * 4);
  }
}

TEST(MatcherTest, DuplicateKeyWithWrongShapeDoesNotHideGoodOne) {
  Tree t;
  auto items = SmallStateDict(t, "");
  items.insert(items.begin(), {"module.fc.weight", t.T({3, 3})});
  Outcome o = Match(t.Dict(items), SmallSpec());
  EXPECT_EQ(o.report.winner().transform(), "none");
  EXPECT_TRUE(o.report.shape_mismatches().empty());
  EXPECT_EQ(o.report.unexpected_keys(0), "module.fc.weight");
}

TEST(MatcherTest, LargeFsdpStateDict) {
  // 4000 tensors, every one wrapped at two levels, plus a Lightning prefix.
  Tree t;
  v1::ModelSpec spec;
  std::vector<std::pair<std::string, const Value*>> items;
  for (int layer = 0; layer < 1000; ++layer) {
    for (const char* leaf : {"attn.q.weight", "attn.k.weight", "mlp.fc1.weight", "mlp.fc2.bias"}) {
      const std::string name = "layers." + std::to_string(layer) + "." + leaf;
      v1::TensorSpec* s = spec.add_tensors();
      s->set_name(name);
      s->set_dtype("BF16");
      s->add_shape(layer % 7 + 1);
      items.emplace_back("model._fsdp_wrapped_module.layers." + std::to_string(layer) +
                             "._fsdp_wrapped_module." + leaf,
                         t.T({layer % 7 + 1}, DType::kBF16));
    }
  }
  Outcome o = Match(t.Dict(items), spec);
  EXPECT_EQ(o.report.verdict(), v1::NORMALIZED);
  EXPECT_EQ(o.report.winner().matched(), 4000);
  EXPECT_EQ(o.report.winner().transform(), "strip '_fsdp_wrapped_module.' + strip 'model.'");
  EXPECT_EQ(o.match.tensors.size(), 4000u);
}

TEST(MatcherTest, ReferenceTensorsFindTheStateDict) {
  Tree t;
  std::string path;
  EXPECT_EQ(ReferenceTensors(t.Dict(SmallStateDict(t, "module.")), &path).size(), 9u);
  EXPECT_EQ(path, "");
  const Value* nested = t.Dict({{"epoch", t.Int(1)},
                                {"model", t.Dict({{"state_dict", t.Dict(SmallStateDict(t, ""))}})},
                                {"optimizer", t.Dict({{"x", t.T({2})}})}});
  std::vector<checkpoint::NamedTensor> tensors = ReferenceTensors(nested, &path);
  EXPECT_EQ(path, "model.state_dict");
  ASSERT_EQ(tensors.size(), 9u);
  EXPECT_EQ(tensors[0].name, "conv.weight");  // names kept, no prefix games
  const Value* lightning = t.Dict({{"state_dict", t.Dict(SmallStateDict(t, "model."))}});
  tensors = ReferenceTensors(lightning, &path);
  EXPECT_EQ(path, "state_dict");
  EXPECT_EQ(tensors[0].name, "model.conv.weight");
}

TEST(MatcherTest, ApplyRenameRulesUsesDollarGroups) {
  v1::NormalizationPolicy policy;
  v1::RenameRule* r = policy.add_rename_rules();
  r->set_pattern("^layers\\.(\\d+)\\.attn\\.");
  r->set_replacement("blocks.$1.attention.");
  absl::StatusOr<std::string> out = ApplyRenameRules(policy, "layers.11.attn.q.weight");
  ASSERT_TRUE(out.ok());
  EXPECT_EQ(*out, "blocks.11.attention.q.weight");
}

TEST(MatcherTest, RenameCapHitIsResourceLimit) {
  Tree t;
  auto items = SmallStateDict(t, "");
  items.push_back({std::string(8000, 'k'), t.T({2})});
  v1::NormalizationPolicy policy;
  v1::RenameRule* r = policy.add_rename_rules();
  r->set_pattern("k");
  r->set_replacement(std::string(100, 'x'));
  Outcome o = Match(t.Dict(items), SmallSpec(), policy);
  EXPECT_EQ(o.report.verdict(), v1::INVALID);
  EXPECT_EQ(std::vector<std::string>(o.report.reasons().begin(), o.report.reasons().end()),
            std::vector<std::string>{"resource_limit"});
  EXPECT_NE(o.report.error().find("kMaxRename"), std::string::npos) << o.report.error();
  EXPECT_TRUE(o.match.tensors.empty());
}

// A DAG of container and wrapper keys that all share one sub-dict, `levels`
// deep, above a SmallStateDict: a few hundred bytes of pickle, and once 44 s
// of CPU in the candidate search (containers x wrapper masks x strips x adds).
const Value* SharedContainerDag(Tree& t, int levels, const std::string& leaf_prefix = "") {
  const Value* level = t.Dict(SmallStateDict(t, leaf_prefix));
  for (int l = 0; l < levels; ++l) {
    std::vector<std::pair<std::string, const Value*>> items;
    for (absl::string_view k : kContainerKeys) items.emplace_back(std::string(k), level);
    for (absl::string_view k : kWrapperComponents) items.emplace_back(std::string(k), level);
    level = t.Dict(items);
  }
  return level;
}

TEST(MatcherTest, SharedContainerDagIsFast) {
  Tree t;
  for (int levels : {1, 2, 3, 4}) {
    SCOPED_TRACE(levels);
    const std::clock_t start = std::clock();  // CPU time: the machine may be busy
    Outcome o = Match(SharedContainerDag(t, levels), SmallSpec());
    const double seconds = static_cast<double>(std::clock() - start) / CLOCKS_PER_SEC;
    EXPECT_LT(seconds, 1.0);
    EXPECT_TRUE(o.report.has_winner());
    // Two levels down a container key names the leaf dict itself.
    if (levels <= 2) {
      EXPECT_EQ(o.report.winner().matched(), 9) << o.report.DebugString();
    }
  }
}

TEST(MatcherTest, SearchWorkIsCappedAsResourceLimit) {
  Tree t;
  const Value* root = SharedContainerDag(t, 3);
  MatchOptions options;
  options.max_work = 20000;
  Outcome o = Match(root, SmallSpec(), {}, options);
  EXPECT_EQ(o.report.verdict(), v1::INVALID);
  ASSERT_EQ(o.report.reasons_size(), 1);
  EXPECT_EQ(o.report.reasons(0), "resource_limit");
  EXPECT_NE(o.report.error().find("kMaxMatchWork"), std::string::npos) << o.report.error();
  EXPECT_TRUE(o.match.tensors.empty());
  EXPECT_TRUE(o.report.fixes().empty());
  // Unlimited, the same tree costs well under the default cap.
  Outcome fine = Match(root, SmallSpec());
  EXPECT_NE(fine.report.reasons_size() > 0 ? fine.report.reasons(0) : "", "resource_limit");
}

TEST(MatcherTest, ContainerKeysAreCappedAsResourceLimit) {
  Tree t;
  MatchOptions options;
  options.max_keys = 8;
  Outcome o = Match(t.Dict(SmallStateDict(t, "")), SmallSpec(), {}, options);
  EXPECT_EQ(o.report.verdict(), v1::INVALID);
  EXPECT_EQ(o.report.reasons(0), "resource_limit");
  EXPECT_NE(o.report.error().find("kMaxMatchKeys"), std::string::npos) << o.report.error();
  options.max_keys = 9;
  EXPECT_EQ(Match(t.Dict(SmallStateDict(t, "")), SmallSpec(), {}, options).report.verdict(),
            v1::VALID);
  options.max_key_bytes = 20;
  Outcome bytes = Match(t.Dict(SmallStateDict(t, "")), SmallSpec(), {}, options);
  EXPECT_NE(bytes.report.error().find("kMaxMatchKeyBytes"), std::string::npos);
}

TEST(MatcherTest, CancelledSearchStops) {
  Tree t;
  MatchOptions options;
  int polls = 0;
  options.cancelled = [&polls] { return ++polls > 2; };
  v1::ValidationReport report;
  absl::StatusOr<MatchResult> m =
      MatchStateDict(SharedContainerDag(t, 2), SmallSpec(), {}, &report, options);
  EXPECT_EQ(m.status().code(), absl::StatusCode::kCancelled);
  EXPECT_EQ(polls, 3);
}

}  // namespace
}  // namespace weightgate::statedict
