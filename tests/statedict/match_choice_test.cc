// Matching never guesses: two readings with different tensors are
// ambiguous_match, an arbitrary root swap is prefix_rename_needed, each
// with the flag that chooses; bitwise-equal readings are not ambiguous; the
// runner-up is a real alternative. Hand-built trees, no torch.
#include <string>
#include <utility>
#include <vector>

#include "gtest/gtest.h"
#include "server/statedict/matcher.h"
#include "tests/statedict/matcher_test_util.h"

namespace weightgate::statedict {
namespace {

using namespace matcher_testing;  // NOLINT: test helpers

TEST(MatchChoiceTest, RawAndEmaContainersWithDifferentValuesAreAmbiguous) {
  Tree t;
  const Value* root = t.Dict({{"state_dict_ema", t.Dict(SmallStateDict(t, ""))},
                              {"state_dict", t.Dict(SmallStateDict(t, ""))}});
  for (int i = 0; i < 3; ++i) {  // the same report every time
    Outcome o = Match(root, SmallSpec());
    EXPECT_EQ(o.report.verdict(), v1::INVALID);
    EXPECT_EQ(std::vector<std::string>(o.report.reasons().begin(), o.report.reasons().end()),
              std::vector<std::string>{"ambiguous_match"});
    ASSERT_EQ(o.report.alternatives_size(), 2);
    EXPECT_EQ(o.report.alternatives(0).container(), "state_dict");
    EXPECT_EQ(o.report.alternatives(0).select_flag(), "--weights raw");
    EXPECT_EQ(o.report.alternatives(1).container(), "state_dict_ema");
    EXPECT_EQ(o.report.alternatives(1).select_flag(), "--weights ema");
    EXPECT_NE(o.report.error().find("--weights ema"), std::string::npos) << o.report.error();
    EXPECT_TRUE(o.match.tensors.empty());
    EXPECT_TRUE(o.report.fixes().empty());
  }
  v1::NormalizationPolicy ema;
  ema.set_weights(v1::NormalizationPolicy::WEIGHTS_EMA);
  Outcome o = Match(root, SmallSpec(), ema);
  EXPECT_EQ(o.report.verdict(), v1::NORMALIZED);
  EXPECT_EQ(o.report.container_path(), "state_dict_ema");
  EXPECT_EQ(o.report.winner().weights(), "ema");
}

TEST(MatchChoiceTest, TeacherStudentIsAmbiguousUntilAPrefixIsChosen) {
  Tree t;
  const Value* root =
      t.Dict({{"state_dict",
               t.Dict(Concat(SmallStateDict(t, "teacher."), SmallStateDict(t, "student.")))}});
  Outcome o = Match(root, SmallSpec());
  EXPECT_EQ(o.report.verdict(), v1::INVALID);
  EXPECT_EQ(Reasons(o.report), std::vector<std::string>{"ambiguous_match"});
  EXPECT_EQ(Flags(o.report),
            (std::vector<std::string>{"--key_prefix student.", "--key_prefix teacher."}));
  v1::NormalizationPolicy policy;
  policy.set_key_prefix("student.");
  Outcome chosen = Match(root, SmallSpec(), policy);
  EXPECT_EQ(chosen.report.verdict(), v1::NORMALIZED);
  ASSERT_EQ(chosen.match.tensors.size(), 9u);
  for (const MatchedTensor& m : chosen.match.tensors) {
    EXPECT_EQ(m.source_name, "student." + m.name);
  }
  EXPECT_EQ(chosen.report.unexpected_keys_size(), 9);  // the teacher, dropped
  EXPECT_EQ(FixKinds(chosen.report),
            (std::vector<std::string>{"select_container", "strip_prefix", "drop_unexpected"}));
  EXPECT_EQ(chosen.report.fixes(1).origin(), "chosen_prefix");
}

TEST(MatchChoiceTest, LightningRawAndEmaAttributes) {
  Tree t;
  auto raw = SmallStateDict(t, "model.");
  auto ema = SmallStateDict(t, "model_ema.");
  const Value* root = t.Dict({{"state_dict", t.Dict(Concat(raw, ema))}});
  Outcome o = Match(root, SmallSpec());
  EXPECT_EQ(Reasons(o.report), std::vector<std::string>{"ambiguous_match"});
  EXPECT_EQ(Flags(o.report), (std::vector<std::string>{"--weights raw", "--weights ema"}));
  EXPECT_EQ(o.report.alternatives(1).weights(), "ema");

  // Bitwise-identical copies are not ambiguous: raw wins, the EMA copy is
  // reported as equal.
  MatchOptions identical;
  identical.same_bytes = [](const checkpoint::TensorRecord&, const checkpoint::TensorRecord&) {
    return true;
  };
  Outcome same = Match(root, SmallSpec(), {}, identical);
  EXPECT_EQ(same.report.verdict(), v1::NORMALIZED);
  EXPECT_EQ(same.report.winner().transform(), "strip 'model.'");
  ASSERT_EQ(same.report.alternatives_size(), 1);
  EXPECT_TRUE(same.report.alternatives(0).equal_to_winner());
  EXPECT_EQ(same.report.alternatives(0).transform(), "strip 'model_ema.'");

  v1::NormalizationPolicy want_ema;
  want_ema.set_weights(v1::NormalizationPolicy::WEIGHTS_EMA);
  Outcome e = Match(root, SmallSpec(), want_ema);
  EXPECT_EQ(e.report.verdict(), v1::NORMALIZED);
  EXPECT_EQ(e.match.tensors[0].source_name, "model_ema.conv.weight");
  EXPECT_EQ(e.report.fixes(1).origin(), "training_attribute");
  v1::NormalizationPolicy want_raw;
  want_raw.set_weights(v1::NormalizationPolicy::WEIGHTS_RAW);
  EXPECT_EQ(Match(root, SmallSpec(), want_raw).match.tensors[0].source_name, "model.conv.weight");
}

TEST(MatchChoiceTest, TwoContainersWithDifferentWeights) {
  Tree t;
  const Value* root = t.Dict(
      {{"model", t.Dict(SmallStateDict(t, ""))}, {"state_dict", t.Dict(SmallStateDict(t, ""))}});
  Outcome o = Match(root, SmallSpec());
  EXPECT_EQ(Reasons(o.report), std::vector<std::string>{"ambiguous_match"});
  EXPECT_EQ(Flags(o.report),
            (std::vector<std::string>{"--container state_dict", "--container model"}));
  v1::NormalizationPolicy policy;
  policy.set_container("model");
  Outcome chosen = Match(root, SmallSpec(), policy);
  EXPECT_EQ(chosen.report.verdict(), v1::NORMALIZED);
  EXPECT_EQ(chosen.report.container_path(), "model");
}

TEST(MatchChoiceTest, ArbitraryRootSwapNeedsARenameRule) {
  Tree t;
  const Value* root = t.Dict(SmallStateDict(t, "other."));
  Outcome o = Match(root, SmallSpec("layer."));
  EXPECT_EQ(o.report.verdict(), v1::INVALID);
  EXPECT_EQ(Reasons(o.report), std::vector<std::string>{"prefix_rename_needed"});
  EXPECT_EQ(Flags(o.report), std::vector<std::string>{"--rename '^other\\.=layer.'"});
  EXPECT_NE(o.report.error().find("--prefixes any"), std::string::npos) << o.report.error();
  EXPECT_TRUE(o.match.tensors.empty());

  v1::NormalizationPolicy rule;
  v1::RenameRule* r = rule.add_rename_rules();
  r->set_pattern("^other\\.");
  r->set_replacement("layer.");
  Outcome renamed = Match(root, SmallSpec("layer."), rule);
  EXPECT_EQ(renamed.report.verdict(), v1::NORMALIZED);
  EXPECT_EQ(Names(renamed.match), SpecNames(SmallSpec("layer.")));
  EXPECT_EQ(renamed.report.fixes(0).origin(), "user_rule");

  v1::NormalizationPolicy any;
  any.set_prefixes(v1::NormalizationPolicy::PREFIX_ANY);
  Outcome allowed = Match(root, SmallSpec("layer."), any);
  EXPECT_EQ(allowed.report.verdict(), v1::NORMALIZED);
  EXPECT_EQ(allowed.report.winner().transform(), "strip 'other.' + add 'layer.'");
  EXPECT_EQ(allowed.report.fixes(0).origin(), "any_prefix");
  EXPECT_EQ(allowed.report.fixes(1).origin(), "spec_root");
}

TEST(MatchChoiceTest, RootSwapBetweenEqualHalvesIsAmbiguous) {
  Tree t;
  const Value* root =
      t.Dict(Concat(SmallStateDict(t, "enc."), SmallStateDict(t, "dec.", /*with_nbt=*/false)));
  Outcome o = Match(root, SmallSpec("layer."));
  EXPECT_EQ(Reasons(o.report), std::vector<std::string>{"ambiguous_match"});
  EXPECT_EQ(Flags(o.report), (std::vector<std::string>{"--key_prefix enc.", "--key_prefix dec."}));
  v1::NormalizationPolicy policy;
  policy.set_key_prefix("dec");
  Outcome chosen = Match(root, SmallSpec("layer."), policy);
  EXPECT_EQ(chosen.report.verdict(), v1::NORMALIZED);
  EXPECT_EQ(chosen.match.tensors[0].source_name, "dec.conv.weight");
  EXPECT_EQ(chosen.report.winner().transform(), "strip 'dec.' + add 'layer.'");
}

TEST(MatchChoiceTest, UnknownContainerKeyIsNamedAsContainer) {
  Tree t;
  const Value* root = t.Dict({{"weights", t.Dict(SmallStateDict(t, ""))}, {"epoch", t.Int(1)}});
  Outcome o = Match(root, SmallSpec());
  EXPECT_EQ(Reasons(o.report), std::vector<std::string>{"prefix_rename_needed"});
  EXPECT_EQ(Flags(o.report), std::vector<std::string>{"--container weights"});
  v1::NormalizationPolicy policy;
  policy.set_container("weights");
  EXPECT_EQ(Match(root, SmallSpec(), policy).report.verdict(), v1::NORMALIZED);
}

TEST(MatchChoiceTest, RunnerUpOnlyWhenARealAlternative) {
  Tree t;
  EXPECT_FALSE(Match(t.Dict(SmallStateDict(t, "")), SmallSpec()).report.has_runner_up());
  EXPECT_FALSE(Match(t.Dict(SmallStateDict(t, "module.")), SmallSpec()).report.has_runner_up());
  // A Lightning module with a frozen copy of part of the network: the copy
  // is a comparable reading of other tensors, so it is shown with its score.
  auto teacher = SmallStateDict(t, "teacher.");
  teacher.resize(5);
  const Value* root =
      t.Dict({{"state_dict", t.Dict(Concat(SmallStateDict(t, "model."), teacher))}});
  Outcome o = Match(root, SmallSpec());
  EXPECT_EQ(o.report.verdict(), v1::NORMALIZED);
  EXPECT_EQ(o.report.winner().transform(), "strip 'model.'");
  ASSERT_TRUE(o.report.has_runner_up());
  EXPECT_EQ(o.report.runner_up().transform(), "strip 'teacher.'");
  EXPECT_EQ(o.report.runner_up().matched(), 5);
}

}  // namespace
}  // namespace weightgate::statedict
